"""Stream-T1 test-time scaling (arXiv 2605.04461; spec-stream-t1.md) around a `StreamSession`.

Per chunk, every surviving beam gets `children` candidates. A candidate:

1. forks its parent's lineage state (KV cache: `PagedKVCache.fork`, copy-on-write pages of one chunk, so the
   fork copies no K/V; streaming-decoder state: a shallow copy of its cache list, valid because decoding
   replaces entries and never writes into them; its own `torch.Generator`); the parent's last child takes the
   parent's state itself;
2. starts from the variance-preserving noise mix n_b = rho * n_{b-1} + sqrt(1 - rho^2) * eps (unit 1), eps a
   fresh draw of the candidate's generator (child 0 continues its parent's generator, children >= 1 get
   derived seeds: no seed reuse, so eps is always independent of n_{b-1});
3. runs the session's own sampler, all candidates of the chunk as the batch rows of ONE DiT call per step
   (`StreamSession.next_chunks`: each row keeps its own noise, generator and KV pages), and is decoded once with
   its own streaming-decoder state;
4. is scored (unit 2): short reward S on its own frames, long reward L on the frames of its lineage's last
   `window_chunks` chunks (a sliding ring), both as normalised Overall (sum of the reward's z-scores), mixed
   score = a_b * S + (1 - a_b) * L with the reference's ramp a_b = min(f_b / (F - f), short_weight_max), f_b = b * f
   the chunk's first latent frame, f = frames_per_block, F the clip's latent frames (`ramp_frames`);
5. gets a memory-sinking route for its chunk (unit 3), applied when the chunk leaves the KV window.

The best `beams` candidates survive (parents compete jointly); the rewards are batched too. Candidates whose
caches differ in layout (memory sinking gave their parents different sinks) run in separate calls, and
`candidates_per_call` caps the rows of a call. Live KV: the parents' window pages (shared with their children)
plus one new page per candidate and at most one copied sink page per candidate (`pool` counts them).

Output: with beams = 1 each chunk is emitted right after its selection (live); with beams > 1 a chunk is
emitted once every survivor descends from it, or at the latest `max_delay` chunks after it was generated (then
the best beam's lineage wins and the others are dropped).
"""
from __future__ import annotations

import copy
import itertools
import math
import weakref
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from ..kv_pages import PagedKVCache, PagePool, layout_key
from ..stream import Chunk, StreamSession
from ..wan.rope import rotate_frames

ROUTES = ("discard", "ema", "append")
DEFAULT_RAMP_FRAMES = 21
"""F of the short-weight ramp when the clip's length is unknown: the reference's 5 s clip (21 latent frames)."""


@dataclass(frozen=True)
class T1Config:
    beams: int = 2
    """K: survivors per chunk (top_k). 1 = greedy best-of-`children`, streams live."""
    children: int = 2
    """M: candidates per surviving beam (beam_size). Chunk 0 draws beams * children candidates."""
    rho: float = -0.1
    """Correlation of a candidate's initial noise with its parent's (noise_fusion_sigma)."""
    window_chunks: int = 10
    """Long-reward window in chunks, the current one included (slides)."""
    short_weight_max: float = 0.4
    """Cap of the short-reward weight a_b (short_score_fusion_threshold)."""
    ramp_frames: Optional[int] = None
    """F of the short weight's ramp a_b = min(f_b / (F - f), short_weight_max) (spec-stream-t1 §3): the clip's
    latent frames. None = the searched clip (`run(num_chunks)`: its chunks x frames_per_block, counted from
    chunk 0 of the session), or 21 (the reference's 5 s clip) for endless runs and bare `step` calls. For F = 21
    a_b = 0, 1/6, 1/3, then 0.4; for F = 120 it reaches 0.4 at b = 16."""
    sinking: Optional[bool] = None
    """Memory sinking; None = on for the longlive cache policy, off otherwise (window_sink students were trained
    with their own EMA sink and relative positions)."""
    short_threshold: float = 0.0
    """tau_s: the chunk is 'better' when S_c - mean(S_<c) > tau_s (normalised units)."""
    long_threshold: float = 0.2
    """tau_l: coherence 'drops' when L_{c-1} - L_c > tau_l (normalised units)."""
    sink_alpha: float = 0.999
    """EMA route: K_G <- a K_G + (1 - a) K_c (compression_alpha)."""
    max_sink_frames: int = 15
    """Cap of the sink (original + appended segments) in latent frames; a full sink turns APPEND into EMA."""
    max_delay: int = 2
    """beams > 1: output delay bound in chunks."""
    candidates_per_call: int = 0
    """Candidates per batched DiT (and reward) call; 0 = all candidates of a chunk in one call (fastest); 1 = one
    at a time (least activation memory: activations grow with the rows of a call)."""
    decode_rows: int = 1
    """Candidates per batched VAE decode; 1 = one at a time (default), 0 = all of a call's candidates at once. A
    decode's activations grow with its rows (at 832x480 the 4 rows of a 2 x 2 search in one Wan-VAE decode peaked
    at 46 GiB, plain streaming 9.7 GiB; bench/RESULTS.md 2026-11-22), and one row already fills the GPU, so
    batching it bought no time (2.511 s against 2.517 s per chunk)."""
    cow_pages: bool = True
    """Copy-on-write KV pages (forks share their parent's pages); False = every fork copies the valid window."""

    def __post_init__(self):
        if self.beams < 1 or self.children < 1:
            raise ValueError("beams and children must be >= 1")
        if not -1.0 <= self.rho <= 1.0:
            raise ValueError("rho must be in [-1, 1]")
        if self.window_chunks < 1 or self.max_delay < 1:
            raise ValueError("window_chunks and max_delay must be >= 1")
        if self.ramp_frames is not None and self.ramp_frames < 1:
            raise ValueError(f"ramp_frames must be >= 1 latent frames (None = the searched clip), "
                             f"got {self.ramp_frames}")
        if self.candidates_per_call < 0:
            raise ValueError(f"candidates_per_call must be >= 0 (0 = all in one call), got {self.candidates_per_call}")
        if self.decode_rows < 0:
            raise ValueError(f"decode_rows must be >= 0 (0 = all candidates in one decode), got {self.decode_rows}")

    def replace(self, **kw) -> "T1Config":
        return replace(self, **kw)

    def short_weight(self, chunk: int, ramp_frames: int = DEFAULT_RAMP_FRAMES, frames_per_block: int = 3) -> float:
        """a_b = min(f_b / (F - f), short_weight_max), f_b = chunk * f (stream_t1.py `_compute_hybrid_score`);
        F = ramp_frames, f = frames_per_block. Chunk 0 is ranked by the long reward alone (not by this)."""
        f_b, span = chunk * frames_per_block, ramp_frames - frames_per_block
        if span <= 0:                                   # a one-chunk clip: no later chunk to weigh
            return self.short_weight_max
        return min(f_b / span, self.short_weight_max)


def mix_noise(parent: Optional[Tensor], fresh: Tensor, rho: float) -> Tensor:
    """Variance-preserving noise propagation: rho * parent + sqrt(1 - rho^2) * fresh (fresh alone when there is
    no parent or rho = 0, bit-exactly)."""
    if parent is None or rho == 0.0:
        return fresh
    return rho * parent + math.sqrt(1.0 - rho * rho) * fresh


def fork_decoder(dec):
    """An independent streaming-decoder state: shallow copy of its cache list (StreamingDecoder `cache`; the
    ComfyUI node's ComfyVAEStream `feat_cache`, whose slots ComfyUI's Wan decoder also replaces, never writes)."""
    if dec is None:
        return None
    new = copy.copy(dec)
    for name in ("cache", "feat_cache"):
        if isinstance(getattr(dec, name, None), list):
            setattr(new, name, list(getattr(dec, name)))
    return new


def child_seed(seed: int, chunk: int, parent: int, child: int) -> int:
    """Distinct seed per (chunk, parent rank, child); child 0 does not use it (it continues its parent)."""
    return (seed * 1_000_003 + 7919 * (chunk + 1) + 101 * parent + child) % (2 ** 63)


@dataclass
class Beam:
    state: dict
    """StreamSession.branch_state(): cache, generator, decoder, chunk index, recache memory."""
    noise: Optional[Tensor] = None
    """Mixed initial noise of its last chunk."""
    ring: list = field(default_factory=list)
    """Decoded frames [B, T, 3, H, W] of its last window_chunks chunks."""
    short: list = field(default_factory=list)
    long: list = field(default_factory=list)
    score: float = 0.0
    routes: dict = field(default_factory=dict)
    """chunk index -> route of that chunk when it leaves the window."""
    sink_segments: list = field(default_factory=list)
    """(start frame, frames) of each sink segment, oldest first (the stream's own sink first)."""
    pending: list = field(default_factory=list)
    """Chunks not yet emitted (lineage order)."""
    ids: list = field(default_factory=list)
    """Lineage ids of `pending`."""


class StreamT1:
    """Stream-T1 search driving `session` (its model, config, prompt, decoder and seed).

    reward: a RewardModel (`score(frames [B, T, 3, H, W] in [0, 1], prompts) -> raw [B, A]`, `normalize`) used for
    the long reward; short_reward: for the short reward (default: the same model). prompts: the reward prompts
    (default: [session.prompt] * B).
    """

    def __init__(self, session: StreamSession, reward, cfg: T1Config = T1Config(), *, short_reward=None,
                 prompts: Optional[Sequence[str]] = None):
        if session.decoder is None:
            raise ValueError("Stream-T1 scores decoded frames: the session needs a decoder")
        if session.overlap_decode:
            raise ValueError("Stream-T1 does not support overlap_decode")
        self.session, self.cfg = session, cfg
        self.reward, self.short_reward = reward, short_reward or reward
        self.prompts = prompts
        policy = session.cfg.cache_policy
        self.sinking = (policy == "longlive") if cfg.sinking is None else cfg.sinking
        if self.sinking and policy != "longlive":
            raise ValueError(f"memory sinking needs the longlive cache policy (absolute positions), not {policy!r}")
        c = session.cache
        if getattr(c, "rotated_keys", False):
            c.use_plain_keys()          # the search's pages are shared by beams: keys stay put as the window slides
        self.chunk_tokens = session.cfg.frames_per_block * c.frame_seqlen
        if self.sinking:
            extra = max(0, cfg.max_sink_frames - c.sink_tokens // c.frame_seqlen)
            c.reserve(extra * c.frame_seqlen)
        self.pool: Optional[PagePool] = None
        """Live pages of the search (copy-on-write caches), with their peak."""
        if cfg.cow_pages and not isinstance(c, PagedKVCache):
            c = session.cache = PagedKVCache.from_cache(c)
        if isinstance(c, PagedKVCache):
            self.pool = c.pool
        self._live = weakref.WeakSet()
        self._live.add(c)
        self.peak_live_caches = 1
        self._ids = itertools.count()
        s0 = c.sink_tokens // c.frame_seqlen
        self.beams = [Beam(state=session.branch_state(), sink_segments=[(0, s0)] if s0 else [])]
        self.log: list[dict] = []
        """Per chunk: candidates' S, L, score, route and the kept ranks."""
        self.ramp_frames = cfg.ramp_frames or DEFAULT_RAMP_FRAMES
        """F of the short weight's ramp; `run(num_chunks)` sets it to the searched clip unless cfg.ramp_frames."""

    # ---- rewards ----------------------------------------------------------------------------------------------
    def _prompts(self, b: int) -> list:
        if self.prompts is not None:
            return list(self.prompts)
        return [self.session.prompt or ""] * b

    @staticmethod
    def _overall(model, frames: Tensor, prompts) -> float:
        with torch.no_grad():
            z = model.normalize(model.score(frames, prompts))          # [B, A] z-scores
        return float(z.float().sum(-1).mean())

    # ---- memory sinking ---------------------------------------------------------------------------------------
    def _route(self, parent: Beam, s: float, l: float) -> str:
        if not parent.short:
            return "discard"                                            # chunk 0 is the stream's own sink
        up = s - sum(parent.short) / len(parent.short) > self.cfg.short_threshold
        drop = parent.long[-1] - l > self.cfg.long_threshold
        return "append" if up and drop else ("ema" if up else "discard")

    def _apply_sinking(self, beam: Beam) -> Optional[str]:
        """Route the chunk that the beam's next chunk evicts (once per parent, before expanding)."""
        c, sess = beam.state["cache"], self.session
        fs, f = c.frame_seqlen, sess.cfg.frames_per_block
        if c.local_end + self.chunk_tokens <= c.capacity or c.local_end - c.sink_tokens < self.chunk_tokens:
            return None
        first = (c.global_end - c.local_end + c.sink_tokens) // fs     # first window frame (absolute positions)
        chunk = (first - sess.frame_offset) // f
        if first < sess.frame_offset or (first - sess.frame_offset) % f:
            return None
        route = beam.routes.pop(chunk, "discard")
        if route == "append" and c.sink_tokens // fs + f > self.cfg.max_sink_frames:
            route = "ema"
        if route == "append":
            c.append_sink(self.chunk_tokens)
            beam.sink_segments = beam.sink_segments + [(first, f)]
        elif route == "ema" and beam.sink_segments:
            g0, gn = beam.sink_segments[-1]
            if gn == f:
                self._ema(c, beam.sink_segments, g0, first)
        return route

    def _ema(self, c, segments: list, g0: int, first: int) -> None:
        """Blend the evicted chunk (buffer [sink, sink + chunk)) into the newest sink segment, after rotating its
        keys' temporal RoPE part by (g0 - first) frames (keys are cached rotated at absolute positions). A paged
        cache copies the sink page first only when another beam shares it."""
        fs, n, a = c.frame_seqlen, self.chunk_tokens, self.cfg.sink_alpha
        lo = c.sink_tokens
        gs = sum(fr for _, fr in segments[:-1]) * fs
        kc, vc = c.read_tokens(lo, lo + n)                             # [L, B, n, heads, d]
        kc = self._rotate_frames(kc, g0 - first)
        kg, vg = c.read_tokens(gs, gs + n)
        c.write_tokens(gs, a * kg + (1 - a) * kc, a * vg + (1 - a) * vc)

    def _rotate_frames(self, k: Tensor, delta: int) -> Tensor:
        """k [L, B, N, n, d] rotated by `delta` frames on the temporal RoPE channels only."""
        return rotate_frames(k, delta, self.session.model.cfg.rope_split())

    # ---- search -----------------------------------------------------------------------------------------------
    def _fork_state(self, state: dict, seed: Optional[int]) -> dict:
        new = dict(state)
        new["cache"] = state["cache"].fork()
        self._live.add(new["cache"])
        self.peak_live_caches = max(self.peak_live_caches, len(self._live))
        new["decoder"] = fork_decoder(state["decoder"])
        new["_pieces"] = list(state["_pieces"])
        new["_sink_pieces"] = list(state["_sink_pieces"])
        new["generator"] = self._generator(state["generator"], seed)
        return new

    def _generator(self, parent: torch.Generator, seed: Optional[int]) -> torch.Generator:
        g = torch.Generator(device=self.session.device)
        if seed is None:                                               # continue the parent's stream
            g.set_state(parent.get_state())
        else:
            g.manual_seed(seed)
        return g

    def _expand(self, parents: list[Beam], n_children: int, b_idx: int, rec: dict) -> list[tuple]:
        """(parent rank, parent, child, state, initial noise) of every candidate of this chunk. Each parent's
        eviction is routed once, before its children fork; the last child takes the parent's own state and the
        parent keeps no state afterwards (its pages live on in its children only)."""
        cfg, sess, out = self.cfg, self.session, []
        f = sess.cfg.frames_per_block
        for j, parent in enumerate(parents):
            if self.sinking:
                route = self._apply_sinking(parent)
                if route is not None:
                    rec.setdefault("evicted", []).append(route)
            for i in range(n_children):
                seed = None if i == 0 else child_seed(sess.seed, b_idx, j, i)
                if i == n_children - 1:
                    state = dict(parent.state)
                    state["generator"] = self._generator(parent.state["generator"], seed)
                else:
                    state = self._fork_state(parent.state, seed)
                with sess.branch(state):
                    eps = sess._initial_noise(sess.frames_done, f)          # [B, f, 16, h, w], own generator
                out.append((j, parent, i, state, mix_noise(parent.noise, eps, cfg.rho)))
            parent.state = None
        return out

    def _sample(self, states: list[dict], noises: list[Tensor], last: bool) -> list[Chunk]:
        """Run the candidates through the DiT: one batched call per step for each group of the same cache layout
        (all of them, unless memory sinking gave parents different sinks), `candidates_per_call` rows at most."""
        groups: dict[tuple, list[int]] = {}
        for r, st in enumerate(states):
            groups.setdefault(layout_key(st["cache"]), []).append(r)
        out: list = [None] * len(states)
        for rows in groups.values():
            size = self.cfg.candidates_per_call or len(rows)
            for s in range(0, len(rows), size):
                part = rows[s:s + size]
                done = self.session.next_chunks([states[r] for r in part], [noises[r] for r in part], last=last,
                                                decode_rows=self.cfg.decode_rows)
                for r, chunk in zip(part, done):
                    out[r] = chunk
        return out

    def _overall_batch(self, model, clips: list[Tensor]) -> list[float]:
        """Normalised Overall (sum of z-scores, mean over the batch) of each clip [B, T, 3, H, W], in calls of
        `candidates_per_call` clips (all at once by default)."""
        b = clips[0].shape[0]
        size = self.cfg.candidates_per_call or len(clips)
        out = []
        for s in range(0, len(clips), size):
            part = clips[s:s + size]
            with torch.no_grad():
                raw = model.score(torch.cat(part), self._prompts(b) * len(part))         # [n*B, A]
                z = model.normalize(raw).float().sum(-1)                                 # [n*B]
            out += z.view(len(part), b).mean(1).tolist()
        return out

    @torch.no_grad()
    def step(self, *, last: bool = False) -> list[Chunk]:
        """Search one chunk; returns the chunks that became final (possibly none while beams disagree)."""
        cfg, sess = self.cfg, self.session
        b_idx = self.beams[0].state["chunk_index"]
        n_children = cfg.children * (cfg.beams if b_idx == 0 and len(self.beams) == 1 else 1)
        rec = dict(chunk=b_idx, candidates=[])
        parents, self.beams = self.beams, []
        cands = self._expand(parents, n_children, b_idx, rec)
        sess.set_branch_state(dict.fromkeys(sess.BRANCH_FIELDS) | {"chunk_index": b_idx, "_pieces": [],
                                                                   "_sink_pieces": []})   # holds no pages now
        states = [c[3] for c in cands]
        chunks = self._sample(states, [c[4] for c in cands], last)
        rings = [(c[1].ring + [ch.frames])[-cfg.window_chunks:] for c, ch in zip(cands, chunks)]
        shorts = self._overall_batch(self.short_reward, [ch.frames for ch in chunks])
        longs = self._overall_batch(self.reward, [torch.cat(r, dim=1) for r in rings])
        a = cfg.short_weight(b_idx, self.ramp_frames, sess.cfg.frames_per_block)
        kept: list[Beam] = []
        for (j, parent, i, state, noise), chunk, ring, s, l in zip(cands, chunks, rings, shorts, longs):
            score = l if b_idx == 0 else a * s + (1 - a) * l
            routes = dict(parent.routes)
            if self.sinking:
                routes[b_idx] = self._route(parent, s, l)
            kept.append(Beam(state=state, noise=noise, ring=ring, short=parent.short + [s], long=parent.long + [l],
                             score=score, routes=routes, sink_segments=list(parent.sink_segments),
                             pending=parent.pending + [chunk], ids=parent.ids + [next(self._ids)]))
            rec["candidates"].append(dict(parent=j, child=i, short=s, long=l, score=score, route=routes.get(b_idx)))
        del cands, states, chunks
        kept.sort(key=lambda x: -x.score)                              # stable: earlier candidates win ties
        self.beams = kept[:cfg.beams]                                  # pruned candidates are freed here
        del kept
        sess.set_branch_state(self.beams[0].state)
        self.peak_live_caches = max(self.peak_live_caches, len(self._live))
        rec["kept"] = [b.ids[-1] for b in self.beams]
        rec["live_pages"] = self.pool.live_pages() if self.pool is not None else None
        self.log.append(rec)
        return self._commit()

    def _commit(self, final: bool = False) -> list[Chunk]:
        out = []
        while True:
            while all(b.pending for b in self.beams) and len({b.ids[0] for b in self.beams}) == 1:
                out.append(self.beams[0].pending[0])
                for b in self.beams:
                    b.pending, b.ids = b.pending[1:], b.ids[1:]
            longest = max(len(b.pending) for b in self.beams)
            if longest == 0 or (not final and longest <= self.cfg.max_delay):
                break
            best = self._best()
            self.beams = [b for b in self.beams if b.pending and b.ids[0] == best.ids[0]]
        emit = self.session.on_frames
        if emit is not None:
            for c in out:
                emit(c.frames)
        return out

    def _best(self) -> Beam:
        return max(self.beams, key=lambda b: (b.long[-1] if b.long else 0.0, b.score))

    def finish(self) -> list[Chunk]:
        """Pick the final beam (best long reward), emit its pending chunks and hand its state to the session (with
        a contiguous KV cache again, so every session operation works on it)."""
        best = self._best()
        self.beams = [best]
        out = self._commit(final=True)
        if isinstance(best.state["cache"], PagedKVCache):
            best.state["cache"] = best.state["cache"].to_cache()
        self.session.set_branch_state(best.state)
        return out

    def adopt(self) -> None:
        """Make the session continue from the best beam (greedy: the only one)."""
        self.session.set_branch_state(self._best().state)

    def run(self, num_chunks: Optional[int] = None, *, on_chunk: Optional[Callable[[Chunk], None]] = None,
            should_stop: Optional[Callable[[], bool]] = None) -> Iterator[Chunk]:
        """Yield final chunks in order; `num_chunks` None = forever (until `should_stop()`)."""
        if self.cfg.ramp_frames is None and num_chunks is not None:    # F = the clip, from the session's chunk 0
            self.ramp_frames = (self.beams[0].state["chunk_index"] + num_chunks) * self.session.cfg.frames_per_block
        i = 0
        while num_chunks is None or i < num_chunks:
            if should_stop is not None and should_stop():
                self.session.interrupted = True
                break
            last = num_chunks is not None and i == num_chunks - 1
            for c in self.step(last=last):
                if on_chunk is not None:
                    on_chunk(c)
                yield c
            if self.cfg.beams == 1:
                self.adopt()
            i += 1
        for c in self.finish():
            if on_chunk is not None:
                on_chunk(c)
            yield c


@torch.no_grad()
def generate_t1(session: StreamSession, reward, latent_frames: int, cfg: T1Config = T1Config(), *,
                short_reward=None, prompts=None) -> tuple[Tensor, Tensor, "StreamT1"]:
    """Search `latent_frames` latent frames; returns latents [B, F, 16, h, w], frames [B, T, 3, H, W], the driver."""
    from ..stream import chunks_for_frames
    t1 = StreamT1(session, reward, cfg, short_reward=short_reward, prompts=prompts)
    chunks = list(t1.run(chunks_for_frames(latent_frames, session.cfg.frames_per_block)))
    lat = torch.cat([c.latents for c in chunks], dim=1)[:, :latent_frames]
    video = torch.cat([c.frames for c in chunks], dim=1)[:, :1 + 4 * (latent_frames - 1)]
    return lat, video, t1

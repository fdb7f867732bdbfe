"""Chunk-by-chunk causal generation with a KV cache (the inference loop of Self-Forcing-style students).

Per chunk of `frames_per_block` latent frames: for each warped timestep t_k, predict x0 from the flow;
between steps re-noise x0 to t_{k+1} with fresh Gaussian noise; the last x0 is the chunk. Then one clean
pass at t = context_noise writes the chunk's K/V into the cache. A `StreamSession` yields one `Chunk` at
a time, so streams of any length run with flat memory (window_sink policy) and the prompt can change
between chunks.

Unbounded-stream tools (all between chunks, all bounded in memory):

* prompt switches with a transition (`set_context(ctx, "recache" | "flush" | "none")`, or a `PromptSchedule`
  from `stream_r1.timeline` applied at exact chunk boundaries by `run`);
* `recache()`: re-encode the cached window under the current prompt (LongLive's re-cache: one clean pass at
  t = context_noise per cached piece, in order, at the piece's own slot/position; the sink is never written;
  indices and positions are not rolled back). The session keeps the clean latents of the last `cache_frames`
  frames for this;
* `flush()`: keep the sink and the most recent latent frame, drop the rest of the window (the frame moves to
  the first slot after the sink; local_end = sink + 1 frame; global_end and the stream positions unchanged);
* `refresh_sink()`: re-encode the stream's first `sink_frames` clean latents into the sink slots under the
  current prompt (drops what the EMA accumulated; used by the drift policy in `stream_r1.telemetry`);
* `prefill(latents)`: start a stream from an image's or a clip's latents (image-to-video / extension) by clean
  context passes over them. A pure T2V student was never trained to continue from such a cache: approximate;
* `save_state(path)` / `StreamSession.from_state(model, path)`: everything needed to continue bit-identically
  (see `stream_r1.stream_state`).

Determinism: all randomness comes from the session's `torch.Generator` (seeded by `seed`); its state is part of
a saved state, so a resumed stream draws exactly the noise the uninterrupted one would have.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Protocol

import torch
from einops import rearrange
from torch import Tensor

from .config import StreamConfig, check_resolution
from .kv_cache import KVCache
from .schedule import FlowMatchSchedule
from .stream_state import (DTYPES, LAYOUT_FIELDS, SavedStream, check_state_model, load_stream_state, restore_session,
                           save_stream_state)
from .timeline import TRANSITIONS, PromptSchedule
from .wan.model import WanModel

log = logging.getLogger(__name__)


class ChunkDecoder(Protocol):
    """Streaming decoder: normalised latents [B, 16, f, h, w] -> video [B, 3, T, H, W] in [-1, 1]."""

    def decode(self, latents: Tensor) -> Tensor: ...

    def reset(self) -> None: ...


@dataclass
class Chunk:
    index: int
    """Chunk number in the stream (0-based)."""
    start_frame: int
    """Latent frame index of the chunk's first frame."""
    latents: Tensor
    """[B, f, 16, h, w] normalised latents (frame-major, as the reference's output)."""
    frames: Optional[Tensor] = None
    """[B, T, 3, H, W] decoded video in [0, 1] when a decoder is attached (chunk 0: 1 + 4(f-1) frames)."""
    seconds: float = 0.0
    """Wall time of the chunk (DiT + decode)."""


@dataclass
class StreamStats:
    chunks: int = 0
    dit_seconds: float = 0.0
    decode_seconds: float = 0.0
    chunk_seconds: list = field(default_factory=list)


class StreamSession:
    """One stream: a model, a KV cache, a prompt context, a random generator and an optional decoder.

    context: umT5 output [B, L, text_dim] (padded rows zero). noise: optional initial noise
    [B, F, 16, h, w] for the first F latent frames (later chunks draw from the session's generator).
    """

    def __init__(self, model: WanModel, cfg: StreamConfig, context: Tensor, *, height: int, width: int,
                 seed: int = 0, noise: Optional[Tensor] = None, decoder: Optional[ChunkDecoder] = None,
                 device: "torch.device | str | None" = None, dtype: Optional[torch.dtype] = None,
                 timing_sync: bool = False, overlap_decode: bool = False, overlap_priority: bool = False):
        mc = model.cfg
        check_resolution(height, width, mc.pixel_multiple)
        p = next(model.parameters())
        self.model, self.cfg = model, cfg
        self.device = torch.device(device) if device is not None else p.device
        self.dtype = dtype or p.dtype
        self.height, self.width = height, width
        self.lat_h, self.lat_w = mc.latent_hw(height, width)               # 480x832 -> 60x104
        self.batch = context.shape[0]
        self.schedule = FlowMatchSchedule.from_config(cfg)
        self.timesteps = self.schedule.sampling_timesteps(cfg.denoising_steps, cfg.warp_denoising_step)
        self.cache = KVCache.for_model(model, cfg, batch=self.batch, height=height, width=width,
                                       device=self.device, dtype=self.dtype)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.noise = self._checked_noise(noise)
        """Initial noise [B, F, 16, h, w] of the first F generated latent frames, or None."""
        self.decoder = decoder
        self.timing_sync = timing_sync and self.device.type == "cuda"
        """Synchronise the GPU before each clock read so `stats` split DiT and decode time exactly
        (benchmarks only: it adds host syncs between the two stages)."""
        self.overlap_decode, self._side, self._dit_stream = False, None, None
        if overlap_decode:
            self.enable_overlap(priority=overlap_priority)
        self.on_frames: Optional[Callable[[Tensor], None]] = None
        """Called with each decoded piece [B, t, 3, H, W] (t = 1 for the stream's first latent frame, else 4)."""
        self.before_chunk: Optional[Callable[[int], None]] = None
        """Called by `run` last before chunk i starts (after the stop check and the timeline's switch), with i: the
        place for changes made between chunks from outside, e.g. live prompts through `switch_prompt`."""
        self.chunk_index = 0
        """Chunks generated so far (prefilled frames are not chunks)."""
        self.frame_offset = 0
        """Latent frames prefilled from an image or clip before the first generated chunk."""
        self.seed = seed
        self.stats = StreamStats()
        self.interrupted = False
        self.timeline: Optional[PromptSchedule] = None
        """Prompt timeline applied by `run` at chunk boundaries (`set_timeline`)."""
        self.prompt: Optional[str] = None
        """Text of the current prompt when known (set by the timeline / `set_context(prompt=)`)."""
        self.switches: list[dict] = []
        """Log of prompt switches and cache operations: {chunk, action, frames}."""
        self._recent: Optional[Tensor] = None          # clean latents of the last <= cache_frames frames
        self._pieces: list[tuple[int, int]] = []        # [start, end) latent frames of each context pass kept
        self._sink_latents: Optional[Tensor] = None     # clean latents of the stream's first sink frames
        self._sink_pieces: list[tuple[int, int]] = []
        self._skipped_context_pass = False
        self.set_context(context)

    def _checked_noise(self, noise: Optional[Tensor]) -> Optional[Tensor]:
        if noise is None:
            return None
        want = (self.batch, self.model.cfg.in_dim, self.lat_h, self.lat_w)
        if noise.dim() != 5 or (noise.shape[0], *noise.shape[2:]) != want:
            raise ValueError(f"noise must be [B, F, {want[1]}, {self.lat_h}, {self.lat_w}] for "
                             f"{self.width}x{self.height}, got {list(noise.shape)}")
        return noise.to(self.device, self.dtype)

    # ---- prompt ---------------------------------------------------------------------------------
    def set_context(self, context: Tensor, transition: str = "none", *, prompt: Optional[str] = None) -> None:
        """Switch the prompt from the next chunk on: the text K/V are recomputed, and the frame cache is kept
        (`none`), re-encoded under the new prompt (`recache`) or cut to sink + last frame (`flush`)."""
        if transition not in TRANSITIONS:
            raise ValueError(f"transition {transition!r} is not one of {', '.join(TRANSITIONS)}")
        if context.dim() != 3 or context.shape[0] != self.batch:
            raise ValueError(f"context must be [{self.batch}, L, text_dim] (the stream's batch), "
                             f"got {list(context.shape)}")
        self.context = context.to(self.device, self.dtype)
        self.prompt = prompt
        self.cache.reset_cross()
        if transition == "recache":
            self.recache()
        elif transition == "flush":
            self.flush()

    def set_timeline(self, timeline: Optional[PromptSchedule]) -> None:
        """Follow a prompt timeline from now on (`run` applies its events at their chunk boundaries; on the first
        chunk of each run, a prompt in force that differs from the current one is switched in: resume/branch)."""
        self.timeline = timeline

    def _same_context(self, prompt: str, context: Tensor) -> bool:
        if self.prompt is not None:
            return self.prompt == prompt
        c = context.to(self.device, self.dtype)
        return c.shape == self.context.shape and bool(torch.equal(c, self.context))

    def _apply_timeline(self, first: bool) -> None:
        sch, i = self.timeline, self.chunk_index
        ev = sch.event_at(i)
        if ev is None and first:
            ev = sch.in_force(i)
            ctx = sch.context(ev.prompt)
            if self._same_context(ev.prompt, ctx):
                self.prompt = ev.prompt
                return
        if ev is None:
            return
        self.switch_prompt(sch.context(ev.prompt), ev.transition, ev.prompt)

    def switch_prompt(self, context: Tensor, transition: str, prompt: str) -> str:
        """Switch to `prompt` at this chunk boundary as a timeline entry does: with `transition` (`none` on the
        stream's first chunk), logged in `switches`. For changes made between chunks from outside (live prompts
        through `before_chunk`). Returns the transition applied."""
        i = self.chunk_index
        transition = transition if self.frames_done > 0 and i > 0 else "none"     # chunk 0: the first prompt
        self.set_context(context, transition, prompt=prompt)
        self.switches.append(dict(chunk=i, action=f"prompt:{transition}", prompt=prompt))
        log.info("chunk %d: prompt %r (%s)", i, prompt[:60], transition)
        return transition

    @property
    def frames_done(self) -> int:
        """Latent frames in the stream so far (prefilled + generated)."""
        return self.frame_offset + self.chunk_index * self.cfg.frames_per_block

    # ---- cache operations (between chunks) ----------------------------------------------------------
    def _remember(self, x0: Tensor, start: int) -> None:
        """Keep the clean latents of the frames a context pass just wrote (bounded by the cache length)."""
        f, keep = x0.shape[1], self.cfg.cache_frames
        self._recent = x0 if self._recent is None else torch.cat([self._recent, x0], dim=1)[:, -keep:]
        self._pieces.append((start, start + f))
        self._pieces = [p for p in self._pieces if p[1] > start + f - keep]
        s = self.cache.sink_tokens // self.cache.frame_seqlen
        if start < s:
            piece = x0[:, : s - start]
            self._sink_latents = piece if self._sink_latents is None else torch.cat([self._sink_latents, piece], 1)
            self._sink_pieces.append((start, start + piece.shape[1]))

    @torch.no_grad()
    def _rewrite(self, latents: Tensor, start_frame: int, slot_end: int) -> None:
        """Clean pass over frames [start_frame, start_frame + f) writing their K/V at buffer frames
        [slot_end - f, slot_end) and attending to buffer[: slot_end]; the cache indices are left unchanged.
        (A plan with no new tokens: global_end = the frames' end, local_end = slot_end, restored after.)"""
        c, fs, f = self.cache, self.cache.frame_seqlen, latents.shape[1]
        local_end, global_end = c.local_end, c.global_end
        c.local_end, c.global_end = slot_end * fs, (start_frame + f) * fs
        try:
            self._denoise(latents, self.cfg.context_noise, start_frame)
        finally:
            c.local_end, c.global_end = local_end, global_end

    @torch.no_grad()
    def recache(self) -> int:
        """Re-encode the cached non-sink frames under the current prompt (LongLive's KV re-cache with its sink
        protected); returns the number of latent frames re-encoded."""
        c, fs = self.cache, self.cache.frame_seqlen
        n = max(0, (c.local_end - c.sink_tokens) // fs)
        if n == 0 or self._recent is None:
            return 0
        g, slots = c.global_end // fs, c.local_end // fs
        first, r = g - n, self._recent.shape[1]
        if r < n:
            raise RuntimeError(f"recache needs the clean latents of {n} frames but the session kept {r}")
        for s, e in self._pieces:
            s = max(s, first)
            if e <= s:
                continue
            self._rewrite(self._recent[:, r - (g - s): r - (g - e)], s, slots - (g - e))
        self.switches.append(dict(chunk=self.chunk_index, action="recache", frames=n))
        return n

    @torch.no_grad()
    def flush(self) -> int:
        """Keep the sink and the most recent latent frame only; returns the number of frames dropped."""
        c, fs = self.cache, self.cache.frame_seqlen
        sink, end = c.sink_tokens, c.local_end
        if end - sink <= fs:
            return 0
        c.k[:, :, sink:sink + fs] = c.k[:, :, end - fs:end].clone()
        c.v[:, :, sink:sink + fs] = c.v[:, :, end - fs:end].clone()
        c.local_end = sink + fs
        g = c.global_end // fs
        self._pieces = [(g - 1, g)]
        dropped = (end - sink) // fs - 1
        self.switches.append(dict(chunk=self.chunk_index, action="flush", frames=dropped))
        return dropped

    @torch.no_grad()
    def refresh_sink(self) -> bool:
        """Re-encode the stream's first `sink_frames` clean latents into the sink slots under the current prompt
        (what the EMA blended in is dropped). False when there is no full sink to refresh."""
        c, fs = self.cache, self.cache.frame_seqlen
        s = c.sink_tokens // fs
        if s == 0 or self._sink_latents is None or self._sink_latents.shape[1] < s or c.local_end < c.sink_tokens:
            return False
        for a, b in self._sink_pieces:
            self._rewrite(self._sink_latents[:, a:b], a, b)
        self.switches.append(dict(chunk=self.chunk_index, action="refresh_sink", frames=s))
        return True

    @torch.no_grad()
    def prefill(self, latents: Tensor, *, decode: bool = True) -> Optional[Tensor]:
        """Start the stream from given clean latents [B, F, 16, h, w] (normalised; e.g. `WanVAE.encode` of an
        image, F = 1, or of a clip's 1+4k frames): clean context passes over them, `frames_per_block` frames at
        a time, so the first generated chunk continues them. With a decoder, the latents are decoded too (this
        primes the decoder's causal cache; returns those frames [B, T, 3, H, W])."""
        if self.frames_done or self.cache.global_end:
            raise ValueError("prefill starts a stream: call it before the first chunk")
        want = (self.batch, self.model.cfg.in_dim, self.lat_h, self.lat_w)
        if latents.dim() != 5 or (latents.shape[0], *latents.shape[2:]) != want or latents.shape[1] < 1:
            raise ValueError(f"prefill latents must be [{want[0]}, F, {want[1]}, {want[2]}, {want[3]}] for "
                             f"{self.width}x{self.height}, got {list(latents.shape)}")
        x = latents.to(self.device, self.dtype)
        fpb = self.cfg.frames_per_block
        for s in range(0, x.shape[1], fpb):
            piece = x[:, s:s + fpb]
            self._denoise(piece, self.cfg.context_noise, s)
            self._remember(piece, s)
        self.frame_offset = x.shape[1]
        self.switches.append(dict(chunk=0, action="prefill", frames=x.shape[1]))
        return self._decode(x) if decode and self.decoder is not None else None

    # ---- state files ----------------------------------------------------------------------------------
    def save_state(self, path, *, extra_tensors: Optional[dict] = None, extra_meta: Optional[dict] = None):
        """Write everything needed to continue this stream to a safetensors file (atomically; see
        `stream_r1.stream_state`). Returns the path."""
        return save_stream_state(self, path, extra_tensors=extra_tensors, extra_meta=extra_meta)

    def load_state(self, state, *, strict_config: bool = True):
        """Continue a stream saved by `save_state` (a path or a loaded `SavedStream`) in this session, whose
        model, dtype, size and cache layout must match. Returns the `SavedStream` (its `extra` for callers)."""
        saved = load_stream_state(state) if not hasattr(state, "tensors") else state
        restore_session(self, saved, strict_config=strict_config)
        return saved

    def enable_overlap(self, priority: bool = True) -> bool:
        """Decode chunk k on a side CUDA stream while the DiT runs chunk k+1 (outputs are identical; `run` yields
        each chunk after the next one's DiT is enqueued, so between two yields the session is one chunk ahead of
        the chunk just yielded). `priority`: the DiT runs on a high-priority stream and the decode on a
        default-priority one, so the GPU schedules the decode's blocks only where the DiT leaves SMs free (its
        partial waves and launch gaps). Returns whether it is on: it needs CUDA and a decoder."""
        self.overlap_decode = self.decoder is not None and self.device.type == "cuda"
        side, dit = _overlap_streams(self.device) if self.overlap_decode else (None, None)
        self._side, self._dit_stream = side, dit if priority else None
        return self.overlap_decode

    @classmethod
    def from_state(cls, model: WanModel, state, *, decoder: Optional[ChunkDecoder] = None,
                   device: "torch.device | str | None" = None, dtype: Optional[torch.dtype] = None,
                   config: Optional[StreamConfig] = None) -> "StreamSession":
        """A session continuing a saved stream (its config, size and prompt; `config` may change the sampling
        fields, not the cache layout)."""
        saved = state if isinstance(state, SavedStream) else load_stream_state(state)
        cfg = saved.config()
        if config is not None:
            layout = {k: (getattr(cfg, k), getattr(config, k)) for k in LAYOUT_FIELDS
                      if getattr(cfg, k) != getattr(config, k)}
            if layout:
                raise ValueError(f"{saved.path or 'the state'} was saved with another cache layout {layout} (saved, "
                                 "requested): resume with the stream settings it was saved with")
            cfg = config
        check_state_model(saved, model.cfg)                     # before a cache is sized for this model
        s = saved.session
        session = cls(model, cfg, saved.tensors["context"], height=int(s["height"]), width=int(s["width"]),
                      seed=int(s.get("seed") or 0), decoder=decoder, device=device, dtype=dtype or DTYPES[saved.dtype])
        restore_session(session, saved, strict_config=config is None)
        return session

    # ---- one chunk --------------------------------------------------------------------------------
    def _initial_noise(self, start: int, f: int) -> Tensor:
        start -= self.frame_offset                      # given noise covers the generated frames
        shape = (self.batch, f, self.model.cfg.in_dim, self.lat_h, self.lat_w)
        if self.noise is not None and start < self.noise.shape[1]:
            given = self.noise[:, start:start + f]
            if given.shape[1] == f:
                return given
            extra = torch.randn((self.batch, f - given.shape[1], *shape[2:]), generator=self.generator,
                                device=self.device, dtype=self.dtype)
            return torch.cat([given, extra], dim=1)
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=self.dtype)

    def _denoise(self, noisy: Tensor, t: float, start: int, cache=None, context: Optional[Tensor] = None) -> Tensor:
        """One DiT call on [B, f, 16, h, w] at timestep t; returns the x0 prediction (same layout). `cache` /
        `context`: instead of the session's (batched candidates: a `BatchedKV` and the context repeated)."""
        b, f = noisy.shape[:2]
        x = rearrange(noisy, "b f c h w -> b c f h w")
        tt = torch.full((b, f), t, device=self.device, dtype=torch.float32)
        context = self.context if context is None else context
        cache = self.cache if cache is None else cache
        flow = self.model(x, tt, context, cache=cache, start_frame=start)
        flow = rearrange(flow, "b c f h w -> b f c h w")
        return self.schedule.x0_from_flow(noisy, flow, t)

    def _decode(self, x0: Tensor) -> Tensor:
        """[B, f, 16, h, w] latents -> [B, T, 3, H, W] frames in [0, 1], one latent frame at a time so that
        `on_frames` (if set) sees each piece as soon as it exists (the first frame of a stream early)."""
        pieces = []
        for i in range(x0.shape[1]):
            video = self.decoder.decode(rearrange(x0[:, i:i + 1], "b f c h w -> b c f h w"))  # [B, 3, t, H, W]
            piece = rearrange(video.float().clamp(-1, 1) * 0.5 + 0.5, "b c t h w -> b t c h w")
            if self.on_frames is not None:
                self.on_frames(piece)
            pieces.append(piece)
        return torch.cat(pieces, dim=1)

    @torch.no_grad()
    def _dit_overlapped(self, last: bool) -> tuple[Chunk, torch.cuda.Event]:
        """The next chunk's DiT, enqueued on the DiT stream (the caller's, or the high-priority one); returns the
        chunk (frames not decoded yet) and the event its latents are ready at: after the denoising steps, before
        the clean cache pass, so the decode on the side stream runs beside that pass. The caller's stream waits for
        the whole chunk, pass included (what it does next may read the cache). No host sync."""
        caller = torch.cuda.current_stream(self.device)
        dit = self._dit_stream or caller
        if dit is not caller:
            dit.wait_stream(caller)                              # context / state set on the caller's stream
        latents = torch.cuda.Event()
        with torch.cuda.stream(dit):
            chunk = self.next_chunk(last=last, decode=False, latents_ready=lambda: latents.record(dit))
        if dit is not caller:                                    # the caller reads the latents and the cache after this
            done = torch.cuda.Event()
            done.record(dit)
            caller.wait_event(done)
            chunk.latents.record_stream(caller)
        return chunk, latents

    @torch.no_grad()
    def _decode_overlapped(self, chunk: Chunk, ready: torch.cuda.Event,
                           first: bool = False) -> tuple[Chunk, torch.cuda.Event]:
        """Enqueue the chunk's decode on the side stream after `ready`; returns it with the event it is done at.
        `first`: the DiT waits for this decode, so the run's first frames are not held back by its chunk 2 (on the
        caller's stream `_deliver`'s wait already orders it; a high-priority DiT stream needs its own)."""
        with torch.cuda.stream(self._side):
            self._side.wait_event(ready)
            chunk.latents.record_stream(self._side)
            chunk.frames = self._decode(chunk.latents)
            done = torch.cuda.Event()
            done.record(self._side)
        if first and self._dit_stream is not None:
            self._dit_stream.wait_event(done)
        return chunk, done

    @torch.no_grad()
    def next_chunk(self, *, last: bool = False, decode: bool = True, noise: Optional[Tensor] = None,
                   latents_ready: Optional[Callable[[], None]] = None) -> Chunk:
        """Generate (and decode, if a decoder is attached) the next chunk. `noise` [B, f, 16, h, w]: the chunk's
        initial noise instead of a draw from the generator (test-time search; the re-noise draws still come
        from `self.generator`). `latents_ready()` is called once the chunk's latents exist, before the clean cache
        pass (the overlapped path records its decode's event there, so the decode need not wait for that pass)."""
        t0 = self._clock()
        f, start = self.cfg.frames_per_block, self.frames_done
        if noise is None:
            x = self._initial_noise(start, f)                              # [B, f, 16, h, w]
        else:
            x = noise.to(self.device, self.dtype)
        x0 = self._sample(x, start, lambda x0: torch.randn(x0.shape, generator=self.generator, device=self.device,
                                                           dtype=self.dtype))
        # decode before the clean cache pass: the frames do not depend on it, so they arrive one pass earlier
        if latents_ready is not None:
            latents_ready()
        t1 = self._clock()
        frames = self._decode(x0) if decode and self.decoder is not None else None
        t2 = self._clock()
        self._skipped_context_pass = last and self.cfg.skip_last_context_pass
        if not self._skipped_context_pass:
            self._denoise(x0, self.cfg.context_noise, start)               # clean K/V into the cache
        self._remember(x0, start)
        t3 = self._clock()
        chunk = Chunk(self.chunk_index, start, x0, frames, t3 - t0)
        self.chunk_index += 1
        self._count(1, t0, t1, t2, t3)
        return chunk

    def _sample(self, x: Tensor, start: int, draw: Callable[[Tensor], Tensor], cache=None,
                context: Optional[Tensor] = None) -> Tensor:
        """The denoising steps of one chunk: noise x [B, f, 16, h, w] -> x0 (same layout). Between steps x0 is
        re-noised to the next timestep with `draw(x0)`, fresh Gaussian noise shaped like x0."""
        ts = self.timesteps
        for k, t in enumerate(ts):
            x0 = self._denoise(x, t, start, cache, context)
            if k + 1 < len(ts):
                x = self.schedule.add_noise(x0, draw(x0), ts[k + 1])
        return x0

    def _count(self, chunks: int, t0: float, t1: float, t2: float, t3: float) -> None:
        """Add one step's clock reads to `stats`: DiT t0..t1, decode t1..t2, the clean cache pass t2..t3."""
        self.stats.chunks += chunks
        self.stats.dit_seconds += (t1 - t0) + (t3 - t2)
        self.stats.decode_seconds += t2 - t1
        self.stats.chunk_seconds.append(t3 - t0)

    @torch.no_grad()
    def next_chunks(self, states: list[dict], noises: list[Tensor], *, last: bool = False,
                    decode_rows: int = 0) -> list[Chunk]:
        """The next chunk of several lineages (`branch_state()` dicts of the same cache layout, e.g. the candidates
        of a test-time search) in ONE batched DiT call per step: rows [r*B, (r+1)*B) are lineage r, with its own
        initial noise `noises[r]` [B, f, 16, h, w], its own generator for the re-noise draws, its own KV cache
        (`stream_r1.kv_pages.BatchedKV`) and its own decoder. Each state is updated in place as by `next_chunk`
        inside `branch(state)`; a single lineage gives exactly `next_chunk`'s result. `decode_rows` caps the
        lineages of one batched VAE decode (0 = all; the decode's activations grow with its rows)."""
        from .kv_pages import BatchedKV

        t0 = self._clock()
        n, f = len(states), self.cfg.frames_per_block
        if len({s["chunk_index"] for s in states}) != 1:
            raise ValueError("next_chunks: all lineages must be at the same chunk")
        start = self.frame_offset + states[0]["chunk_index"] * f
        cache = BatchedKV([s["cache"] for s in states])
        context = self.context if n == 1 else self.context.repeat(n, 1, 1)           # [N*B, L, text_dim]
        x = torch.cat([z.to(self.device, self.dtype) for z in noises])                # [N*B, f, 16, h, w]
        x0 = self._sample(x, start, lambda x0: torch.cat([                            # each lineage its own draws
            torch.randn((self.batch, *x0.shape[1:]), generator=s["generator"], device=self.device, dtype=self.dtype)
            for s in states]), cache, context)
        rows = [x0[r * self.batch:(r + 1) * self.batch] for r in range(n)]           # n x [B, f, 16, h, w]
        t1 = self._clock()
        frames = self._decode_lineages(states, x0, rows, decode_rows)
        t2 = self._clock()
        skip = last and self.cfg.skip_last_context_pass
        if not skip:
            self._denoise(x0, self.cfg.context_noise, start, cache, context)           # clean K/V into each cache
        chunks = []
        for r, state in enumerate(states):
            with self.branch(state):
                self._skipped_context_pass = skip
                self._remember(rows[r], start)
                chunks.append(Chunk(self.chunk_index, start, rows[r], frames[r]))
                self.chunk_index += 1
        t3 = self._clock()
        for c in chunks:
            c.seconds = (t3 - t0) / n
        self._count(n, t0, t1, t2, t3)
        return chunks

    def _decode_lineages(self, states: list[dict], x0: Tensor, rows: list[Tensor],
                         max_rows: int = 0) -> list[Optional[Tensor]]:
        """Frames of every lineage's chunk. When all lineages hold `StreamingDecoder`s of one VAE at the same
        point of the stream, they run as batched decodes of up to `max_rows` lineages (0 = all; caches
        concatenated on the batch axis, then split back, rows r*B..(r+1)*B = lineage r); otherwise one decode
        per lineage."""
        from .vae import StreamingDecoder

        n, b = len(states), self.batch
        if 0 < max_rows < n:
            out: list[Optional[Tensor]] = []
            for s in range(0, n, max_rows):
                e = min(n, s + max_rows)                # rows are consecutive slices of x0: lineages s..e-1
                out += self._decode_lineages(states[s:e], x0[s * b:e * b], rows[s:e])
            return out
        decs = [s["decoder"] for s in states]
        same = (n > 1 and all(type(d) is StreamingDecoder for d in decs)
                and len({id(d.vae) for d in decs}) == 1 and len({d.latent_frames for d in decs}) == 1
                and all((c is None) == (decs[0].cache[i] is None) for d in decs for i, c in enumerate(d.cache)))
        if not same:
            frames: list[Optional[Tensor]] = [None] * n
            for r, state in enumerate(states):
                if state["decoder"] is not None:
                    with self.branch(state):
                        frames[r] = self._decode(rows[r])
            return frames
        merged = StreamingDecoder(decs[0].vae)
        merged.latent_frames = decs[0].latent_frames
        merged.cache = [None if c is None else torch.cat([d.cache[i] for d in decs])  # [n*B, C, 2, h, w]
                        for i, c in enumerate(decs[0].cache)]
        own, on_frames = self.decoder, self.on_frames
        self.decoder, self.on_frames = merged, None
        try:
            video = self._decode(x0)                                                      # [n*B, T, 3, H, W]
        finally:
            self.decoder, self.on_frames = own, on_frames
        for r, d in enumerate(decs):                    # decoding replaces cache entries, never writes into them
            d.cache = [None if c is None else c[r * b:(r + 1) * b] for c in merged.cache]
            d.latent_frames = merged.latent_frames
        return [video[r * b:(r + 1) * b] for r in range(n)]

    # ---- branches (test-time search, stream_r1.tts) ------------------------------------------------------
    BRANCH_FIELDS = ("cache", "generator", "decoder", "chunk_index", "_recent", "_pieces", "_sink_latents",
                     "_sink_pieces", "_skipped_context_pass")
    """Per-lineage state: everything `next_chunk` reads or writes besides the model, config and prompt."""

    def branch_state(self) -> dict:
        """The session's per-lineage state (references, not copies)."""
        return {k: getattr(self, k) for k in self.BRANCH_FIELDS}

    def set_branch_state(self, state: dict) -> None:
        """Adopt a lineage's state (e.g. the winning beam of a search); lists are taken as they are."""
        for k in self.BRANCH_FIELDS:
            setattr(self, k, state[k])

    @contextlib.contextmanager
    def branch(self, state: dict):
        """Run `next_chunk` etc. on another lineage's state: swapped in on entry; on exit `state` is updated in
        place with what the calls left and the session's own state is restored (`on_frames` is off inside)."""
        saved, on_frames = self.branch_state(), self.on_frames
        self.set_branch_state(state)
        self.on_frames = None
        try:
            yield self
        finally:
            state.update(self.branch_state())
            self.set_branch_state(saved)
            self.on_frames = on_frames

    def _clock(self) -> float:
        if self.timing_sync:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def run(self, num_chunks: Optional[int] = None, *,
            on_chunk: Optional[Callable[[Chunk], None]] = None,
            should_stop: Optional[Callable[[], bool]] = None,
            prompt_at: Optional[Callable[[int], Optional[Tensor]]] = None) -> Iterator[Chunk]:
        """Yield chunks until `num_chunks` (None = forever) or until `should_stop()` is true.

        `should_stop` is checked between chunks; `prompt_at(i)` may return a new context for chunk i (switched
        in with transition `none`); a timeline set with `set_timeline` is applied at its chunk boundaries.
        Then `before_chunk(i)`, when set, is called last before chunk i starts.
        """
        steps = self._chunk_steps(num_chunks, should_stop, prompt_at)
        if not self.overlap_decode:
            for last in steps:
                yield self._deliver(self.next_chunk(last=last), None, on_chunk)
            return
        pending, undecoded = None, None         # decode(k) is enqueued before DiT(k + 1), yielded after it
        for i, last in enumerate(steps):
            if undecoded is not None:
                pending = self._decode_overlapped(*undecoded)
            undecoded = self._dit_overlapped(last)
            if i == 0:
                undecoded, pending = None, self._decode_overlapped(*undecoded, first=True)
            if pending is not None:
                yield self._deliver(*pending, on_chunk)
                pending = None
        if undecoded is not None:
            yield self._deliver(*self._decode_overlapped(*undecoded), on_chunk)

    def _chunk_steps(self, num_chunks: Optional[int], should_stop: Optional[Callable[[], bool]],
                     prompt_at: Optional[Callable[[int], Optional[Tensor]]]) -> Iterator[bool]:
        """Before each chunk of a run: stop if asked, switch the prompt if due; then yield whether it is the last."""
        i = 0
        while num_chunks is None or i < num_chunks:
            if should_stop is not None and should_stop():
                self.interrupted = True
                log.info("stream interrupted after %d chunks", self.chunk_index)
                return
            if self.timeline is not None:
                self._apply_timeline(first=i == 0)
            elif prompt_at is not None:
                ctx = prompt_at(self.chunk_index)
                if ctx is not None:
                    self.set_context(ctx)
            if self.before_chunk is not None:
                self.before_chunk(self.chunk_index)
            yield num_chunks is not None and i == num_chunks - 1
            i += 1

    def _deliver(self, chunk: Chunk, done: "Optional[torch.cuda.Event]",
                 on_chunk: Optional[Callable[[Chunk], None]]) -> Chunk:
        if done is not None:                          # frames were decoded on the side stream
            torch.cuda.current_stream(self.device).wait_event(done)
            chunk.frames.record_stream(torch.cuda.current_stream(self.device))
        if on_chunk is not None:
            on_chunk(chunk)
        return chunk


_STREAMS: dict = {}


def _overlap_streams(device: torch.device) -> tuple:
    """(side stream, high-priority DiT stream) of `device`, made once per process: PyTorch's allocator keeps the
    blocks freed on a stream for that stream, so streams made per run leave their cached blocks behind (measured in
    ComfyUI on an H100, 2026-12-07: +33 MB of VRAM per run)."""
    key = (device.type, device.index if device.index is not None else torch.cuda.current_device())
    if key not in _STREAMS:
        _STREAMS[key] = (torch.cuda.Stream(device), torch.cuda.Stream(device, priority=-1))
    return _STREAMS[key]


def chunks_for_frames(latent_frames: int, frames_per_block: int) -> int:
    """Chunks needed to cover `latent_frames` (the last chunk may run past the end; trim its output)."""
    return -(-latent_frames // frames_per_block)


def latent_frames_for_seconds(seconds: float, fps: int = 16, frames_per_block: int = 3) -> int:
    """Latent frames for `seconds` of video, rounded to the nearest whole chunk (at least one):
    5 s -> 21 latent = 81 frames; 30 s -> 120 latent = 477 frames (29.8 s), as the reference clips."""
    lat = (seconds * fps - 1) / 4 + 1
    return max(1, round(lat / frames_per_block)) * frames_per_block


@torch.no_grad()
def generate(model: WanModel, context: Tensor, cfg: StreamConfig, latent_frames: int, *, height: int, width: int,
             seed: int = 0, noise: Optional[Tensor] = None, decoder: Optional[ChunkDecoder] = None,
             on_chunk: Optional[Callable[[Chunk], None]] = None,
             should_stop: Optional[Callable[[], bool]] = None) -> tuple[Tensor, Optional[Tensor]]:
    """Generate `latent_frames` latent frames. Returns latents [B, F, 16, h, w] and, with a decoder,
    frames [B, T, 3, H, W] in [0, 1] (T = 1 + 4(F-1))."""
    session = StreamSession(model, cfg, context, height=height, width=width, seed=seed, noise=noise,
                            decoder=decoder)
    lat, frames = [], []
    for chunk in session.run(chunks_for_frames(latent_frames, cfg.frames_per_block), on_chunk=on_chunk,
                             should_stop=should_stop):
        lat.append(chunk.latents)
        if chunk.frames is not None:
            frames.append(chunk.frames)
    latents = torch.cat(lat, dim=1)[:, :latent_frames]
    video = None
    if frames:
        video = torch.cat(frames, dim=1)[:, :1 + 4 * (latent_frames - 1)]
    return latents, video

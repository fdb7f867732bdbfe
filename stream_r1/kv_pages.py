"""Paged copy-on-write KV cache for test-time search (stream_r1.tts), and a batch view over several caches.

`PagedKVCache` holds the same stream state as `KVCache` (same index algebra: `KVCache.plan`), but its buffer
[0, local_end) is a table of segments `(page, lo, hi)`, each a token range of a `Page`: K and V
[num_layers, B, P, n, d] of one chunk (P = frames_per_block * frame_seqlen tokens; 1.3B at 832x480 in bf16:
2 x 30 x 4,680 x 1536 x 2 B = 862 MB). A page is written in place only while exactly one segment refers to it;
`fork()` copies the table (a list of ints and references) and so shares every page; the first write to a shared
page copies that page only (copy-on-write). Eviction drops segments, it never moves data.

Memory of a search with beam width K and N candidates per chunk: the parents' window pages (shared by their
children) + one new page per candidate + at most one copied sink page per candidate (EMA writes), instead of one
full window copy per candidate. `PagePool` counts the live pages of all forks of one cache.

`BatchedKV` lets one model call run several caches as batch rows (candidate-major: rows [r*B, (r+1)*B) belong
to cache r). All caches must have the same layout (same plan); `layout_key()` groups them.
"""
from __future__ import annotations

import weakref
from typing import Optional, Sequence

import torch
from torch import Tensor

from .kv_cache import KVCache, WritePlan


class Page:
    """K/V of consecutive tokens for every layer: k, v [L, B, P, n, d]. `refs`: table segments referring to it."""

    __slots__ = ("k", "v", "refs", "__weakref__")

    def __init__(self, k: Tensor, v: Tensor):
        self.k, self.v, self.refs = k, v, 0

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


class PagePool:
    """Live pages of one cache and all its forks: count, bytes and the peak of both."""

    def __init__(self):
        self._live: "weakref.WeakSet[Page]" = weakref.WeakSet()
        self.peak_pages = 0
        self.peak_bytes = 0
        self.copies = 0
        """Pages copied because a shared page was written."""

    def new(self, k: Tensor, v: Tensor) -> Page:
        page = Page(k, v)
        self._live.add(page)
        self.peak_pages = max(self.peak_pages, len(self._live))
        self.peak_bytes = max(self.peak_bytes, self.live_bytes())
        return page

    def live_pages(self) -> int:
        return len(self._live)

    def live_bytes(self) -> int:
        return sum(p.nbytes for p in self._live)


def _release(segs: list) -> None:
    for page, _, _ in segs:
        page.refs -= 1


class PagedKVCache:
    """A `KVCache` with copy-on-write pages (see the module docstring). Same index fields and model-facing verbs
    (plan / update / commit / query_start_frame / cross / set_cross), plus `fork`, `to_cache`, `read_tokens`,
    `write_tokens`. Sessions' whole-buffer operations (flush, load_state_dict) need `to_cache()` first."""

    plan = KVCache.plan
    commit = KVCache.commit
    query_start_frame = KVCache.query_start_frame
    frames_cached = KVCache.frames_cached
    frames_seen = KVCache.frames_seen
    relative_rope = KVCache.relative_rope

    def __init__(self, *, cfg, frame_seqlen: int, capacity: int, sink_tokens: int, reserved: int,
                 shape: tuple, device, dtype, text_len: int, pool: Optional[PagePool] = None):
        self.cfg, self.frame_seqlen = cfg, frame_seqlen
        self.capacity, self.sink_tokens, self.reserved = capacity, sink_tokens, reserved
        self.shape = shape                          # (num_layers, B, n, d)
        self.device, self.dtype, self.text_len = device, dtype, text_len
        self.pool = pool or PagePool()
        self.page_tokens = cfg.frames_per_block * frame_seqlen
        self.global_end = self.local_end = 0
        self._plan: Optional[WritePlan] = None
        self._segs: list[tuple[Page, int, int]] = []   # buffer [0, len) in order; never rebound (finalizer)
        self._cross: list = [None] * shape[0]          # per layer (k, v) [B, text_len, n, d]; never written
        self._writes: list = []                         # per plan: (page, page_lo, page_hi, src_lo)
        self._reads: list = []                          # per plan: (page, lo, hi) covering [0, local_end)
        weakref.finalize(self, _release, self._segs)

    # ---- conversion -----------------------------------------------------------------------------------------
    @classmethod
    def from_cache(cls, kv: KVCache, pool: Optional[PagePool] = None) -> "PagedKVCache":
        """Pages of `kv`'s valid region (one per chunk, copied) and its indices; `kv` is not changed."""
        layers, b, _, n, d = kv.k.shape
        new = cls(cfg=kv.cfg, frame_seqlen=kv.frame_seqlen, capacity=kv.capacity, sink_tokens=kv.sink_tokens,
                  reserved=kv.buffer_tokens, shape=(layers, b, n, d), device=kv.k.device, dtype=kv.k.dtype,
                  text_len=kv.cross_k.shape[2], pool=pool)
        keys = kv.k[:, :, :kv.local_end]                               # [L, B, local_end, n, d]
        for lo in range(0, kv.local_end, new.page_tokens):
            hi = min(lo + new.page_tokens, kv.local_end)
            new._add(new.pool.new(keys[:, :, lo:hi].clone(), kv.v[:, :, lo:hi].clone()), 0, hi - lo)
        new.global_end, new.local_end = kv.global_end, kv.local_end
        new._cross = [(kv.cross_k[i].clone(), kv.cross_v[i].clone()) if ok else None
                      for i, ok in enumerate(kv.cross_valid)]
        return new

    def to_cache(self) -> KVCache:
        """A contiguous `KVCache` with the same contents and indices (for the session after the search)."""
        layers, b, n, d = self.shape
        kv = KVCache(num_layers=layers, batch=b, num_heads=n, head_dim=d, frame_seqlen=self.frame_seqlen,
                     cfg=self.cfg, text_len=self.text_len, device=self.device, dtype=self.dtype)
        base = kv.capacity
        kv.reserve(max(self.reserved, self.capacity) - base)
        kv.capacity, kv.sink_tokens = self.capacity, self.sink_tokens
        if self.local_end:
            k, v = self.read_tokens(0, self.local_end)
            kv.k[:, :, :self.local_end], kv.v[:, :, :self.local_end] = k, v
        kv.global_end, kv.local_end = self.global_end, self.local_end
        for i, kv_i in enumerate(self._cross):
            if kv_i is not None:
                kv.set_cross(i, *kv_i)
        return kv

    def __deepcopy__(self, memo) -> KVCache:
        return self.to_cache()                  # an independent copy (e.g. StreamState.fork): contiguous

    def state_dict(self) -> dict[str, Tensor]:
        return self.to_cache().state_dict()

    def fork(self) -> "PagedKVCache":
        """A cache that shares every page (no data copied); writes on either side copy the pages they touch."""
        new = PagedKVCache(cfg=self.cfg, frame_seqlen=self.frame_seqlen, capacity=self.capacity,
                           sink_tokens=self.sink_tokens, reserved=self.reserved, shape=self.shape,
                           device=self.device, dtype=self.dtype, text_len=self.text_len, pool=self.pool)
        for seg in self._segs:
            new._add(*seg)
        new.global_end, new.local_end = self.global_end, self.local_end
        new._cross = list(self._cross)
        return new

    # ---- queries ------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.shape[0]

    @property
    def buffer_tokens(self) -> int:
        return max(self.reserved, self.capacity)

    @property
    def cross_valid(self) -> list[bool]:
        return [c is not None for c in self._cross]

    @property
    def pages(self) -> list[Page]:
        """Pages of the table in buffer order (a page split by eviction appears once per segment)."""
        return [p for p, _, _ in self._segs]

    def nbytes(self) -> int:
        """Bytes of the pages this cache refers to (shared pages counted in full)."""
        return sum(p.nbytes for p in {id(p): p for p in self.pages}.values())

    @property
    def k(self):
        raise AttributeError("a PagedKVCache has no contiguous K buffer; call to_cache() first")

    v = k

    # ---- table edits --------------------------------------------------------------------------------------
    def _add(self, page: Page, lo: int, hi: int, at: Optional[int] = None) -> None:
        page.refs += 1
        self._segs.insert(len(self._segs) if at is None else at, (page, lo, hi))

    def _locate(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """(segment index, token offset of the segment in the buffer, its length) of segments overlapping
        buffer tokens [lo, hi)."""
        out, pos = [], 0
        for i, (_, a, b) in enumerate(self._segs):
            if pos < hi and pos + b - a > lo:
                out.append((i, pos, b - a))
            pos += b - a
        return out

    def _drop(self, lo: int, hi: int) -> None:
        """Remove buffer tokens [lo, hi) from the table (what follows slides down; no data moves)."""
        new, pos = [], 0
        for page, a, b in self._segs:
            n = b - a
            ol, oh = max(0, lo - pos), min(n, hi - pos)          # overlap with [lo, hi), segment-local
            pieces = [(a, b)] if ol >= oh else [(a, a + ol), (a + oh, b)]
            for s, e in pieces:
                if e > s:
                    page.refs += 1
                    new.append((page, s, e))
            page.refs -= 1
            pos += n
        self._segs[:] = new

    def _writable(self, lo: int, hi: int) -> None:
        """Make every segment overlapping [lo, hi) private: a shared page is copied (its segment only)."""
        for i, _, _ in self._locate(lo, hi):
            page, a, b = self._segs[i]
            if page.refs > 1:
                copy = self.pool.new(page.k[:, :, a:b].clone(), page.v[:, :, a:b].clone())
                self.pool.copies += 1
                page.refs -= 1
                copy.refs += 1
                self._segs[i] = (copy, 0, b - a)

    def _length(self) -> int:
        return sum(b - a for _, a, b in self._segs)

    # ---- whole-layer token access (memory sinking) ----------------------------------------------------------
    def read_tokens(self, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """K, V of buffer tokens [lo, hi) for every layer: [L, B, hi - lo, n, d] (copies)."""
        ks, vs = [], []
        for i, pos, n in self._locate(lo, hi):
            page, a, _ = self._segs[i]
            s, e = a + max(0, lo - pos), a + min(n, hi - pos)
            ks.append(page.k[:, :, s:e])
            vs.append(page.v[:, :, s:e])
        return torch.cat(ks, dim=2), torch.cat(vs, dim=2)

    def write_tokens(self, lo: int, k: Tensor, v: Tensor) -> None:
        """Write K, V [L, B, n_tok, n, d] at buffer tokens [lo, lo + n_tok) (copying shared pages first)."""
        hi = lo + k.shape[2]
        self._writable(lo, hi)
        for i, pos, n in self._locate(lo, hi):
            page, a, _ = self._segs[i]
            s, e = max(0, lo - pos), min(n, hi - pos)
            page.k[:, :, a + s:a + e] = k[:, :, pos + s - lo:pos + e - lo]
            page.v[:, :, a + s:a + e] = v[:, :, pos + s - lo:pos + e - lo]

    # ---- model-facing verbs (same contract as KVCache) -----------------------------------------------------
    def _prepare(self) -> None:
        """Apply the current plan to the table once for all layers: evict (and blend the sink, window_sink),
        append a fresh page for new tokens, copy shared pages under the write slice; precompute the maps."""
        p, sink = self._plan, self.sink_tokens
        if p.evict:
            blend = self.cfg.cache_policy == "window_sink" and sink > 0
            if blend:
                lo = sink if self.cfg.sink_ema_source == "evicted" else sink + p.rolled       # pre-roll slice
                e_k, e_v = self.read_tokens(lo, lo + p.evict)
            self._drop(sink, sink + p.evict)
            if blend:
                self._blend_sink(e_k, e_v)
        have = self._length()
        if p.local_end > have:
            layers, b, n, d = self.shape
            shape = (layers, b, p.local_end - have, n, d)
            page = self.pool.new(torch.empty(shape, device=self.device, dtype=self.dtype),
                                 torch.empty(shape, device=self.device, dtype=self.dtype))
            self._add(page, 0, p.local_end - have)
        w0 = p.local_end - p.num_new
        self._writable(w0, p.local_end)
        self._writes = []
        for i, pos, n in self._locate(w0, p.local_end):
            page, a, _ = self._segs[i]
            s, e = max(0, w0 - pos), min(n, p.local_end - pos)
            self._writes.append((page, a + s, a + e, pos + s - w0))
        self._reads = []
        for i, pos, n in self._locate(0, p.local_end):
            page, a, _ = self._segs[i]
            self._reads.append((page, a, a + min(n, p.local_end - pos)))

    def _blend_sink(self, e_k: Tensor, e_v: Tensor) -> None:
        sink, a = self.sink_tokens, self.cfg.sink_ema_alpha
        if e_k.shape[2] == sink:                                 # steady state: EMA (as KVCache._blend_sink)
            s_k, s_v = self.read_tokens(0, sink)
            self.write_tokens(0, a * s_k + (1 - a) * e_k, a * s_v + (1 - a) * e_v)
        else:
            n = min(e_k.shape[2], sink)
            self.write_tokens(0, e_k[:, :, :n], e_v[:, :, :n])

    def write_layer(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Write this layer's new K/V [B, N, n, d] per the current plan."""
        self._prepare_once()
        for page, s, e, src in self._writes:
            page.k[layer, :, s:e] = k[:, src:src + e - s]
            page.v[layer, :, s:e] = v[:, src:src + e - s]

    def _prepare_once(self) -> None:
        if getattr(self, "_prepared", None) is not self._plan:
            self._prepare()
            self._prepared = self._plan

    def gather(self, layer: int, out_k: Optional[Tensor] = None,
               out_v: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """This layer's attended K/V [B, local_end, n, d]: a view when one segment covers it, else a copy
        (into out_k / out_v when given)."""
        if out_k is None and len(self._reads) == 1:
            page, a, b = self._reads[0]
            return page.k[layer, :, a:b], page.v[layer, :, a:b]
        ks = [page.k[layer, :, a:b] for page, a, b in self._reads]
        vs = [page.v[layer, :, a:b] for page, a, b in self._reads]
        if out_k is None:
            return torch.cat(ks, dim=1), torch.cat(vs, dim=1)
        torch.cat(ks, dim=1, out=out_k)
        torch.cat(vs, dim=1, out=out_v)
        return out_k, out_v

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """As `KVCache.update`: write this layer's K/V [B, N, n, d]; return the attended K/V [B, local_end, n, d]."""
        assert self._plan is not None, "call plan() before update()"
        self.write_layer(layer, k, v)
        return self.gather(layer)

    def cross(self, layer: int) -> Optional[tuple[Tensor, Tensor]]:
        return self._cross[layer]

    def set_cross(self, layer: int, k: Tensor, v: Tensor) -> None:
        self._cross[layer] = (k.clone(), v.clone())           # new tensors: forks that share the old keep it

    def reset_cross(self) -> None:
        self._cross = [None] * self.num_layers

    def reset(self) -> None:
        _release(self._segs)
        self._segs.clear()
        self.global_end = self.local_end = 0
        self._plan = None
        self.reset_cross()

    def reserve(self, extra_tokens: int) -> None:
        self.reserved = max(self.reserved, self.capacity + extra_tokens)    # pages need no room; kept for to_cache

    def append_sink(self, tokens: int) -> None:
        """As `KVCache.append_sink` (index-only: the window's oldest tokens become sink)."""
        if self.cfg.cache_policy != "longlive":
            raise ValueError("append_sink needs the longlive cache policy (absolute positions)")
        if self.sink_tokens + tokens > self.local_end:
            raise ValueError("append_sink: not enough cached tokens")
        self.sink_tokens += tokens
        self.capacity += tokens
        self.reserved = max(self.reserved, self.capacity)


def layout_key(cache) -> tuple[int, int, int, int]:
    """Caches with equal keys get equal plans for the same call, so they can share one batched model call."""
    return cache.global_end, cache.local_end, cache.sink_tokens, cache.capacity


class BatchedKV:
    """Several caches of the same layout as the batch rows of one model call (candidate-major rows)."""

    def __init__(self, caches: Sequence):
        if not caches:
            raise ValueError("BatchedKV needs at least one cache")
        keys = {layout_key(c) for c in caches}
        if len(keys) != 1:
            raise ValueError(f"caches of different layouts {sorted(keys)} cannot share a model call; group them "
                             "by stream_r1.kv_pages.layout_key")
        self.caches = list(caches)
        self.batch = caches[0].shape[1] if isinstance(caches[0], PagedKVCache) else caches[0].k.shape[1]
        self._cross: dict[int, tuple[Tensor, Tensor]] = {}
        self._scratch: Optional[tuple[Tensor, Tensor]] = None

    frame_seqlen = property(lambda self: self.caches[0].frame_seqlen)
    relative_rope = property(lambda self: self.caches[0].relative_rope)
    capacity = property(lambda self: self.caches[0].capacity)

    @property
    def cross_valid(self) -> list[bool]:
        return [all(v) for v in zip(*(c.cross_valid for c in self.caches))]

    def plan(self, start: int, num_new: int) -> WritePlan:
        plans = [c.plan(start, num_new) for c in self.caches]
        self._scratch = None
        return plans[0]

    def query_start_frame(self) -> int:
        return self.caches[0].query_start_frame()

    def _rows(self, r: int) -> slice:
        return slice(r * self.batch, (r + 1) * self.batch)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """k, v [N*B, Lq, n, d] -> attended K/V [N*B, S, n, d] (each row group sees its own cache)."""
        if len(self.caches) == 1:
            return self.caches[0].update(layer, k, v)
        outs = []
        for r, c in enumerate(self.caches):
            if isinstance(c, PagedKVCache):
                c.write_layer(layer, k[self._rows(r)], v[self._rows(r)])
                if self._scratch is None:
                    s = c._plan.local_end
                    shape = (k.shape[0], s, *k.shape[2:])                     # [N*B, S, n, d]
                    self._scratch = (k.new_empty(shape), v.new_empty(shape))
                outs.append(c.gather(layer, self._scratch[0][self._rows(r)], self._scratch[1][self._rows(r)]))
            else:
                outs.append(c.update(layer, k[self._rows(r)], v[self._rows(r)]))
        if all(isinstance(c, PagedKVCache) for c in self.caches):
            return self._scratch
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def cross(self, layer: int) -> Optional[tuple[Tensor, Tensor]]:
        if layer not in self._cross:
            kvs = [c.cross(layer) for c in self.caches]
            if any(kv is None for kv in kvs):
                return None
            self._cross[layer] = (torch.cat([kv[0] for kv in kvs]), torch.cat([kv[1] for kv in kvs]))
        return self._cross[layer]

    def set_cross(self, layer: int, k: Tensor, v: Tensor) -> None:
        for r, c in enumerate(self.caches):
            c.set_cross(layer, k[self._rows(r)], v[self._rows(r)])
        self._cross.pop(layer, None)

    def commit(self) -> None:
        for c in self.caches:
            c.commit()
        self._scratch = None

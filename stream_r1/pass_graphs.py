"""Whole cached DiT passes replayed as CUDA graphs (inference, one stream's `KVCache`).

Why: a compiled pass still launches ~600 kernels from Python (30 blocks x compiled stages, cache writes, attention).
Where the host falls behind, the GPU waits: `bench --profile` on an H100 (2026-12-07, bench/RESULTS.md session 9)
found 205 ms without a kernel in a 1.75 s DiT-only span, 92 ms of it in 433 gaps of 0.1-1 ms. A graph replays a
pass with one launch, and host-heavy kernels (the wave-split attention) lose their host cost.

What a pass's device work depends on, and so the key of its graph: the input shapes and dtype, the cache's write
plan (`WritePlan`: tokens written, evicted and rolled, the attended length), the query's RoPE start, whether keys
are stored rotated, the addresses of the cache buffers, and the model's attention function and FFN fusion. The
text K/V must already be cached (a pass that computes them runs eagerly). Per key: the first pass runs eagerly (it
compiles and lets cuDNN/cuBLAS pick and allocate), the next one is captured, later ones replay. On replay the host
does only the cache bookkeeping (`plan`, `commit`); the graph does the rest, the cache's roll and EMA sink included.
A window_sink stream needs one key per filling chunk and two in steady state (the pass that evicts, the passes that
do not), so a minutes-long stream replays from its fourth chunk on.

Measured on an H100 (bench/RESULTS.md, session 9): no faster. At a full window the DiT is GPU-bound, so the steady
chunks replay at the eager speed, and in an 81-frame clip the four captures (20-45 ms each, with nothing queued on
the GPU) cost more than the replays save. Hence `StreamConfig.cuda_graphs` is off by default.

Outputs are identical to the eager pass (same kernels, same order; `tests/test_gpu.py`). Anything else runs
eagerly: CPU, autograd, batched or paged caches (Stream-T1 beams), passes that encode the text, and a model whose
blocks are compiled in a CUDA-graph mode (graphs do not nest).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .kv_cache import KVCache
from .wan import model as wan_model

log = logging.getLogger(__name__)


@dataclass
class _Pass:
    graph: Any                      # torch.cuda.CUDAGraph
    x: Tensor                       # static input latents [B, 16, F, h, w]
    t: Tensor                       # static timesteps [B, F]
    out: Tensor                     # static flow [B, 16, F, h, w]
    keep: tuple                     # tensors the graph reads that nothing else might keep alive (RoPE tables)


class PassGraphs:
    """Call like the model on a cached pass: `graphs(x, t, context, cache, start_frame) -> flow`.

    `max_graphs` bounds the captured passes (each holds its static inputs and output; the intermediates share one
    memory pool); past it, new keys run eagerly. `capture(fn, pool) -> (static output, graph, pool)` is the graph
    backend and `device_types` where it applies (tests pass a CPU fake that separates host and device work)."""

    def __init__(self, model, *, max_graphs: int = 16, capture: Optional[Callable] = None,
                 device_types: tuple[str, ...] = ("cuda",)):
        self.model = model
        self.max_graphs = max_graphs
        self._capture_fn = capture or _cuda_capture
        self.device_types = device_types
        self._graphs: dict[tuple, _Pass] = {}
        self._seen: set[tuple] = set()
        self._refused: set[tuple] = set()
        self._pool = None
        self.counts = dict(eager=0, captured=0, replayed=0)

    # ---- the key --------------------------------------------------------------------------------
    def key(self, x: Tensor, t: Tensor, cache: Any, start_frame: int) -> Optional[tuple]:
        """The graph key of this pass, or None where it must run eagerly. Plans the cache (host only)."""
        if type(cache) is not KVCache or x.device.type not in self.device_types or torch.is_grad_enabled() \
                or not all(cache.cross_valid):
            return None
        if not getattr(self.model, "_write_in_place", True):            # blocks compiled in a CUDA-graph mode
            return None
        fs = cache.frame_seqlen
        f = x.shape[2]
        p = cache.plan(start_frame * fs, f * fs)
        return (tuple(x.shape), x.dtype, tuple(x.stride()), tuple(t.shape), t.dtype,
                p.num_new, p.evict, p.rolled, p.local_end, cache.query_start_frame(), cache.rotated_keys,
                cache.k.data_ptr(), cache.v.data_ptr(), cache.cross_k.data_ptr(), cache.cross_v.data_ptr(),
                id(self.model.attn_fn), wan_model.FUSED_GELU)

    # ---- a pass -----------------------------------------------------------------------------------
    def __call__(self, x: Tensor, t: Tensor, context: Tensor, cache: Any, start_frame: int) -> Tensor:
        key = self.key(x, t, cache, start_frame)
        if key is None or key in self._refused:
            return self._eager(x, t, context, cache, start_frame)
        g = self._graphs.get(key)
        if g is None:
            if key not in self._seen or len(self._graphs) >= self.max_graphs:
                self._seen.add(key)
                return self._eager(x, t, context, cache, start_frame)         # warm-up: compile, pick kernels
            g = self._record(key, x, t, context, cache, start_frame)
            if g is None:
                return self._eager(x, t, context, cache, start_frame)
        else:                                                     # `key` planned the cache: the host's part
            g.x.copy_(x)
            g.t.copy_(t)
            g.graph.replay()
            cache.commit()
            self.counts["replayed"] += 1
        return g.out.clone()

    def _eager(self, x, t, context, cache, start_frame) -> Tensor:
        self.counts["eager"] += 1
        return self.model(x, t, context, cache=cache, start_frame=start_frame)

    def _record(self, key, x, t, context, cache, start_frame) -> Optional[_Pass]:
        """Capture the pass (which does not run it), then replay it once; None if the pass cannot be captured."""
        host = (cache.local_end, cache.global_end)
        sx, st = torch.empty_like(x).copy_(x), t.clone()
        try:
            out, graph, self._pool = self._capture_fn(
                lambda: self.model(sx, st, context, cache=cache, start_frame=start_frame), self._pool)
        except Exception as err:                                  # an op that cannot be captured: eager from now on
            cache.local_end, cache.global_end = host
            cache._plan = None
            self._refused.add(key)
            log.warning("DiT pass not captured as a CUDA graph (%s: %s); it runs eagerly", type(err).__name__, err)
            return None
        g = _Pass(graph, sx, st, out, tuple(self.model.rope._cache.values()))   # the RoPE tables stay alive
        self._graphs[key] = g
        self.counts["captured"] += 1
        graph.replay()                                            # capture recorded the work; now do it
        return g


def _cuda_capture(fn: Callable[[], Tensor], pool) -> tuple[Tensor, Any, Any]:
    """Capture fn() into a CUDA graph in the shared memory pool: (static output, graph, pool).

    `torch.cuda.graph` would also run `gc.collect()` and `empty_cache()` at every capture (tens of ms in a large
    process, and the allocator's cache lost); a stream needs a handful of captures, so they are made directly."""
    pool = pool if pool is not None else torch.cuda.graph_pool_handle()
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        graph.capture_begin(pool=pool)
        try:
            out = fn()
        finally:
            graph.capture_end()
    torch.cuda.current_stream().wait_stream(side)
    return out, graph, pool

"""KV cache eviction against a naive recomputation of each policy from the full history of chunks."""
import pytest
import torch

from stream_r1.config import StreamConfig
from stream_r1.kv_cache import KVCache

FS, N, D, CH = 2, 2, 4, 3          # tokens per frame, heads, head dim, frames per chunk


def _rand(g, frames):
    return torch.randn(1, frames * FS, N, D, generator=g, dtype=torch.float64)


def _simulate(cfg: StreamConfig, chunks: int, denoise_calls: int = 3):
    """Drive one layer of the cache like the sampler (noisy calls, then a clean pass per chunk).

    Returns, per chunk, what the first noisy call attended to, and the clean K/V of every chunk."""
    cache = KVCache(num_layers=1, batch=1, num_heads=N, head_dim=D, frame_seqlen=FS, cfg=cfg,
                    text_len=4, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    seen, clean = [], []
    for b in range(chunks):
        for call in range(denoise_calls + 1):
            k, v = _rand(g, CH), _rand(g, CH)
            cache.plan(b * CH * FS, CH * FS)
            ka, va = cache.update(0, k, v)
            if call == 0:
                seen.append((ka.clone(), va.clone(), k, v, cache.query_start_frame()))
            cache.commit()
        clean.append((k, v))
    return cache, seen, clean


@pytest.mark.parametrize("window,sink,source", [(9, 3, "evicted"), (12, 3, "evicted"), (6, 0, "evicted"),
                                                (9, 3, "newest"), (12, 3, "newest")])
def test_window_sink_matches_naive(window, sink, source):
    cfg = StreamConfig.stream_r1().replace(window_frames=window, sink_frames=sink, sink_ema_source=source)
    a = cfg.sink_ema_alpha
    chunks = 10
    cache, seen, clean = _simulate(cfg, chunks)
    keep = (window - sink) // CH - 1                    # finished chunks kept beside the sink
    sink_k = sink_v = None
    for b in range(chunks):
        k_now, v_now = seen[b][2], seen[b][3]
        if b * CH + CH > window:                        # this chunk evicts: EMA with the leaving (or newest) chunk
            if sink:
                src = clean[b - 1 - keep] if source == "evicted" else clean[b - 1]
                sink_k = a * sink_k + (1 - a) * src[0]
                sink_v = a * sink_v + (1 - a) * src[1]
            hist = clean[max(sink // CH if sink else 0, b - keep):b]
        else:
            hist = clean[(sink // CH if sink else 0):b]
        if b == sink // CH - 1 + 1 and sink and sink_k is None:
            sink_k, sink_v = clean[0]
        parts_k = ([sink_k] if sink and b > 0 else []) + [h[0] for h in hist] + [k_now]
        parts_v = ([sink_v] if sink and b > 0 else []) + [h[1] for h in hist] + [v_now]
        exp_k, exp_v = torch.cat(parts_k, 1), torch.cat(parts_v, 1)
        ka, va, _, _, qstart = seen[b]
        assert ka.shape == exp_k.shape, (b, ka.shape, exp_k.shape)
        assert torch.allclose(ka, exp_k, atol=1e-12) and torch.allclose(va, exp_v, atol=1e-12), b
        # relative positions: queries sit at the end of the attended window, never past it
        assert qstart == ka.shape[1] // FS - CH
        assert ka.shape[1] <= window * FS


def test_window_sink_first_eviction_and_ema_value():
    cfg = StreamConfig.stream_r1()
    cache, seen, clean = _simulate(cfg, 4)
    # chunks 0-2 fill the 9-frame window; chunk 3 is the first to evict, and chunk 1 leaves the window
    assert [s[0].shape[1] // FS for s in seen] == [3, 6, 9, 9]
    expected_sink = 0.999 * clean[0][0] + 0.001 * clean[1][0]
    assert torch.allclose(seen[3][0][:, :3 * FS], expected_sink, atol=1e-5)
    _, seen_old, clean_old = _simulate(cfg.replace(sink_ema_source="newest"), 4)
    old_sink = 0.999 * clean_old[0][0] + 0.001 * clean_old[2][0]
    assert torch.allclose(seen_old[3][0][:, :3 * FS], old_sink, atol=1e-5)


def test_longlive_keeps_exact_frame_sink():
    cfg = StreamConfig.longlive()
    chunks = 9
    cache, seen, clean = _simulate(cfg, chunks)
    for b in range(chunks):
        ka = seen[b][0]
        visible = min(b * CH + CH, cfg.window_frames)
        assert ka.shape[1] == visible * FS
        if b >= 1:
            assert torch.equal(ka[:, :3 * FS], clean[0][0])           # frame sink never changes
        if b * CH + CH > cfg.window_frames:
            tail = torch.cat([c[0] for c in clean[b - 2:b]], 1)       # the 6 most recent finished frames
            assert torch.equal(ka[:, 3 * FS:9 * FS], tail)
        assert seen[b][4] == b * CH                                   # absolute query position


def test_cache_memory_is_flat_for_long_streams():
    cfg = StreamConfig.stream_r1()
    cache, seen, _ = _simulate(cfg, 60, denoise_calls=0)
    assert cache.k.shape[2] == 9 * FS
    assert cache.frames_cached == 9 and cache.frames_seen == 180

"""The one Wan DiT: key names, RoPE, schedule and streaming-with-cache == full forward with mask."""
import math

import pytest
import torch

from stream_r1.config import StreamConfig, WanConfig
from stream_r1.kv_cache import KVCache
from stream_r1.schedule import FlowMatchSchedule
from stream_r1.wan.attention import block_causal_mask
from stream_r1.wan.model import WanModel, sinusoidal_embedding
from stream_r1.wan.rope import apply_rope, rope_angles

H, W = 32, 48            # latent 4x6 -> 2x3 patches: frame_seqlen 6 (spec §7 latent grid)


def test_real_1_3b_layout_on_meta():
    with torch.device("meta"):
        m = WanModel(WanConfig.wan_1_3b())
    sd = m.state_dict()
    assert len(sd) == 825
    assert sum(p.numel() for p in m.parameters()) == 1_418_996_800 == WanConfig().num_parameters()
    shapes = {
        "patch_embedding.weight": (1536, 16, 1, 2, 2), "text_embedding.0.weight": (1536, 4096),
        "time_projection.1.weight": (9216, 1536), "head.modulation": (1, 2, 1536), "head.head.weight": (64, 1536),
        "blocks.29.modulation": (1, 6, 1536), "blocks.0.self_attn.norm_q.weight": (1536,),
        "blocks.0.norm3.bias": (1536,), "blocks.0.cross_attn.k.weight": (1536, 1536),
        "blocks.0.ffn.0.weight": (8960, 1536), "blocks.0.ffn.2.weight": (1536, 8960),
    }
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == s, k
    assert not any("norm1" in k or "norm2" in k or "freqs" in k for k in sd)


def test_14b_and_tiny_counts():
    with torch.device("meta"):
        assert sum(p.numel() for p in WanModel(WanConfig.wan_14b()).parameters()) == 14_288_491_584
        tiny = WanModel(WanConfig.tiny())
    assert len(tiny.state_dict()) == 69
    assert sum(p.numel() for p in tiny.parameters()) == 161_536


def test_state_dict_matches_checkpoint_table():
    ckpt = pytest.importorskip("stream_r1.checkpoint")
    for cfg in (WanConfig.tiny(), WanConfig.tiny_comfy()):
        with torch.device("meta"):
            sd = WanModel(cfg).state_dict()
        assert {k: tuple(v.shape) for k, v in sd.items()} == ckpt.expected_dit_shapes(cfg)


def test_rope_split_and_positions():
    assert WanConfig().rope_split() == (44, 42, 42)
    assert WanConfig.tiny().rope_split() == (12, 10, 10)
    ang = rope_angles((44, 42, 42), range(5, 7), 3, 4)                   # [2*3*4, 64]
    assert ang.shape == (24, 64)
    # token (f=1, h=2, w=3): temporal angles at position 6, spatial at 2 and 3
    tok = ang[1 * 12 + 2 * 4 + 3]
    assert torch.allclose(tok[:22], 6 * 10000 ** (-torch.arange(0, 44, 2, dtype=torch.float64) / 44))
    assert torch.allclose(tok[22:43], 2 * 10000 ** (-torch.arange(0, 42, 2, dtype=torch.float64) / 42))
    assert torch.allclose(tok[43:], 3 * 10000 ** (-torch.arange(0, 42, 2, dtype=torch.float64) / 42))
    with pytest.raises(ValueError, match="window_sink"):
        rope_angles((44, 42, 42), range(1023, 1025), 1, 1)


def test_rope_is_interleaved_complex_rotation():
    x = torch.randn(1, 6, 2, 32, dtype=torch.float64)
    ang = rope_angles((12, 10, 10), range(0, 1), 2, 3)
    out = apply_rope(x, ang.cos()[:, None], ang.sin()[:, None])
    ref = torch.view_as_real(torch.view_as_complex(x.reshape(1, 6, 2, 16, 2)) * torch.polar(
        torch.ones_like(ang), ang)[:, None]).flatten(-2)
    assert torch.allclose(out, ref, atol=1e-12)


def test_time_embedding_cos_first():
    e = sinusoidal_embedding(8, torch.tensor([0.0, 10.0]))
    assert torch.equal(e[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0], dtype=torch.float64))
    assert math.isclose(e[1, 0].item(), math.cos(10.0)) and math.isclose(e[1, 4].item(), math.sin(10.0))


def test_schedule_warp_and_conversions():
    s = FlowMatchSchedule(5.0)
    assert s.warp([1000, 750, 500, 250]) == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)
    assert FlowMatchSchedule(3.0).warp([1000, 750, 500, 250]) == pytest.approx([1000, 900, 750, 500], abs=1e-3)
    assert float(s.sigmas[-1]) == pytest.approx(0.00498, abs=1e-5)
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    xt = s.add_noise(x0, eps, 833.3333)
    assert torch.allclose(s.x0_from_flow(xt, eps - x0, 833.3333), x0, atol=1e-6)
    t = s.sample_training_timesteps(200_000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 20 and t.max() <= 980 and abs(t.median().item() - 833) < 5


def test_unpatchify_inverts_patch_order(tiny_model):
    # the head's 64 outputs are (pt, ph, pw, C) with C fastest
    y = torch.arange(1 * 6 * 64, dtype=torch.float32).reshape(1, 6, 64)
    out = tiny_model.unpatchify(y, (1, 2, 3))                               # [1, 16, 1, 4, 6]
    assert out.shape == (1, 16, 1, 4, 6)
    # token (h=1, w=2), ph=1, pw=0, channel 5 -> pixel (3, 4)
    assert out[0, 5, 0, 3, 4] == y[0, 1 * 3 + 2, (1 * 2 + 0) * 16 + 5]


def _stream_vs_mask(model, sc: StreamConfig, F: int, mask):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, F, 4, 6, generator=g)
    t = torch.rand(1, F, generator=g) * 1000
    ctx = torch.randn(1, 17, model.cfg.text_dim, generator=g)
    with torch.no_grad():
        full = model(x, t, ctx, mask=mask)
        cache = KVCache.for_model(model, sc, batch=1, height=H, width=W)
        outs = [model(x[:, :, i:i + 3], t[:, i:i + 3], ctx, cache=cache, start_frame=i) for i in range(0, F, 3)]
    return torch.cat(outs, 2), full


@pytest.mark.parametrize("policy", ["full", "window_sink", "longlive"])
def test_streaming_equals_block_causal_forward_before_eviction(tiny_model, policy):
    F = 9                                                                   # window 9 is exactly full
    sc = StreamConfig.for_policy(policy).replace(full_cache_frames=F)
    fs = tiny_model.cfg.tokens_per_frame(H, W)
    stream, full = _stream_vs_mask(tiny_model, sc, F, block_causal_mask(F, fs, 3))
    assert (stream - full).abs().max() < 1e-5
    # and the mask matters: a bidirectional forward differs on early chunks
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1, 16, F, 4, 6, generator=g)
        t = torch.rand(1, F, generator=g) * 1000
        ctx = torch.randn(1, 17, tiny_model.cfg.text_dim, generator=g)
        bidir = tiny_model(x, t, ctx)
    assert (bidir[:, :, :3] - full[:, :, :3]).abs().max() > 1e-3


def test_longlive_eviction_equals_sink_window_mask(tiny_model):
    """Past the window, LongLive's rolling cache == a full forward with a sink + window mask."""
    F = 21
    sc = StreamConfig.longlive()                                            # window 12, sink 3
    fs = tiny_model.cfg.tokens_per_frame(H, W)
    mask = block_causal_mask(F, fs, 3, window_frames=sc.window_frames - sc.sink_frames, sink_frames=sc.sink_frames)
    stream, full = _stream_vs_mask(tiny_model, sc, F, mask)
    assert (stream - full).abs().max() < 1e-5


def test_full_policy_refuses_overflow(tiny_model):
    sc = StreamConfig.self_forcing().replace(full_cache_frames=6)
    cache = KVCache.for_model(tiny_model, sc, batch=1, height=H, width=W)
    x, ctx = torch.randn(1, 16, 3, 4, 6), torch.randn(1, 5, 32)
    with torch.no_grad():
        for i in (0, 3):
            tiny_model(x, torch.zeros(1, 3), ctx, cache=cache, start_frame=i)
        with pytest.raises(ValueError, match="window_sink"):
            tiny_model(x, torch.zeros(1, 3), ctx, cache=cache, start_frame=6)


def test_rerun_of_same_chunk_overwrites(tiny_model):
    """Denoising calls of one chunk overwrite its slots; only the last (clean) pass stays in the cache."""
    sc = StreamConfig.stream_r1()
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(1, 16, 3, 4, 6, generator=g), torch.randn(1, 16, 3, 4, 6, generator=g)
    nxt, ctx = torch.randn(1, 16, 3, 4, 6, generator=g), torch.randn(1, 9, 32, generator=g)
    t = torch.full((1, 3), 500.0)
    with torch.no_grad():
        c1 = KVCache.for_model(tiny_model, sc, batch=1, height=H, width=W)
        tiny_model(a, t, ctx, cache=c1, start_frame=0)
        tiny_model(b, t * 0, ctx, cache=c1, start_frame=0)
        o1 = tiny_model(nxt, t, ctx, cache=c1, start_frame=3)
        c2 = KVCache.for_model(tiny_model, sc, batch=1, height=H, width=W)
        tiny_model(b, t * 0, ctx, cache=c2, start_frame=0)
        o2 = tiny_model(nxt, t, ctx, cache=c2, start_frame=3)
    assert torch.equal(o1, o2)
    assert c1.frames_cached == 6 and c1.frames_seen == 6


def test_compiled_stages_stream_as_eager_without_graph_breaks():
    """compile_blocks (inductor on the CPU here): the compiled stages stream the same latents as eager, while the
    window fills and rolls, with no graph break and no compile after the first chunk's: one graph per stage, the
    key rotation's included, whose length grows 3 -> 6 -> 9 frames (it compiled once per length before)."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from stream_r1.stream import generate
    cfg = WanConfig.tiny()
    eager = WanModel(cfg, attention="sdpa").init_weights(seed=0).eval()
    comp = WanModel(cfg, attention="sdpa").init_weights(seed=0).eval().compile_blocks()
    ctx = torch.randn(1, 8, cfg.text_dim, generator=torch.Generator().manual_seed(0))
    sc = StreamConfig.stream_r1()
    ref, _ = generate(eager, ctx, sc, 15, height=32, width=48, seed=2)         # 5 chunks: the window rolls
    torch._dynamo.reset()
    counters.clear()
    out, _ = generate(comp, ctx, sc, 15, height=32, width=48, seed=2)
    assert torch.allclose(out, ref, atol=1e-4)
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 3                             # _pre, _post, _rope


def test_the_window_rotation_over_the_full_capacity_equals_the_rotation_of_the_keys_alone():
    """Compiled, the window's keys are rotated padded to the cache's capacity (one static shape while the window
    fills) and cut back: the same keys as rotating only the n cached ones, for a plain and a batched cache."""
    from stream_r1.kv_cache import KVCache
    from stream_r1.kv_pages import BatchedKV
    cfg = WanConfig.tiny()
    model = WanModel(cfg, attention="sdpa").init_weights(seed=0).eval()
    sc = StreamConfig.stream_r1()
    cache = KVCache.for_model(model, sc, batch=1, height=32, width=48)
    fs = cache.frame_seqlen
    k = torch.randn(1, 3 * fs, cfg.num_heads, cfg.head_dim, generator=torch.Generator().manual_seed(1))
    grid = (3, 32 // 16, 48 // 16)
    plain = model._rotate_window(k, cache, grid, k.device)
    model._rope_full_window = True
    for c in (cache, BatchedKV([cache])):
        assert c.capacity == sc.window_frames * fs > k.shape[1]
        torch.testing.assert_close(model._rotate_window(k, c, grid, k.device), plain, rtol=0, atol=0)

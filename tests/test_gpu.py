"""GPU checks (run on the lent GPU machine with `pytest -m gpu`; skipped without CUDA)."""
import pytest
import torch

from stream_r1.config import StreamConfig, WanConfig
from stream_r1.loaders import random_student
from stream_r1.stream import generate

pytestmark = pytest.mark.gpu


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("policy", ["window_sink", "longlive"])
def test_bf16_cuda_stream_matches_fp32_cpu(policy):
    cfg = WanConfig.tiny()
    ctx = torch.randn(1, 12, cfg.text_dim, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 15, 16, 4, 6, generator=torch.Generator().manual_seed(1))
    sc = StreamConfig.for_policy(policy).replace(denoising_steps=(1000.0,))
    cpu = random_student(cfg, seed=0)
    ref, _ = generate(cpu, ctx, sc, 15, height=32, width=48, noise=noise)
    gpu = random_student(cfg, seed=0, device="cpu").to("cuda", torch.bfloat16)
    out, _ = generate(gpu, ctx.cuda(), sc, 15, height=32, width=48, noise=noise.cuda())
    assert _rel(out.cpu(), ref) < 3e-2


def test_flash_matches_sdpa_when_installed():
    pytest.importorskip("flash_attn")
    from stream_r1.wan.attention import resolve_attention, sdpa_attention
    q, k, v = (torch.randn(1, 4680, 12, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    assert _rel(resolve_attention("flash")(q, k, v), sdpa_attention(q, k, v)) < 1e-2


def test_real_size_chunk_runs_and_is_finite():
    cfg = WanConfig.wan_1_3b()
    model = random_student(cfg, seed=0, device="cuda", dtype=torch.bfloat16)
    ctx = torch.randn(1, 512, cfg.text_dim, device="cuda", dtype=torch.bfloat16)
    lat, _ = generate(model, ctx, StreamConfig.stream_r1(), 12, height=480, width=832)
    assert lat.shape == (1, 12, 16, 60, 104) and torch.isfinite(lat).all()


def _real_chunk_inputs(seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    cfg = WanConfig.wan_1_3b()
    ctx = torch.randn(1, 512, cfg.text_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    return cfg, ctx


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_compiled_blocks_match_eager(mode):
    """Compiled stages, and the same stages replayed as CUDA graphs, give the eager stream (bf16 bounds)."""
    cfg, ctx = _real_chunk_inputs()
    model = random_student(cfg, seed=0, device="cuda", dtype=torch.bfloat16)
    sc = StreamConfig.stream_r1()
    ref, _ = generate(model, ctx, sc, 12, height=480, width=832, seed=1)
    model.compile_blocks(mode)
    out, _ = generate(model, ctx, sc, 12, height=480, width=832, seed=1)
    assert _rel(out, ref) < 2e-2


def test_cudnn_attention_matches_sdpa():
    from stream_r1.wan.attention import resolve_attention, sdpa_attention
    q, k, v = (torch.randn(1, 4680, 12, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    kk, vv = (torch.randn(1, 14040, 12, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    assert _rel(resolve_attention("cudnn")(q, kk, vv), sdpa_attention(q, kk, vv)) < 1e-2


def test_overlapped_decode_gives_identical_frames():
    from stream_r1.stream import StreamSession
    from stream_r1.vae import StreamingDecoder, VAEConfig, WanVAE
    cfg = WanConfig.tiny()
    model = random_student(cfg, seed=0, device="cuda", dtype=torch.bfloat16)
    vae = WanVAE(VAEConfig.tiny()).to("cuda", torch.bfloat16).eval()
    ctx = torch.randn(1, 8, cfg.text_dim, device="cuda", dtype=torch.bfloat16)
    outs = []
    for overlap, priority in ((False, False), (True, False), (True, True)):   # priority: the DiT on its own stream
        s = StreamSession(model, StreamConfig.stream_r1(), ctx, height=64, width=96, seed=3,
                          decoder=StreamingDecoder(vae), overlap_decode=overlap, overlap_priority=priority)
        chunks = list(s.run(5))
        outs.append((torch.cat([c.frames for c in chunks], 1), torch.cat([c.latents for c in chunks], 1)))
    for frames, latents in outs[1:]:
        assert torch.equal(frames, outs[0][0]) and torch.equal(latents, outs[0][1])


def test_flat_cost_long_stream_memory():
    cfg, ctx = _real_chunk_inputs()
    model = random_student(cfg, seed=0, device="cuda", dtype=torch.bfloat16)
    from stream_r1.stream import StreamSession
    s = StreamSession(model, StreamConfig.stream_r1(), ctx, height=480, width=832, seed=0)
    peaks = []
    for i, _ in enumerate(s.run(12)):
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated())
    assert peaks[-1] == peaks[4]          # nothing grows once the 9-frame window is full (chunk 3 on)


def test_fp8_blocks_error_against_bf16_is_small():
    from stream_r1.wan.fp8 import quantize_fp8_
    cfg, ctx = _real_chunk_inputs()
    model = random_student(cfg, seed=0, device="cuda", dtype=torch.bfloat16)
    sc = StreamConfig.stream_r1()
    ref, _ = generate(model, ctx, sc, 6, height=480, width=832, seed=1)
    quantize_fp8_(model)
    out, _ = generate(model, ctx, sc, 6, height=480, width=832, seed=1)
    rel = _rel(out, ref)
    print(f"fp8 vs bf16 relative error over 2 chunks: {rel:.4f}")
    assert rel < 0.15


def test_compiled_channels_last_decoder_state_is_compact_and_exact():
    """Inductor returned the NDHWC stream state as views of whole activations (4.5 GiB behind 1.8 GiB at 832x480,
    bench/RESULTS.md, 2026-11-22, VAE in NDHWC); with stream_r1.ops.own_tail each state tensor owns exactly its bytes, and frames match eager."""
    from stream_r1.vae import StreamingDecoder, VAEConfig, WanVAE
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig.wan21()).to("cuda", torch.bfloat16).eval().to_channels_last()
    lat = torch.randn(1, 16, 3, 30, 52, device="cuda")
    with torch.no_grad():
        eager = StreamingDecoder(vae)
        ref = [eager.decode(lat), eager.decode(lat)]
        vae.decoder.compile()
        dec = StreamingDecoder(vae)
        got = [dec.decode(lat), dec.decode(lat)]
    for t in dec.cache:
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    assert all(_rel(g, r) < 2e-2 for g, r in zip(got, ref))


def test_fused_gelu_ffn_matches_the_module():
    """The cuBLASLt bias+GELU epilogue path of the block FFN against nn.Sequential (GELU tanh), real 1.3B sizes."""
    from stream_r1.wan.model import ffn
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(1536, 8960), torch.nn.GELU(approximate="tanh"),
                              torch.nn.Linear(8960, 1536)).to("cuda", torch.bfloat16)
    h = torch.randn(1, 4680, 1536, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        fused, ref = ffn(mlp, h), mlp(h)
        exact = mlp.float()(h.float())
    assert _rel(fused, exact) < 1e-2 and abs(_rel(fused, exact) - _rel(ref, exact)) < 5e-3


def test_split_kv_attention_matches_cudnn_at_stream_shapes():
    from stream_r1.wan.attention import attention_with_lse, resolve_attention, sdpa_attention, wave_plan
    q = torch.randn(1, 4680, 12, 128, device="cuda", dtype=torch.bfloat16)
    kk, vv = (torch.randn(1, 14040, 12, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ref = sdpa_attention(q, kk, vv)
    out, lse = attention_with_lse(q, kk, vv)
    assert _rel(out, ref) < 1e-2 and lse.shape == (1, 12, 4680) and torch.isfinite(lse).all()
    for backend in ("split", "auto", "cudnn"):
        assert _rel(resolve_attention(backend)(q, kk, vv), ref) < 1e-2
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert sms != 132 or wave_plan(4680, 14040, 12, 1, sms) == (4224, 2)
    from stream_r1.wan.attention import split_kv_attention
    for s, main in ((2, 0), (3, 0), (2, 4224), (3, 4224)):
        assert _rel(split_kv_attention(q, kk, vv, splits=s, main_rows=main), ref) < 1e-2


def test_wave_split_stream_matches_plain_cudnn():
    """The wave split (on 132 SMs: 4224 rows whole, 456 over 2 key ranges) over a real-size stream whose window
    fills (Lk 4680, 9360, 14040): the plain cuDNN stream within bf16 bounds."""
    cfg, ctx = _real_chunk_inputs()
    model = random_student(cfg, seed=0, device="cuda", dtype=torch.bfloat16)
    sc = StreamConfig.stream_r1()
    model.set_attention("cudnn")
    ref, _ = generate(model, ctx, sc, 12, height=480, width=832, seed=1)
    model.set_attention("split")
    out, _ = generate(model, ctx, sc, 12, height=480, width=832, seed=1)
    assert _rel(out, ref) < 2e-2


def _graph_stream(model, ctx, sc, chunks, height, width):
    from stream_r1.stream import StreamSession
    sess = StreamSession(model, sc, ctx, height=height, width=width, seed=1)
    with torch.no_grad():
        lat = torch.cat([c.latents for c in sess.run(chunks)], 1)
    return lat, sess


@pytest.mark.parametrize("rotate_once", [False, True])
def test_cuda_graph_passes_give_the_eager_stream_exactly(rotate_once):
    """Captured and replayed passes (window filling, then evicting with the EMA sink) run the eager kernels: the
    same latents and cache, bit for bit."""
    cfg = WanConfig.tiny()
    model = random_student(cfg, seed=0, device="cuda", dtype=torch.bfloat16)
    ctx = torch.randn(1, 12, cfg.text_dim, device="cuda", dtype=torch.bfloat16)
    sc = StreamConfig.stream_r1().replace(rotate_keys_once=rotate_once)
    ref, ref_sess = _graph_stream(model, ctx, sc, 7, 32, 48)
    out, sess = _graph_stream(model, ctx, sc.replace(cuda_graphs=True), 7, 32, 48)
    assert ref_sess.graphs is None and sess.graphs.counts == dict(eager=5, captured=4, replayed=26)
    assert torch.equal(out, ref)
    assert torch.equal(sess.cache.k, ref_sess.cache.k) and torch.equal(sess.cache.v, ref_sess.cache.v)


@pytest.mark.parametrize("attention", ["cudnn", "split"])
def test_cuda_graph_passes_of_the_compiled_real_size_model(attention):
    """1.3B at 832x480, compiled stages, 5 chunks (the first eviction is captured): graphs equal the eager passes."""
    cfg, ctx = _real_chunk_inputs()
    model = random_student(cfg, seed=0, device="cuda", dtype=torch.bfloat16, attention=attention)
    model.compile_blocks()
    sc = StreamConfig.stream_r1()
    ref, _ = _graph_stream(model, ctx, sc, 5, 480, 832)
    out, sess = _graph_stream(model, ctx, sc.replace(cuda_graphs=True), 5, 480, 832)
    assert sess.graphs.counts["captured"] == 4 and sess.graphs.counts["replayed"] == 25 - 5 - 4
    assert _rel(out, ref) < 1e-3


def test_subpixel_upsample_compiled_matches_the_nearest_conv():
    """The last upsample of the real decoder (192 -> 96 channels, 240x416 -> 480x832, 4 frames), bf16 NHWC, compiled:
    the sub-pixel form against nearest x2 + the 3x3 conv (bf16 bounds)."""
    from stream_r1.vae import Resample
    r = Resample(192, "upsample2d").to("cuda", torch.bfloat16)
    r.resample[1].to(memory_format=torch.channels_last)
    x = torch.randn(4, 192, 240, 416, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = r.resample(x)
        out = torch.compile(r._upsample)(x)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert _rel(out, ref) < 1e-2

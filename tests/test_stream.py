"""The chunk loop: schedule use, determinism, interruption, prompt switches, flat cost."""
import pytest
import torch

from stream_r1.config import StreamConfig
from stream_r1.kv_cache import KVCache
from stream_r1.schedule import FlowMatchSchedule
from stream_r1.stream import StreamSession, generate, latent_frames_for_seconds
from helpers import tiny_context as _ctx

H, W = 32, 48




def test_loop_matches_a_hand_written_sampler(tiny_model):
    """4 warped steps with fresh re-noising, then the clean context pass at t=0, chunk after chunk."""
    sc = StreamConfig.stream_r1()
    ctx = _ctx()
    lat, _ = generate(tiny_model, ctx, sc, 12, height=H, width=W, seed=7)

    sch = FlowMatchSchedule(5.0)
    ts = sch.warp([1000, 750, 500, 250])
    g = torch.Generator().manual_seed(7)
    cache = KVCache.for_model(tiny_model, sc, batch=1, height=H, width=W)
    out = []
    with torch.no_grad():
        for b in range(4):
            x = torch.randn(1, 3, 16, 4, 6, generator=g)                      # [B, f, C, h, w]
            for k, t in enumerate(ts):
                v = tiny_model(x.permute(0, 2, 1, 3, 4), torch.full((1, 3), t), ctx, cache=cache,
                               start_frame=3 * b).permute(0, 2, 1, 3, 4)
                x0 = (x.double() - float(sch.sigma(t)) * v.double()).float()
                if k < 3:
                    s = float(sch.sigma(ts[k + 1]))
                    x = (1 - s) * x0 + s * torch.randn(x0.shape, generator=g)
            tiny_model(x0.permute(0, 2, 1, 3, 4), torch.zeros(1, 3), ctx, cache=cache, start_frame=3 * b)
            out.append(x0)
    assert torch.equal(lat, torch.cat(out, 1))


def test_latents_ready_comes_after_the_denoising_steps_and_before_the_clean_cache_pass(tiny_model):
    """`next_chunk(latents_ready=...)`, where the overlapped path records its decode's event: called once a chunk,
    with the chunk's final latents already computed and before the context pass (t = 0) that writes the cache."""
    sess = StreamSession(tiny_model, StreamConfig.stream_r1(), _ctx(), height=H, width=W, seed=3)
    calls, real = [], sess._denoise
    sess._denoise = lambda noisy, t, *a, **k: calls.append(float(t)) or real(noisy, t, *a, **k)
    for _ in range(2):
        chunk = sess.next_chunk(decode=False, latents_ready=lambda: calls.append("ready"))
    assert len(calls) == 12 and calls[4:6] == ["ready", 0.0] and calls[10:12] == ["ready", 0.0]   # 4 steps, ready, pass
    assert all(isinstance(t, float) and t > 0 for t in calls[:4] + calls[6:10])
    ref = StreamSession(tiny_model, StreamConfig.stream_r1(), _ctx(), height=H, width=W, seed=3)
    ref.next_chunk(decode=False)
    assert torch.equal(chunk.latents, ref.next_chunk(decode=False).latents)     # the hook changes nothing


def test_same_seed_same_video_different_seed_differs(tiny_model):
    sc = StreamConfig.stream_r1()
    a, _ = generate(tiny_model, _ctx(), sc, 9, height=H, width=W, seed=1)
    b, _ = generate(tiny_model, _ctx(), sc, 9, height=H, width=W, seed=1)
    c, _ = generate(tiny_model, _ctx(), sc, 9, height=H, width=W, seed=2)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-2


def test_given_noise_makes_one_step_output_seed_free(tiny_model):
    sc = StreamConfig.stream_r1().replace(denoising_steps=(1000.0,))
    noise = torch.randn(1, 9, 16, 4, 6, generator=torch.Generator().manual_seed(3))
    a, _ = generate(tiny_model, _ctx(), sc, 9, height=H, width=W, seed=1, noise=noise)
    b, _ = generate(tiny_model, _ctx(), sc, 9, height=H, width=W, seed=2, noise=noise)
    assert torch.equal(a, b)
    # one step from t=1000 (sigma 1): x0 = noise - v for chunk 0
    with torch.no_grad():
        v = tiny_model(noise[:, :3].permute(0, 2, 1, 3, 4), torch.full((1, 3), 1000.0), _ctx())
    assert torch.allclose(a[:, :3], noise[:, :3] - v.permute(0, 2, 1, 3, 4), atol=1e-6)


def test_bad_noise_shape_is_explained(tiny_model):
    with pytest.raises(ValueError, match=r"noise must be \[B, F, 16, 4, 6\]"):
        StreamSession(tiny_model, StreamConfig(), _ctx(), height=H, width=W, noise=torch.zeros(1, 3, 16, 8, 8))


def test_resolution_must_be_multiple_of_16(tiny_model):
    with pytest.raises(ValueError, match="multiple of 16.*try 48"):
        StreamSession(tiny_model, StreamConfig(), _ctx(), height=32, width=50)


def test_interrupt_between_chunks(tiny_model):
    sess = StreamSession(tiny_model, StreamConfig(), _ctx(), height=H, width=W)
    calls = []
    chunks = list(sess.run(10, should_stop=lambda: len(calls) >= 2, on_chunk=calls.append))
    assert len(chunks) == 2 and sess.interrupted and sess.chunk_index == 2


def test_prompt_switch_changes_only_later_chunks(tiny_model):
    sc = StreamConfig.stream_r1()
    a, _ = generate(tiny_model, _ctx(0), sc, 12, height=H, width=W, seed=4)
    sess = StreamSession(tiny_model, sc, _ctx(0), height=H, width=W, seed=4)
    b = torch.cat([c.latents for c in sess.run(4, prompt_at=lambda i: _ctx(1) if i == 2 else None)], 1)
    assert torch.equal(a[:, :6], b[:, :6])
    assert (a[:, 6:] - b[:, 6:]).abs().mean() > 1e-3


def test_unbounded_stream_has_flat_cache(tiny_model):
    sess = StreamSession(tiny_model, StreamConfig.stream_r1(), _ctx(), height=H, width=W)
    nbytes = sess.cache.nbytes()
    for c in sess.run(15):
        assert torch.isfinite(c.latents).all()
    assert sess.cache.nbytes() == nbytes and sess.cache.frames_cached == 9 and sess.frames_done == 45


def test_seconds_to_latent_frames():
    assert latent_frames_for_seconds(5) == 21          # 81 video frames
    assert latent_frames_for_seconds(30) == 120        # 477 frames, as the reference's 30 s clips
    assert latent_frames_for_seconds(0.1) == 3

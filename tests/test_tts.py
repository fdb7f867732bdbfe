"""Stream-T1 test-time search (stream_r1.tts): parity with plain streaming, reward-driven choice, bounded memory,
non-aliasing forks, noise propagation, memory sinking, output delay, batched candidates, copy-on-write pages."""
import math

import pytest
import torch

from stream_r1.config import StreamConfig
from stream_r1.stream import StreamSession
from stream_r1.tts import BrightnessReward, StreamT1, T1Config, fork_decoder, generate_t1, mix_noise
from stream_r1.vae import StreamingDecoder, VAEConfig, WanVAE
from helpers import record_batch_sizes
from helpers import tiny_context as _ctx

H, W = 32, 48






def _session(model, vae, sc, seed=5):
    return StreamSession(model, sc, _ctx(), height=H, width=W, seed=seed, decoder=StreamingDecoder(vae))


def _plain(model, vae, sc, chunks, seed=5):
    s = _session(model, vae, sc, seed)
    out = list(s.run(chunks))
    return torch.cat([c.latents for c in out], 1), torch.cat([c.frames for c in out], 1)


@pytest.mark.parametrize("policy", ["window_sink", "longlive"])
def test_width_one_rho_zero_no_sinking_is_plain_streaming(tiny_model, vae, policy):
    sc = StreamConfig.for_policy(policy)
    lat0, vid0 = _plain(tiny_model, vae, sc, 5)
    sess = _session(tiny_model, vae, sc)
    lat, vid, t1 = generate_t1(sess, BrightnessReward(), 15, T1Config(beams=1, children=1, rho=0.0, sinking=False))
    assert torch.equal(lat, lat0) and torch.equal(vid, vid0)
    assert t1.peak_live_caches == 1                          # no fork at width 1
    nxt = sess.next_chunk()                                   # the session continues the same stream
    s2 = _session(tiny_model, vae, sc)
    ref = list(s2.run(6))[-1]
    assert torch.equal(nxt.latents, ref.latents) and torch.equal(nxt.frames, ref.frames)


def _brightness(v):
    return float(v.mean())


@pytest.mark.parametrize("beams,children", [(1, 4), (2, 2)])
def test_reward_steers_the_search(tiny_model, vae, beams, children):
    """A brightness reward makes the search output brighter video than plain streaming (same seeds), and a
    darkness reward darker than the brightness one. The tiny random VAE varies little, so the margins are small
    but systematic; with beams = 1 chunk 0 (pure selection among candidates incl. the plain one) is ordered up to
    the rounding of the batched decode (with beams > 1 the emitted chunk 0 is the one of the lineage that wins
    later, which need not be the best first chunk)."""
    sc = StreamConfig.stream_r1()
    cfg = T1Config(beams=beams, children=children)
    seeds = (5, 6, 7)
    plain = [_plain(tiny_model, vae, sc, 4, seed=s)[1] for s in seeds]
    up = [generate_t1(_session(tiny_model, vae, sc, s), BrightnessReward(), 12, cfg)[1] for s in seeds]
    down = [generate_t1(_session(tiny_model, vae, sc, s), BrightnessReward(sign=-1.0), 12, cfg)[1] for s in seeds]
    for p, u, d in zip(plain, up, down):
        assert _brightness(u) > _brightness(p)
        tol = 1e-6                      # candidates are decoded as one batch: float rounding differs from B = 1
        if beams == 1:
            assert _brightness(d[:, :9]) <= _brightness(p[:, :9]) + tol <= _brightness(u[:, :9]) + 2 * tol
    assert sum(map(_brightness, up)) > sum(map(_brightness, down))


def test_live_pages_bounded_by_beams_and_outputs_complete(tiny_model, vae):
    """Memory is bounded by the beam width: the survivors' window pages (sink and appended segments included)
    plus one new page and at most one copied page per candidate."""
    sc = StreamConfig.longlive()
    for beams in (1, 2, 3):
        sess = _session(tiny_model, vae, sc)
        cfg = T1Config(beams=beams, children=2, max_delay=2)
        t1 = StreamT1(sess, BrightnessReward(), cfg)
        window_pages = (sc.cache_frames + cfg.max_sink_frames - sc.sink_frames) // sc.frames_per_block
        seen = []
        for c in t1.run(6):
            seen.append(c.index)
            assert t1.pool.peak_pages <= beams * window_pages + 2 * beams * cfg.children
            if beams == 1:                                    # greedy: live, one chunk at a time
                assert c.index == t1.log[-1]["chunk"]
            else:                                             # bounded delay
                assert t1.log[-1]["chunk"] - c.index <= cfg.max_delay or len(t1.log) == 6
        assert seen == list(range(6))
        assert t1.peak_live_caches > 1 and t1.pool.peak_pages >= sc.cache_frames // sc.frames_per_block
        assert all(len(b.ring) <= cfg.window_chunks for b in t1.beams)


def test_long_reward_window_slides(tiny_model, vae):
    sc = StreamConfig.stream_r1()
    seen = []

    class Probe(BrightnessReward):
        def score(self, frames, prompts):
            seen.append(frames.shape[1])
            return super().score(frames, prompts)

    generate_t1(_session(tiny_model, vae, sc), Probe(), 18, T1Config(beams=1, children=1, window_chunks=2),
                short_reward=BrightnessReward())
    assert seen == [9, 21, 24, 24, 24, 24]                   # 9 + 12, then the last 2 chunks only


def test_fork_does_not_alias(tiny_model, vae):
    sc = StreamConfig.longlive()
    sess = _session(tiny_model, vae, sc)
    list(sess.run(2))
    c = sess.cache
    f = c.fork()
    k0, v0, ck0 = c.k[:, :, :c.local_end].clone(), c.v[:, :, :c.local_end].clone(), c.cross_k.clone()
    assert f.k.data_ptr() != c.k.data_ptr() and f.cross_k.data_ptr() != c.cross_k.data_ptr()
    assert torch.equal(f.k[:, :, :f.local_end], k0)
    dec = fork_decoder(sess.decoder)
    state = sess.branch_state()
    state.update(cache=f, decoder=dec, generator=torch.Generator().manual_seed(9), _pieces=list(sess._pieces),
                 _sink_pieces=list(sess._sink_pieces))
    ref_dec = [t.clone() if t is not None else None for t in sess.decoder.cache]
    with sess.branch(state):
        sess.next_chunk()
        sess.next_chunk()                                     # rolls the window of the fork
    assert state["chunk_index"] == 4 and sess.chunk_index == 2
    assert torch.equal(c.k[:, :, :c.local_end], k0) and torch.equal(c.v[:, :, :c.local_end], v0)
    assert torch.equal(c.cross_k, ck0) and c.global_end == 6 * c.frame_seqlen
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(sess.decoder.cache, ref_dec))
    assert f.local_end == 12 * f.frame_seqlen and c.local_end == 6 * c.frame_seqlen
    f.k.fill_(7.0)
    assert torch.equal(c.k[:, :, :c.local_end], k0)


def test_short_weight_ramp_is_the_reference_sequence():
    """a_b = min(3b / (F - 3), 0.4) (spec-stream-t1 §3, stream_t1.py `_compute_hybrid_score`), exact fractions."""
    cfg = T1Config()
    seq = lambda f, n: [cfg.short_weight(b, f, 3) for b in range(n)]      # noqa: E731
    assert seq(21, 7) == [0.0, 3 / 18, 6 / 18, 0.4, 0.4, 0.4, 0.4]           # F = 21 (5 s): 0, 1/6, 1/3, then 0.4
    f120 = seq(120, 18)
    assert f120[:16] == [3 * b / 117 for b in range(16)] and f120[15] < 0.4   # 45/117 = 0.385 at b = 15
    assert f120[16:] == [0.4, 0.4]                                           # reaches 0.4 at b = 16
    assert seq(9, 3) == [0.0, 0.4, 0.4]                                      # F = 9: 3/6 = 0.5 is capped at b = 1
    assert seq(3, 1) == [0.4]                                                # one chunk: unused (L alone)
    assert T1Config(short_weight_max=0.25).short_weight(2, 21, 3) == 0.25   # the cap is short_weight_max


def test_search_ramps_over_the_searched_clip(tiny_model, vae):
    """run(num_chunks) sets F = num_chunks x frames_per_block (the clip), cfg.ramp_frames overrides it, and the
    logged score of every later chunk is a_b S + (1 - a_b) L with that a_b."""
    sc = StreamConfig.stream_r1()
    for cfg, frames in [(T1Config(beams=1, children=2), 12), (T1Config(beams=1, children=2, ramp_frames=21), 21)]:
        _, _, t1 = generate_t1(_session(tiny_model, vae, sc), BrightnessReward(), 12, cfg)
        assert t1.ramp_frames == frames
        for rec in t1.log:
            a = cfg.short_weight(rec["chunk"], frames, sc.frames_per_block)
            for c in rec["candidates"]:
                want = c["long"] if rec["chunk"] == 0 else a * c["short"] + (1 - a) * c["long"]
                assert c["score"] == want


def test_noise_mix_is_variance_preserving_and_exact_at_zero():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200_000, generator=g), torch.randn(200_000, generator=g)
    assert mix_noise(a, b, 0.0) is b and mix_noise(None, b, -0.1) is b
    m = mix_noise(a, b, -0.1)
    assert abs(float(m.std()) - 1) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([a, m]))[0, 1]) + 0.1) < 0.01


def test_children_draw_fresh_independent_noise(tiny_model, vae):
    """No seed reuse: child 0 continues its parent's generator, so its eps is new; children differ."""
    sc = StreamConfig.stream_r1()
    sess = _session(tiny_model, vae, sc)
    t1 = StreamT1(sess, BrightnessReward(), T1Config(beams=1, children=3, rho=-0.1))
    t1.step()
    t1.adopt()
    n0 = t1.beams[0].noise
    t1.step()
    n1 = t1.beams[0].noise
    eps = (n1 - (-0.1) * n0) / math.sqrt(1 - 0.01)
    assert abs(float(torch.corrcoef(torch.stack([eps.flatten(), n0.flatten()]))[0, 1])) < 0.1
    assert 0.8 < float(n1.std()) < 1.2
    scores = [c["score"] for c in t1.log[-1]["candidates"]]
    assert len(set(scores)) == 3


def test_sinking_defaults_and_policy_guard(tiny_model, vae):
    assert StreamT1(_session(tiny_model, vae, StreamConfig.longlive()), BrightnessReward()).sinking
    assert not StreamT1(_session(tiny_model, vae, StreamConfig.stream_r1()), BrightnessReward()).sinking
    with pytest.raises(ValueError):
        StreamT1(_session(tiny_model, vae, StreamConfig.stream_r1()), BrightnessReward(), T1Config(sinking=True))


def test_sinking_append_grows_the_sink_up_to_the_cap(tiny_model, vae):
    sc = StreamConfig.longlive()
    sess = _session(tiny_model, vae, sc)
    cfg = T1Config(beams=1, children=1, short_threshold=-1e9, long_threshold=-1e9, max_sink_frames=9)
    t1 = StreamT1(sess, BrightnessReward(), cfg)
    out = list(t1.run(8))
    c = sess.cache
    fs = c.frame_seqlen
    ev = [r.get("evicted") for r in t1.log]
    assert ev[:4] == [None] * 4                              # window 12: chunk 4 is the first that does not fit
    assert ev[4:6] == [["append"], ["append"]]               # chunks 1, 2 become sink segments
    assert ev[6:] == [["ema"]] * 2                           # sink full (3 + 3 + 3 = 9): EMA fallback
    assert c.sink_tokens == 9 * fs and c.capacity == 18 * fs and c.local_end == 18 * fs
    assert [s for s, _ in t1.beams[0].sink_segments] == [0, 3, 6]
    assert len(out) == 8


def test_sinking_routes_change_the_stream_only_when_gated(tiny_model, vae):
    sc = StreamConfig.longlive()
    base = T1Config(beams=1, children=1, rho=0.0)
    lat0, _ = _plain(tiny_model, vae, sc, 6)
    never = base.replace(short_threshold=1e9)                 # every route DISCARD: plain LongLive eviction
    lat1, _, _ = generate_t1(_session(tiny_model, vae, sc), BrightnessReward(), 18, never)
    assert torch.equal(lat0, lat1)
    ema = base.replace(short_threshold=-1e9, long_threshold=1e9, sink_alpha=0.5)
    lat2, _, t1 = generate_t1(_session(tiny_model, vae, sc), BrightnessReward(), 18, ema)
    assert [r.get("evicted") for r in t1.log][4:] == [["ema"]] * 2
    assert torch.equal(lat2[:, :12], lat0[:, :12]) and not torch.equal(lat2[:, 12:], lat0[:, 12:])


def test_ema_rotation_matches_rope_at_target_position(tiny_model):
    """Rotating keys stored at frame p by (q - p) frames equals storing them at frame q."""
    from stream_r1.wan.rope import RopeTable, apply_rope
    sess = StreamSession(tiny_model, StreamConfig.longlive(), _ctx(), height=H, width=W, seed=0,
                         decoder=StreamingDecoder(WanVAE(VAEConfig.tiny())))
    t1 = StreamT1(sess, BrightnessReward())
    mc = tiny_model.cfg
    x = torch.randn(1, 3 * 6, mc.num_heads, mc.head_dim)
    rt = RopeTable(mc.rope_split(), mc.rope_positions)
    at = lambda s: apply_rope(x, *rt.get(s, 3, 2, 3, torch.device("cpu")))
    got = t1._rotate_frames(at(7)[None], 2 - 7)[0]
    assert torch.allclose(got, at(2), atol=1e-5)


def _rows_per_call(model):
    rows = []
    handle = model.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    return rows, handle


@pytest.mark.parametrize("policy", ["window_sink", "longlive"])
def test_batched_candidates_match_one_at_a_time(tiny_model, vae, policy):
    """All candidates of a chunk go through the DiT as the rows of one call per step (5 calls per chunk: 4 steps
    + the context pass), and give the one-at-a-time search's result (fp32, tight tolerance; the routes of memory
    sinking included)."""
    sc = StreamConfig.for_policy(policy)
    cfg = T1Config(beams=2, children=2, short_threshold=-1e9, long_threshold=-0.05, max_sink_frames=9)
    rows, handle = _rows_per_call(tiny_model)
    try:
        lat, vid, t1 = generate_t1(_session(tiny_model, vae, sc), BrightnessReward(), 21, cfg)
    finally:
        handle.remove()
    assert rows == [4] * 5 * 7
    lat1, vid1, t1s = generate_t1(_session(tiny_model, vae, sc), BrightnessReward(), 21,
                                  cfg.replace(candidates_per_call=1))
    assert torch.allclose(lat, lat1, atol=1e-5, rtol=1e-5) and torch.allclose(vid, vid1, atol=1e-5, rtol=1e-5)
    assert [r["kept"] for r in t1.log] == [r["kept"] for r in t1s.log]
    assert [r.get("evicted") for r in t1.log] == [r.get("evicted") for r in t1s.log]
    if policy == "longlive":
        assert any(r.get("evicted") == ["append", "append"] for r in t1.log)


def test_decode_rows_split_the_batched_decode_without_changing_the_video(tiny_model, vae, monkeypatch):
    """decode_rows caps the candidates of one batched VAE decode (1 = one at a time, the default; 0 = all 4 of a
    2 x 2 search): the decodes' batch sizes follow it and the video stays the same."""
    sizes = record_batch_sizes(monkeypatch, StreamingDecoder, "decode")
    cfg = T1Config(beams=2, children=2)
    sc = StreamConfig.for_policy("window_sink")
    out = {}
    for rows in (0, 1, 3):
        sizes.clear()
        lat, vid, t1 = generate_t1(_session(tiny_model, vae, sc), BrightnessReward(), 21, cfg.replace(decode_rows=rows))
        out[rows] = (lat, vid, [r["kept"] for r in t1.log], list(sizes))
    assert set(out[0][3]) == {4} and set(out[1][3]) == {1} and set(out[3][3]) == {3, 1}
    assert len(out[1][3]) == 4 * len(out[0][3]) and out[3][3].count(3) == out[3][3].count(1) == len(out[0][3])
    for rows in (1, 3):
        assert torch.equal(out[rows][0], out[0][0]) and out[rows][2] == out[0][2]
        assert torch.allclose(out[rows][1], out[0][1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="decode_rows"):
        T1Config(decode_rows=-1)


@pytest.mark.parametrize("policy", ["window_sink", "longlive"])
def test_cow_pages_equal_the_copying_fork(tiny_model, vae, policy):
    sc = StreamConfig.for_policy(policy)
    cfg = T1Config(beams=2, children=2, short_threshold=-1e9, long_threshold=-0.05, max_sink_frames=9)
    lat, vid, t1 = generate_t1(_session(tiny_model, vae, sc), BrightnessReward(), 21, cfg)
    lat1, vid1, t1c = generate_t1(_session(tiny_model, vae, sc), BrightnessReward(), 21, cfg.replace(cow_pages=False))
    assert torch.equal(lat, lat1) and torch.equal(vid, vid1)
    assert t1c.pool is None and t1.pool.peak_pages > 0
    assert type(t1.session.cache).__name__ == "KVCache"                  # the session continues contiguous


def test_width_one_batched_path_is_plain_streaming_with_pages(tiny_model, vae):
    """The paged cache and the batched sampler with one row reproduce plain streaming bit for bit (window_sink:
    sink EMA on pages)."""
    sc = StreamConfig.stream_r1()
    lat0, vid0 = _plain(tiny_model, vae, sc, 6)
    rows, handle = _rows_per_call(tiny_model)
    try:
        lat, vid, t1 = generate_t1(_session(tiny_model, vae, sc), BrightnessReward(), 18,
                                   T1Config(beams=1, children=1, rho=0.0, sinking=False))
    finally:
        handle.remove()
    assert rows == [1] * 5 * 6 and t1.pool is not None
    assert torch.equal(lat, lat0) and torch.equal(vid, vid0)


def test_cost_estimate_worked_numbers():
    """1.3B at 832x480 in bf16: a page = 3 frames x 1560 tokens x 1536 x 30 layers x K+V x 2 B = 862,617,600 B."""
    from stream_r1.tts import t1_cost
    c = t1_cost()
    assert c.page_bytes == 862_617_600 and c.plain_kv_bytes == 3 * c.page_bytes
    assert c.candidates == 4 and c.dit_multiplier == 4.0 and c.delay_chunks == 2
    assert c.kv_bytes_bound == (2 * 3 + 2 * 4) * c.page_bytes                # beams x window pages + 2 per candidate
    ll = t1_cost(T1Config(beams=1, children=4), StreamConfig.longlive())
    assert ll.delay_chunks == 0 and ll.kv_bytes_bound == (8 + 8) * c.page_bytes   # window 12 + sink growth 12 frames
    assert "output live" in ll.summary()


def test_candidates_decode_as_one_batch_like_one_at_a_time(tiny_model, vae):
    """next_chunks decodes all lineages in one batched VAE call; frames and each lineage's decoder state equal
    separate decodes (up to float rounding), over several chunks."""
    import copy

    from stream_r1.vae import StreamingDecoder

    sc = StreamConfig.stream_r1()
    sess = _session(tiny_model, vae, sc, 3)
    states = []
    for i in range(3):
        st = sess.branch_state()
        st = {**st, "cache": st["cache"].clone(), "decoder": StreamingDecoder(vae),
              "generator": torch.Generator().manual_seed(10 + i)}
        states.append(st)
    ref = copy.deepcopy([{"decoder": s["decoder"]} for s in states])
    for chunk in range(3):
        noises = [torch.randn(1, 3, 16, sess.lat_h, sess.lat_w, generator=torch.Generator().manual_seed(chunk * 7 + i))
                  for i in range(3)]
        got = sess.next_chunks(states, noises)
        for i, c in enumerate(got):
            want = ref[i]["decoder"].decode(c.latents.permute(0, 2, 1, 3, 4))            # [1, 3, T, H, W]
            want = (want.float().clamp(-1, 1) * 0.5 + 0.5).permute(0, 2, 1, 3, 4)
            torch.testing.assert_close(c.frames, want, rtol=1e-5, atol=1e-5)
            assert states[i]["decoder"].latent_frames == ref[i]["decoder"].latent_frames
            for a, b in zip(states[i]["decoder"].cache, ref[i]["decoder"].cache):
                assert (a is None) == (b is None)
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)     # inner activations: larger values

"""Shapes-world training pipeline: recipes, tokenizer + tiny umT5, clip bank, pretraining methods, ODE pairs,
mixed precision without FSDP, reward-weight normalisation, and the bundle (assembly, loader, CLI default)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from einops import rearrange

from stream_r1.config import WanConfig
from training.config import TrainConfig

from helpers import TINY_ROLLOUT, TINY_WORLD, record_batch_sizes
from helpers import run_training as _run


def test_shapes_recipes_validate_and_chain():
    from training import recipes

    names = ["shapes_vae", "shapes_teacher", "shapes_reward", "shapes_ode_init", "shapes_dmd", "shapes_stream_r1"]
    cfgs = {n: recipes.get_recipe(n) for n in names}
    for c in cfgs.values():
        c.validate(1)
    out = {n: Path(c.output_dir) for n, c in cfgs.items()}
    # every stage reads what the stage before it writes
    assert Path(cfgs["shapes_teacher"].model.vae) == out["shapes_vae"] / "vae.safetensors"
    assert Path(cfgs["shapes_ode_init"].model.teacher) == out["shapes_teacher"] / "teacher.safetensors"
    assert Path(cfgs["shapes_ode_init"].text.encoder) == out["shapes_teacher"] / "umt5.safetensors"
    assert Path(cfgs["shapes_dmd"].model.student) == out["shapes_ode_init"] / "exports" / "student_latest.safetensors"
    assert Path(cfgs["shapes_stream_r1"].reward.path) == out["shapes_reward"] / "reward"
    # the baseline differs from Stream-R1 only by the reward weighting
    a, b = cfgs["shapes_dmd"].to_dict(), cfgs["shapes_stream_r1"].to_dict()
    diff = {k for k in a if a[k] != b[k]}
    assert diff == {"name", "output_dir", "reward"}
    # the rollout matches the clips: 45 frames -> 12 latent frames at 96x96
    w, r = cfgs["shapes_dmd"].world, cfgs["shapes_dmd"].rollout
    assert (r.height, r.width, r.latent_frames) == (w.height, w.width, (w.frames - 1) // 4 + 1)


def test_pretrain_validation_names_the_fix():
    cfg = TrainConfig(method="vae")
    cfg.world.frames = 44
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        cfg.validate(1)


def test_tokenizer_is_deterministic_and_knows_every_word():
    from stream_r1.shapes import BACKGROUNDS, COLORS, MOTIONS, SHAPES
    from stream_r1.text_encoder import Tokenizer
    from training.shapes.text import build_tokenizer

    a, b = build_tokenizer(0), build_tokenizer(0)
    assert a == b
    tok = Tokenizer(a)
    unk = tok.sp.unk_id()
    for name in (*COLORS, *BACKGROUNDS, *SHAPES, *MOTIONS):
        assert unk not in tok.sp.encode(name), name
    assert unk in tok.sp.encode("a pink blob")


def test_text_encoder_file_round_trip_and_truncated_forward():
    from stream_r1.text_encoder import Tokenizer, load_text_encoder
    from training.config import PretrainConfig
    from training.shapes.text import build_tokenizer, encode_tokens, new_text_encoder, save_text_encoder

    spiece = build_tokenizer()
    tok = Tokenizer(spiece)
    model = new_text_encoder(PretrainConfig(), tok.sp.get_piece_size(), seed=3).eval()
    prompts = ["a red circle moving right on a black background", "a yellow star bouncing on a dark blue gradient "
               "background", ""]
    ids, mask = tok(prompts)
    with torch.no_grad():
        short = encode_tokens(model, ids, mask)                                       # [3, L, 64]
        full = model(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
    n = short.shape[1]
    assert n == int(mask.sum(1).max()) < 512
    torch.testing.assert_close(short, full[:, :n], rtol=1e-5, atol=1e-6)
    assert full[:, n:].abs().max() == 0
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = save_text_encoder(Path(d) / "umt5.safetensors", model, spiece)
        enc = load_text_encoder(str(path))                                            # tokenizer from the file
        got = enc.encode(prompts)
    torch.testing.assert_close(got[:, :n], short, rtol=1e-5, atol=1e-6)


def test_clip_bank_same_with_any_worker_count_and_cache(tmp_path):
    from training.config import WorldConfig
    from training.shapes.world import ClipBank

    w = WorldConfig(clips=4, frames=5, height=32, width=32, cache_dir=str(tmp_path), render_workers=1)
    a = ClipBank.build(w, progress=False)
    assert a.videos.shape == (4, 5, 3, 32, 32) and a.videos.dtype == torch.uint8
    cached = ClipBank.build(w, progress=False)                                        # read back from the cache
    assert torch.equal(a.videos, cached.videos) and a.prompts == cached.prompts
    w2 = WorldConfig(clips=4, frames=5, height=32, width=32, cache_dir="", render_workers=2)
    import training.shapes.world as world
    b = world.ClipBank.build(w2, progress=False)
    assert torch.equal(a.videos, b.videos) and a.prompts == b.prompts
    assert all(p.endswith("background") for p in a.prompts)


def test_degradations_and_mismatched_prompts():
    from stream_r1.shapes import parse_prompt
    from training.shapes.world import degrade_motion, degrade_quality, mismatched_prompt, shapes_prompts

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 9, 3, 16, 16)
    for fn in (degrade_quality, degrade_motion):
        y = fn(x, g)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        assert all(not torch.equal(y[i], x[i]) for i in range(len(x)))
    for p in shapes_prompts(20, seed=7):
        q = mismatched_prompt(p, g)
        assert q != p and parse_prompt(q)


def test_tiny_chain_writes_every_stage(tiny_chain):
    r = tiny_chain / "runs" / "shapes"
    for f in ("vae/vae.safetensors", "teacher/teacher.safetensors", "teacher/umt5.safetensors", "teacher/spiece.model",
              "ode_init/exports/student_latest.safetensors", "stream_r1/exports/student_latest.safetensors",
              "vae/metrics.json", "teacher/metrics.json"):
        assert (r / f).is_file(), f
    m = json.loads((r / "vae" / "metrics.json").read_text())
    assert len(m["whole_clip_psnr_per_frame"]) == 9
    assert set(m["reconstruction_check"]) == {"color", "shape", "motion", "color_original", "shape_original",
                                              "motion_original"}
    assert 0 < m["reconstruction_check"]["color_original"] <= 1     # the checker reads the rendered clips (32 px)
    t = json.loads((r / "teacher" / "metrics.json").read_text())["teacher_check"]
    assert t["samples"] == 8 and 0 <= t["checker"]["color"] <= 1
    assert [c["sigma"] for c in t["coupling"]] == [0.3, 0.6, 0.9] and all(c["own"] > 0 for c in t["coupling"])
    steps = json.loads((tiny_chain / "summary.json").read_text())["steps"]
    gen = [s for s in steps if s["generator_step"]]
    assert gen and all(math.isfinite(s["gen_loss"]) for s in gen)
    assert all(abs(s["w_inter"] - 1.0) < 1e-5 for s in gen)          # inter_norm="batch": mean weight 1


def test_bundle_loads_and_cli_uses_it_by_default(tiny_chain, tmp_path, monkeypatch):
    from stream_r1.cli import main
    from stream_r1.shapes import bundle

    root = tiny_chain / "bundle"
    assert bundle.available(root)
    b = bundle.load_bundle(root=root)
    assert (b.height, b.width, b.fps) == (32, 32, 16)
    from training.recipes import get_recipe
    assert b.model.cfg == WanConfig.preset(get_recipe("shapes_teacher").model.teacher_arch)   # the student starts as the teacher
    assert b.text_encoder.dim == 64
    man = bundle.manifest(root)
    assert man["recipes"][0] == "python -m training.run --recipe shapes_vae"
    monkeypatch.setenv("STREAM_R1_SHAPES_BUNDLE", str(root))
    out = tmp_path / "demo.mp4"
    lat = tmp_path / "lat.safetensors"
    assert main(["generate", "--prompt", "a red circle moving right on a black background", "--frames", "13",
                 "--out", str(out), "--latents-out", str(lat), "--quiet", "--device", "cpu"]) == 0
    assert out.stat().st_size > 0
    from safetensors.torch import load_file
    z = load_file(str(lat))["latents"]
    assert list(z.shape) == [1, 4, 16, 4, 4]                                       # 32x32 -> 4x4 latents


def test_evaluation_pairs_models_and_ships_a_packed_reward(tiny_chain, tmp_path):
    """`training.shapes.bundle` end to end on the tiny chain: the DMD slot holds a copy of the Stream-R1 student,
    so every paired difference is exactly 0 (same prompts, same seeds); Stream-T1 (1 beam x 2 children) under the
    reward gets its own row; the bundle carries the reward row-packed, and it loads."""
    import shutil

    from stream_r1.shapes import bundle
    from training.shapes.bundle import main as bundle_main

    from helpers import train_tiny_reward

    runs = tmp_path / "runs"
    shutil.copytree(tiny_chain / "runs" / "shapes", runs)
    shutil.copytree(runs / "stream_r1", runs / "dmd")
    shutil.copytree(train_tiny_reward(tmp_path), runs / "reward" / "reward")
    out = tmp_path / "bundle"
    assert bundle_main(["--runs", str(runs), "--out", str(out), "--prompts", "2", "--long-count", "1",
                        "--long-seconds", "1", "--models", "dmd,stream_r1", "--t1", "1x2"]) == 0
    ev = json.loads((runs / "eval.json").read_text())["table"]
    assert set(ev) == {"dmd", "stream_r1", "stream_r1+t1"}
    for part in ("short", "long"):
        a, b = ev["stream_r1"][part], ev["dmd"][part]
        assert len(a["videos"]) == (2 if part == "short" else 1) and a["videos"] == b["videos"]
        assert {"reward_VQ", "reward_MQ", "reward_TA", "color", "motion"} <= set(a)
    md = (runs / "eval.md").read_text()
    assert "| stream_r1 − dmd (short) | +0.000 ± 0.000" in md and "stream_r1+t1 − stream_r1 (short)" in md
    assert "videos" not in json.dumps(bundle.manifest(out)["evaluation"])           # bundle.json keeps the means
    b = bundle.load_bundle(root=out)
    assert b.reward() is not None and (out / "reward" / "model_config.json").is_file()
    assert sum(f.stat().st_size for f in (out / "reward").rglob("*.safetensors")) < 2e6


def test_paired_difference_is_mean_and_standard_error():
    from training.shapes.bundle import paired_difference
    a = {"videos": [{"color": 1.0}, {"color": 0.5}, {"color": 0.0}]}
    b = {"videos": [{"color": 0.0}, {"color": 0.5}, {"color": 0.5}]}
    d = paired_difference(a, b, ("color", "motion"))                                # diffs 1, 0, -0.5
    assert set(d) == {"color"}
    assert d["color"][0] == pytest.approx(1 / 6) and d["color"][1] == pytest.approx(math.sqrt(7 / 12) / math.sqrt(3))


def test_ode_pairs_are_computed_once(tiny_chain, monkeypatch):
    """With ode.pairs, a trajectory is computed on first use and reused bit-exactly afterwards."""
    import os

    import training.trainer as tr
    from training.recipes import get_recipe
    from training.config import apply_overrides

    calls = record_batch_sizes(monkeypatch, tr, "teacher_ode_trajectory")
    cwd = os.getcwd()
    os.chdir(tiny_chain)
    try:
        cfg = get_recipe("shapes_ode_init")
        apply_overrides(cfg, [a for a in (TINY_WORLD + TINY_ROLLOUT)[1::2]] + ["ode.pairs=2", "ode.teacher_steps=3",
                                                                             "checkpoint.enabled=false",
                                                                             "output_dir=runs/pairs"])
        t = tr.Trainer(cfg)
        ctx = t.text(["a red circle moving right on a black background"] * 2)
        s1, x1 = t._ode_pairs([0, 1], ctx)
        s2, x2 = t._ode_pairs([1, 0], ctx.flip(0))
    finally:
        os.chdir(cwd)
    assert calls == [2]
    assert torch.equal(s1[:, 0], s2[:, 1]) and torch.equal(x1[1], x2[0])


def test_mixed_precision_without_fsdp(tmp_path):
    """bf16 compute on a single process (no FSDP): trainable fp32 models run under autocast with the bf16 cache."""
    out = tmp_path / "mp"
    assert _run(["--recipe", "tiny_stream_r1", "--set", "parallel.mixed_precision=bf16", "--set", f"output_dir={out}",
                 "--set", "schedule.steps=1", "--set", "schedule.generator_every=1", "--set", "log.progress=false",
                 "--set", "log.tensorboard=false", "--set", f"log.summary_json={out}/s.json",
                 "--set", "checkpoint.enabled=false"]) == 0
    step = json.loads((out / "s.json").read_text())["steps"][0]
    assert math.isfinite(step["gen_loss"]) and math.isfinite(step["critic_loss"])


def test_vae_crops_follow_the_shapes():
    """VAE training crops sit on the 8-pixel grid and contain the (small) shape of the clip; plain clips still crop."""
    from training.shapes.pretrain import foreground_crops

    x = torch.zeros(3, 5, 3, 96, 96)
    x[0, :, 0, 70:80, 60:70] = 1.0                                    # a red square near the bottom right
    x[1, :, 1, 5:12, 5:12] = 1.0                                      # a green one in the top left corner
    x[2] += 0.5                                                       # plain grey
    for seed in range(5):
        c = foreground_crops(x, 24, torch.Generator().manual_seed(seed))
        assert c.shape == (3, 5, 3, 24, 24)
        assert c[0, 0, 0].sum() > 0 and c[1, 0, 1].sum() > 0          # the shapes are inside their crops
        assert torch.equal(c[2], torch.full_like(c[2], 0.5))


def test_inflated_vae_starts_as_a_per_frame_autoencoder():
    """inflate_init: each latent sees only the newest frame of its group of 4 and each decoded frame only its own
    latent, so perturbing a frame that is not a group's newest changes nothing; from the plain init it does."""
    from stream_r1.vae import VAEConfig, WanVAE
    from training.shapes.pretrain import inflate_init

    torch.manual_seed(0)
    x = torch.rand(1, 3, 9, 16, 16) * 2 - 1                           # frames 0 | 1-4 | 5-8 -> 3 latents
    y = x.clone()
    y[:, :, 2] = -y[:, :, 2]                                          # frame 2: inside group 1-4, not its newest
    z = x.clone()
    z[:, :, 4] = -z[:, :, 4]                                          # frame 4: group 1-4's newest

    def run(vae, v):
        with torch.no_grad():
            return vae.decode(vae.encode(v), clamp=False)             # [1, 3, 9, 16, 16]

    plain = WanVAE(VAEConfig(dim=8))
    assert not torch.allclose(run(plain, x), run(plain, y))
    vae = inflate_init(WanVAE(VAEConfig(dim=8)))
    base = run(vae, x)
    assert torch.equal(run(vae, y), base)
    moved = (run(vae, z) - base).abs().amax(dim=(0, 1, 3, 4))        # [9] change per decoded frame
    assert moved[0] == 0 and moved[5:].amax() == 0 and moved[1:5].amin() > 0


def test_standardized_latents_are_unit_per_channel_and_decode_the_same():
    """standardize_latents folds a per-channel affine map into the VAE: its latents get mean 0 / std 1 per channel
    on the clips measured, and decode(encode(x)) does not change."""
    from stream_r1.vae import VAEConfig, WanVAE
    from training.shapes.pretrain import inflate_init, standardize_latents

    torch.manual_seed(0)
    vae = inflate_init(WanVAE(VAEConfig(dim=8))).double()
    clips = torch.rand(6, 5, 3, 16, 16, dtype=torch.float64)                  # [N, T, 3, H, W] in [0, 1]
    x = rearrange(clips * 2 - 1, "n t c h w -> n c t h w")
    with torch.no_grad():
        before_z, before = vae.encode(x).double(), vae.decode(vae.encode(x), clamp=False)   # encode gives fp32
    stats = standardize_latents(vae, clips, batch=4)
    with torch.no_grad():
        z, after = vae.encode(x).double(), vae.decode(vae.encode(x), clamp=False)
    assert torch.allclose(torch.tensor(stats["std"], dtype=torch.float64), before_z.std(dim=(0, 2, 3, 4)), atol=1e-4)
    assert torch.allclose(z.mean(dim=(0, 2, 3, 4)), torch.zeros(16, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3, 4)), torch.ones(16, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(after, before, atol=1e-5)                            # fp32 latents in between


def test_temporal_coupling_tells_frame_independent_models_from_coupled_ones():
    """temporal_coupling: 0 for a model that treats each latent frame alone, the mixing weight for one that adds
    its neighbours' inputs."""
    from training.shapes.pretrain import temporal_coupling

    def alone(x, t, ctx):                                             # x [B, C, F, h, w]
        return 2 * x

    def mixed(x, t, ctx):
        return x + 0.5 * (x.roll(1, dims=2) + x.roll(-1, dims=2))

    lat = torch.randn(2, 6, 16, 4, 4)                                 # [B, F, C, h, w]
    a = temporal_coupling(alone, lat, torch.zeros(2, 3, 8), sigma=0.5)
    m = temporal_coupling(mixed, lat, torch.zeros(2, 3, 8), sigma=0.5)
    assert a["neighbours"] == 0 and a["own"] > 0 and a["ratio"] == 0
    assert m["ratio"] == pytest.approx(0.5, rel=1e-3)


@pytest.mark.skipif(not __import__("stream_r1.shapes.bundle", fromlist=["available"]).available(),
                    reason="no trained shapes-world bundle in stream_r1/shapes/bundle/ yet (bench/SHAPES.md)")
def test_the_shipped_bundle_draws_what_held_out_prompts_ask_for(tmp_path):
    """The shipped model through the CLI's default path, on the first 12 held-out evaluation prompts (never
    trained on), each streamed for 45 frames with its evaluation seed: the analytic checker reads colour, motion,
    background and temporal consistency from the pixels. Measured on this CPU (2026-11-22, 16 prompts): colour
    0.63, motion 0.44, background 1.0, temporal 0.70 (H200, 96 prompts: 0.68 / 0.27 / 1.0 / 0.70). The floors
    sit below those with room for 12 prompts' noise; an untrained or broken student scores ~0 on colour."""
    from stream_r1.cli import main
    from stream_r1.shapes import check
    from stream_r1.shapes.bundle import load_bundle
    from stream_r1.stream import StreamSession, chunks_for_frames
    from stream_r1.vae import StreamingDecoder
    from training.shapes.bundle import EVAL_SEED, eval_prompts

    b = load_bundle()
    sc = b.info.stream_config
    rows = []
    for i, prompt in enumerate(eval_prompts(12)):
        sess = StreamSession(b.model, sc, b.text_encoder.encode([prompt]), height=b.height, width=b.width,
                             seed=EVAL_SEED + i, decoder=StreamingDecoder(b.vae))
        video = torch.cat([c.frames[0] for c in sess.run(chunks_for_frames(12, sc.frames_per_block))])[:45]
        rows.append(check(video, prompt))
    mean = {k: sum(r[k] for r in rows) / len(rows)
            for k in ("color_score", "motion_score", "background_score", "temporal_consistency")}
    assert mean["color_score"] >= 0.45 and mean["background_score"] >= 0.9, mean
    assert mean["motion_score"] >= 0.2 and mean["temporal_consistency"] >= 0.5, mean
    prompt = "a red circle moving right on a black background"
    assert main(["generate", "--prompt", prompt, "--frames", "13", "--out", str(tmp_path / "x.mp4"), "--quiet",
                 "--device", "cpu"]) == 0


def test_rebuilding_a_bundle_leaves_identical_weight_files_untouched(tmp_path):
    """safetensors writes metadata in no fixed order: an unchanged file is kept byte for byte, a changed one
    rewritten."""
    import os

    from training.shapes.bundle import save_unless_same

    path = tmp_path / "w.safetensors"
    sd, meta = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}, {"x": "1", "y": "2", "z": "3"}
    assert save_unless_same(sd, path, meta)
    os.utime(path, ns=(1, 1))
    assert not save_unless_same({k: v.clone() for k, v in sd.items()}, path, dict(reversed(meta.items())))
    assert path.stat().st_mtime_ns == 1
    assert save_unless_same({**sd, "a": torch.zeros(4)}, path, meta)
    assert save_unless_same(sd, path, {**meta, "x": "9"})


def test_the_vae_loss_weights_a_band_around_each_outline():
    """outline_band: 1 within 2 px of a shape's outline, inside and outside, 0 farther in, farther out and on an
    empty frame; a square and a circle of the same area differ only there, which is what the weight is for."""
    from training.shapes.pretrain import outline_band

    mask = torch.zeros(2, 1, 32, 32)
    mask[0, 0, 8:24, 8:24] = 1                                          # a 16 px square in frame 0, frame 1 empty
    band = outline_band(mask)
    assert band.shape == mask.shape and set(band.unique().tolist()) == {0.0, 1.0}
    assert band[0, 0, 16, 6:10].tolist() == [1.0] * 4                  # 2 px outside, 2 px inside the left edge
    assert band[0, 0, 16, 5] == 0 and band[0, 0, 16, 10] == 0 and band[0, 0, 16, 16] == 0
    assert band[0, 0].sum() == 20 * 20 - 12 * 12                       # the ring between the 20 px and 12 px squares
    assert band[1].sum() == 0

"""Training package, unit level: config and recipes, prompts, losses (§13.2/13.3), rollout (§13.4), schedule (§13.10)."""
import json

import pytest
import torch
import torch.nn.functional as F

from stream_r1.config import StreamConfig, WanConfig
from stream_r1.stream import StreamSession
from stream_r1.wan.model import WanModel
from training import losses
from training.config import TrainConfig, apply_overrides, load_config_file
from training.data import PromptSampler, read_prompts, shard_positions
from training.recipes import RECIPES, get_recipe
from training.rollout import RolloutCache, self_forcing_rollout, teacher_ode_trajectory

H, W = 32, 48                                                   # latent 4 x 6, 6 tokens per frame


def _model(seed=0):
    return WanModel(WanConfig.tiny(), attention="sdpa").init_weights(seed=seed).eval()


def _ctx(b=1, seed=0):
    return torch.randn(b, 8, 32, generator=torch.Generator().manual_seed(seed))


# ---- config ---------------------------------------------------------------------------------------------------
def test_every_recipe_validates_and_round_trips_through_json():
    for name in RECIPES:
        cfg = get_recipe(name)
        cfg.validate(world_size=1)
        assert TrainConfig.from_dict(json.loads(cfg.to_json())).to_dict() == cfg.to_dict()


def test_reference_recipe_switches_only_the_documented_deviations():
    a, b = get_recipe("stream_r1_1.3b").to_dict(), get_recipe("stream_r1_1.3b_reference").to_dict()
    diff = {(k, f) for k in a if isinstance(a[k], dict) for f in a[k] if a[k][f] != b[k][f]}
    diff |= {k for k in a if not isinstance(a[k], dict) and a[k] != b[k]}
    assert diff == {"name", "output_dir", ("reward", "saliency_order"), ("reward", "normalize_axes"),
                    ("reward", "balance_sync"), ("rollout", "text_kv_grad")}
    assert (b["reward"]["saliency_order"], b["reward"]["normalize_axes"], b["rollout"]["text_kv_grad"]) == \
        ("reference", False, "reference")
    assert (a["reward"]["saliency_order"], a["reward"]["normalize_axes"], a["rollout"]["text_kv_grad"]) == \
        ("image", True, "every_call")


def test_paper_recipe_values():
    c = get_recipe("stream_r1_1.3b")
    assert (c.reward.enabled, c.reward.beta, c.reward.mode) == (True, 2.0, "BalancedOverall")
    assert (c.reward.spatial_floor, c.reward.temporal_floor) == (0.15, 0.2)
    assert (c.dmd.guidance_scale, c.model.teacher_arch, c.rollout.latent_frames, c.rollout.frames_per_block) == \
        (3.0, "14b", 21, 3)
    assert (c.optim.lr, c.optim.critic_lr, c.optim.betas, c.optim.weight_decay, c.optim.max_grad_norm) == \
        (2e-6, 4e-7, (0.0, 0.999), 0.01, 10.0)
    assert (c.schedule.global_batch, c.schedule.generator_every, c.schedule.ema_decay) == (64, 5, 0.99)
    assert not get_recipe("dmd_1.3b").reward.enabled and get_recipe("ode_init_1.3b").method == "ode_init"


def test_overrides_are_typed_and_unknown_keys_name_the_valid_ones(tmp_path):
    cfg = get_recipe("tiny_dmd")
    apply_overrides(cfg, ["optim.lr=3e-5", "rollout.denoising_steps=1000,500", "reward.clip=none",
                          "parallel.fsdp=false", "schedule.steps=7"])
    assert (cfg.optim.lr, cfg.rollout.denoising_steps, cfg.reward.clip, cfg.parallel.fsdp, cfg.schedule.steps) == \
        (3e-5, (1000.0, 500.0), None, False, 7)
    with pytest.raises(ValueError, match=r"no field 'lrr'.*valid: .*critic_lr.*lr"):
        apply_overrides(cfg, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="schedule.steps takes an integer"):
        apply_overrides(cfg, ["schedule.steps=1.5"])
    with pytest.raises(ValueError, match=r"reward.mode must be one of"):
        apply_overrides(cfg, ["reward.mode=best"])
    with pytest.raises(ValueError, match="is a section"):
        apply_overrides(cfg, ["optim=1"])
    f = tmp_path / "o.toml"
    f.write_text('[optim]\nlr = 1e-3\nbetas = [0.5, 0.9]\n[schedule]\nsteps = 3\n')
    load_config_file(cfg, f)
    assert (cfg.optim.lr, cfg.optim.betas, cfg.schedule.steps) == (1e-3, (0.5, 0.9), 3)
    f.write_text('[optim]\nlr = "fast"\n')
    with pytest.raises(ValueError, match="optim.lr takes a number"):
        load_config_file(cfg, f)


def test_world_size_must_divide_the_batch():
    cfg = get_recipe("tiny_dmd")
    cfg.schedule.global_batch = 3
    with pytest.raises(ValueError, match=r"global_batch=3 is not divisible by world_size \* micro_batch = 2 \* 1"):
        cfg.validate(world_size=2)


def test_cli_rejects_bad_config_before_any_work(capsys, monkeypatch):
    from training.run import main
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["--recipe", "tiny_dmd", "--set", "schedule.global_batch=3"]) == 2
    assert "not divisible" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["--recipe", "tiny_dmd", "--set", "nope.x=1"]) == 2
    assert "unknown config key 'nope.x'" in capsys.readouterr().err
    assert main(["--recipe", "nope"]) == 2
    assert main(["--recipe", "tiny_dmd", "--print-config", "--set", "optim.lr=0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["optim"]["lr"] == 0.5


def test_missing_files_fail_before_heavy_work(tmp_path):
    from training.trainer import check_inputs
    cfg = get_recipe("tiny_dmd")
    cfg.model.teacher = str(tmp_path / "wan14b")
    with pytest.raises(FileNotFoundError, match="model.teacher: .*wan14b.* does not exist"):
        check_inputs(cfg, 1)
    cfg = get_recipe("tiny_stream_r1")
    cfg.reward.path = str(tmp_path / "VideoReward")
    with pytest.raises(FileNotFoundError, match="reward.path"):
        check_inputs(cfg, 1)


# ---- prompts -----------------------------------------------------------------------------------------------------
def test_prompt_file_errors_name_the_line(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes(b"a cat\r\na dog\n")
    assert read_prompts(f) == ["a cat", "a dog"]
    f.write_bytes(b"a cat\n\na dog\n")
    with pytest.raises(ValueError, match="line 2 is empty"):
        read_prompts(f)
    f.write_bytes(b"a cat\na dog\ncaf\xe9 au lait\n")
    with pytest.raises(ValueError, match="line 3 is not valid UTF-8"):
        read_prompts(f)
    with pytest.raises(ValueError, match="does not exist"):
        read_prompts(tmp_path / "none.txt")


def test_prompt_placement_does_not_depend_on_the_layout():
    s = PromptSampler([f"p{i}" for i in range(5)], seed=3)
    one = [p for m in range(4) for p in shard_positions(10, m, 0, 1, 1)]            # 1 rank, 4 micro-steps
    two = sorted(p for m in range(2) for r in range(2) for p in shard_positions(10, m, r, 2, 1))
    big = shard_positions(10, 0, 0, 1, 4)                                            # 1 rank, micro batch 4
    assert one == two == big == [10, 11, 12, 13]
    epoch0 = sorted(s.index(p) for p in range(5))
    assert epoch0 == list(range(5)) and [s.index(p) for p in range(5)] != [s.index(p) for p in range(5, 10)]


# ---- losses ------------------------------------------------------------------------------------------------------
def test_score_timestep_law():
    """§13.2: over 10^6 draws median ~ 833, P(tau = 980) ~ 0.092, min 20."""
    tau = losses.shift_timesteps(torch.randint(0, 1000, (10 ** 6,), generator=torch.Generator().manual_seed(0)))
    assert abs(float(tau.median()) - 833.3) < 2.0
    assert abs(float((tau == 980).double().mean()) - 0.092) < 0.002
    assert float(tau.min()) == 20.0 and float(tau.max()) == 980.0
    assert abs(float((tau < 100).double().mean()) - 0.022) < 0.002
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    a = losses.score_timesteps(gens)
    b = losses.score_timesteps([torch.Generator().manual_seed(i) for i in range(4)])
    assert torch.equal(a, b) and a.dtype == torch.float64 and a.shape == (4,)


def test_unit_weights_reproduce_plain_dmd_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 16, 4, 6, generator=g, requires_grad=True)
    grad = torch.randn(2, 6, 16, 4, 6, generator=g)
    ones = losses.dmd_loss(x, grad, torch.ones(2, 1, 1, 1, 1), torch.ones(2, 6, 1, 4, 6))
    plain = losses.dmd_loss(x, grad)
    assert torch.equal(ones, plain)                                           # bit for bit
    ga, = torch.autograd.grad(ones, x)
    gb, = torch.autograd.grad(plain, x)
    assert torch.equal(ga, gb)
    reference = 0.5 * F.mse_loss(x, (x - grad).detach())                     # the reference's formula
    gr, = torch.autograd.grad(reference, x)
    torch.testing.assert_close(plain, reference, rtol=1e-6, atol=0)
    torch.testing.assert_close(gb, gr, rtol=1e-3, atol=1e-9)                 # x - (x - g) cancels in fp32


def test_weighted_dmd_gradient_identity():
    """§13.3: d L_G / d x = W_inter * W_intra * g / N (fp64 reference vs the fp32 loss)."""
    g = torch.Generator().manual_seed(1)
    b, f, c, h, w = 2, 6, 16, 4, 6
    x = torch.randn(b, f, c, h, w, generator=g, requires_grad=True)
    grad = torch.randn(b, f, c, h, w, generator=g)
    w_inter = torch.rand(b, generator=g) * 3
    w_intra = torch.rand(b, f, 1, h, w, generator=g) + 0.1
    loss = losses.dmd_loss(x, grad, w_inter.view(b, 1, 1, 1, 1), w_intra)
    got, = torch.autograd.grad(loss, x)
    ref = w_inter.double().view(b, 1, 1, 1, 1) * w_intra.double() * grad.double() / x.numel()
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=0)
    expected_value = 0.5 * (ref * grad.double()).sum()                         # value = 1/2 mean(W g^2)
    torch.testing.assert_close(loss.double(), expected_value, rtol=1e-5, atol=0)


def test_dmd_direction_is_normalised_per_sample_and_finite():
    x = torch.zeros(2, 3, 4, 2, 2)
    real = torch.ones(2, 3, 4, 2, 2)
    real[1] *= 2
    fake = real + 1
    d = losses.dmd_direction(x, fake, real)
    assert torch.allclose(d.normalizer, torch.tensor([1.0, 2.0]))
    assert torch.allclose(d.grad[0], torch.ones(3, 4, 2, 2)) and torch.allclose(d.grad[1], torch.full((3, 4, 2, 2), 0.5))
    fake[0, 0, 0, 0, 0] = float("nan")
    d = losses.dmd_direction(x, fake, real)
    assert d.nonfinite == 1 and torch.isfinite(d.grad).all()


def test_critic_loss_is_flow_matching():
    n, x0 = torch.randn(1, 3, 4, 2, 2), torch.randn(1, 3, 4, 2, 2)
    assert float(losses.critic_loss(n - x0, n, x0)) == 0.0
    assert torch.allclose(losses.critic_loss(n - x0 + 1, n, x0), torch.tensor(1.0))


# ---- rollout -----------------------------------------------------------------------------------------------------
def test_attention_set_of_each_chunk():
    """§13.4: chunk b >= 2 attends {chunk 0, chunk b-1, chunk b}; chunk 1 {0, 1}; chunk 0 itself."""
    cache = RolloutCache(WanConfig.tiny(), StreamConfig(), batch=1, frames=21, frame_seqlen=6,
                         device=torch.device("cpu"), dtype=torch.float32)
    frames = lambda c, b: [f for r in c.key_frames(3 * b, 3) for f in r] + [3 * b, 3 * b + 1, 3 * b + 2]  # noqa: E731
    assert frames(cache, 0) == [0, 1, 2] and frames(cache, 1) == list(range(6))
    for b in range(2, 7):
        assert frames(cache, b) == [0, 1, 2, 3 * b - 3, 3 * b - 2, 3 * b - 1, 3 * b, 3 * b + 1, 3 * b + 2]
    full = RolloutCache(WanConfig.tiny(), StreamConfig.self_forcing(), batch=1, frames=21, frame_seqlen=6,
                        device=torch.device("cpu"), dtype=torch.float32)
    assert frames(full, 4) == list(range(15))


def _stream_noise(seed):
    """The draw order of StreamSession: per chunk the initial noise, then one re-noise per step."""
    g = torch.Generator().manual_seed(seed)
    return lambda chunk, draw: torch.randn((1, 3, 16, 4, 6), generator=g)


def test_rollout_at_the_last_exit_step_is_the_inference_stream():
    """5 chunks (the window rolls from chunk 3 on): the training rollout equals StreamSession, whose EMA sink is
    switched off (alpha 1) because the training cache never evicts."""
    model, ctx = _model(), _ctx()
    sc = StreamConfig(sink_ema_alpha=1.0)
    sess = StreamSession(model, sc, ctx, height=H, width=W, seed=7)
    ref = torch.cat([c.latents for c in sess.run(5)], dim=1)
    with torch.no_grad():
        out = self_forcing_rollout(model, ctx, sc, num_frames=15, latent_hw=(4, 6), noise=_stream_noise(7),
                                   exit_step=3, grad=False, context_pass_noise=False)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _grads(model, chunk, grad_chunks, exit_step=2, text_kv_grad="every_call"):
    model.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(3)
    noise = lambda c, d: torch.randn((2, 3, 16, 4, 6), generator=g)      # noqa: E731
    out = self_forcing_rollout(model, _ctx(2), StreamConfig(), num_frames=12, latent_hw=(4, 6), noise=noise,
                               exit_step=exit_step, grad_chunks=grad_chunks, text_kv_grad=text_kv_grad)
    w = torch.randn(out[:, 3 * chunk:3 * chunk + 3].shape, generator=torch.Generator().manual_seed(5))
    loss = (out[:, 3 * chunk:3 * chunk + 3] * w).sum()
    if loss.requires_grad:
        loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def test_rollout_gradient_flows_only_through_the_exit_forward():
    """§13.4: with e fixed, chunk b's output depends on theta only through its own exit forward."""
    model = _model().requires_grad_(True)
    all_chunks = _grads(model, 2, None)
    only_b = _grads(model, 2, {2})
    detached = _grads(model, 2, {0, 1, 3})                                  # every exit forward but chunk 2's
    assert sum(float(g.abs().sum()) for g in all_chunks.values()) > 0
    for n in all_chunks:
        torch.testing.assert_close(all_chunks[n], only_b[n], rtol=1e-5, atol=1e-7)
        assert float(detached[n].abs().max()) == 0.0, n
    # the text path carries gradient too: the exit step recomputes the cross-attention K/V
    assert float(all_chunks["blocks.0.cross_attn.k.weight"].abs().sum()) > 0
    assert float(all_chunks["text_embedding.0.weight"].abs().sum()) > 0


def test_reference_text_kv_gradient_only_at_exit_step_zero():
    """text_kv_grad='reference' (the public code's assigned cross-attention cache): with e > 0 the text K/V come
    from chunk 0's no-grad step 0, so exactly the text path (text embedding, cross-attention k / v / norm_k) gets
    no gradient and everything else is unchanged; with e = 0 the shared tensor gives the every-call gradient."""
    model = _model().requires_grad_(True)
    text_path = ("text_embedding.", "cross_attn.k.", "cross_attn.v.", "cross_attn.norm_k.")
    for e in (0, 1, 3):
        every = _grads(model, 3, None, exit_step=e)
        ref = _grads(model, 3, None, exit_step=e, text_kv_grad="reference")
        for n in every:
            on_text_path = any(t in n for t in text_path)
            if e > 0 and on_text_path:
                assert float(every[n].abs().sum()) > 0 and float(ref[n].abs().max()) == 0.0, n
            else:
                torch.testing.assert_close(ref[n], every[n], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="text_kv_grad"):
        _grads(model, 0, None, text_kv_grad="cached")


def test_activation_checkpointing_gives_the_same_gradients():
    """The frozen cache view is pure: recomputing blocks in backward after the cache moved on changes nothing."""
    from training.parallel import apply_activation_checkpointing
    plain = _model().requires_grad_(True)
    wrapped = _model().requires_grad_(True)
    apply_activation_checkpointing(wrapped)
    a, b = _grads(plain, 3, None, exit_step=1), _grads(wrapped, 3, None, exit_step=1)
    b = {n.replace("_checkpoint_wrapped_module.", ""): v for n, v in b.items()}
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-7)


def test_context_pass_noise_quirk_changes_later_chunks_only():
    model, ctx = _model(), _ctx()

    def run(quirk):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            return self_forcing_rollout(model, ctx, StreamConfig(), num_frames=6, latent_hw=(4, 6),
                                        noise=lambda c, d: torch.randn((1, 3, 16, 4, 6), generator=g),
                                        exit_step=0, grad=False, context_pass_noise=quirk)
    a, b = run(True), run(False)
    assert torch.equal(a[:, :3], b[:, :3]) and not torch.equal(a[:, 3:], b[:, 3:])


def test_teacher_ode_reaches_the_student_sigmas():
    model = _model()
    noise = torch.randn(1, 6, 16, 4, 6, generator=torch.Generator().manual_seed(0))
    targets = [1000.0, 937.5, 833.33, 625.0]
    states, x0 = teacher_ode_trajectory(model, noise, _ctx(), _ctx(seed=1), targets, steps=6, guidance=3.0)
    assert len(states) == 4 and torch.equal(states[0], noise) and x0.shape == noise.shape
    assert not torch.equal(states[1], states[0]) and torch.isfinite(x0).all()


# ---- schedule ------------------------------------------------------------------------------------------------------
def test_schedule_accounting_of_the_paper_run():
    """§13.10: 8000 micro-steps -> 200 generator and 1000 critic updates; EMA at micro-step 200; ckpt at 1600 k."""
    cfg = get_recipe("stream_r1_1.3b")
    s, accum = cfg.schedule, cfg.schedule.accumulation(world_size=8)
    assert accum == 8 and s.steps * accum == 8000
    assert sum(s.is_generator_step(k) for k in range(s.steps)) == 200
    ema_micro = min(d for d in range(s.steps + 1) if s.ema_due(d)) * accum
    assert ema_micro == 200
    ckpts = [d * accum for d in range(1, s.steps + 1) if cfg.checkpoint.due(d, s.steps)]
    assert ckpts == [1600, 3200, 4800, 6400, 8000]


# ---- text ----------------------------------------------------------------------------------------------------------
def test_text_embedder_with_a_tiny_umt5_file(tmp_path, wan_sd, spiece_bytes):
    from training.config import TextConfig
    from training.data import TextEmbedder
    torch.save(wan_sd, tmp_path / "umt5.pth")
    (tmp_path / "spiece.model").write_bytes(spiece_bytes)
    cfg = TextConfig(encoder=str(tmp_path / "umt5.pth"), tokenizer=str(tmp_path / "spiece.model"),
                     negative_prompt="static, blurry")
    te = TextEmbedder(cfg, text_dim=32, device=torch.device("cpu"), dtype=torch.float32)
    a = te(["a red circle", "a blue square"])
    assert a.shape == (2, 512, 32) and te.negative(2).shape == (2, 512, 32)
    assert torch.equal(te(["a red circle"])[0], a[0]) and (a[0, 20:] == 0).all()
    with pytest.raises(ValueError, match="text_dim 64"):
        TextEmbedder(cfg, text_dim=64, device=torch.device("cpu"), dtype=torch.float32)
    hashed = TextEmbedder(TextConfig(hash_tokens=4), text_dim=32, device=torch.device("cpu"), dtype=torch.float32)
    assert hashed(["x", "y"]).shape == (2, 4, 32) and torch.equal(hashed(["x"]), hashed(["x"]))


def test_log_line_of_a_critic_step_carries_the_latest_generator_metrics():
    """With log.interval 50 and generator_every 5 the logged steps (50, 100, ...) are never generator steps
    (0-based 0, 5, 10, ...): the line shows the latest generator step's loss and reward weights, marked."""
    from training.observe import format_line

    gen = {"step": 45, "generator_step": 1.0, "gen_loss": 0.5, "w_inter": 1.0, "w_inter_min": 0.4,
           "w_inter_max": 1.7, "critic_loss": 0.3, "seconds": 0.5, "peak_mem_gib": [1.0]}
    critic = {"step": 49, "generator_step": 0.0, "critic_loss": 0.2, "seconds": 0.2, "peak_mem_gib": [1.1]}
    line = format_line("run", critic, 500, gen)
    assert line.startswith("run step 50/500 | (gen @ 46) | gen 0.5 | critic 0.2 | W_inter 1 [0.4, 1.7] |"), line
    assert "0.20 s/step" in line and "peak 1.10 GiB" in line
    assert "gen @" not in format_line("run", gen, 500, gen)
    assert "gen @" not in format_line("run", critic, 500, None) and "gen " not in format_line("run", critic, 500)
    timed = {**gen, "seconds_rollout": 0.31, "seconds_decode": 0.04, "seconds_checker": 5.9}
    assert "| gen s: rollout 0.31, decode 0.04, checker 5.90 |" in format_line("run", critic, 500, timed)

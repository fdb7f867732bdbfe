"""Training package end to end on CPU: torchrun with 2 gloo processes (FSDP2), exports that the loaders and the
CLI read, one vs two processes, stop (SIGTERM path) and resume to the same losses."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.recipes import get_recipe
from training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("gen_loss", "critic_loss")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (two oversubscribe the 2-core CI machine; torchrun uses one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(out, steps, micro_batch=2, student="random"):
    cfg = get_recipe("tiny_stream_r1")
    cfg.output_dir, cfg.log.progress, cfg.schedule.steps = str(out), False, steps
    cfg.schedule.micro_batch, cfg.model.student = micro_batch, student
    return cfg


def _student_file(folder: Path) -> Path:
    """A tiny student checkpoint (our export format) so the runs also exercise loading under FSDP."""
    from stream_r1.checkpoint import save_dit_export
    from stream_r1.config import WanConfig
    from stream_r1.wan.model import WanModel
    cfg = WanConfig.tiny()
    return save_dit_export(folder / "student_init.safetensors", WanModel(cfg).init_weights(seed=11).state_dict(), cfg)


def _losses(history):
    return [{k: m[k] for k in KEYS if k in m} for m in history]


def test_stop_and_resume_give_the_same_next_losses(tmp_path):
    straight = _losses(Trainer(_cfg(tmp_path / "a", 4)).train())

    def stop_after_two(trainer, _):
        if trainer.step_idx == 2:
            trainer.request_stop()                     # what the SIGTERM handler of training.run calls
    first = Trainer(_cfg(tmp_path / "b", 4))
    assert len(first.train(on_step=stop_after_two)) == 2
    saved = tmp_path / "b" / "checkpoints" / "step_00000002"
    assert (saved / "trainer_state.json").is_file() and (saved / "config.json").is_file()
    assert json.loads((saved / "trainer_state.json").read_text())["ema"] is True
    resumed = Trainer(_cfg(tmp_path / "b", 4))
    assert resumed.step_idx == 2 and resumed.ema is not None
    assert _losses(resumed.train()) == straight[2:]
    assert [p.name for p in sorted((tmp_path / "b" / "checkpoints").iterdir())] == \
        ["step_00000002", "step_00000004"]


@pytest.fixture(scope="module")
def torchrun_2(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun")
    student = _student_file(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.run", "--recipe", "tiny_stream_r1", "--set", f"output_dir={out}",
           "--set", f"model.student={student}",
           "--set", "schedule.steps=3", "--set", "log.progress=false", "--set", "log.sample_interval=3",
           "--set", f"log.summary_json={out / 'summary.json'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc


def test_two_processes_train_and_export_a_loadable_student(torchrun_2, tmp_path):
    out, proc = torchrun_2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["steps"]) == 3
    assert all(math.isfinite(m[k]) for m in summary["steps"] for k in KEYS if k in m)
    assert "gen_loss" in summary["steps"][0] and "w_inter" in summary["steps"][0]
    assert len(summary["steps"][0]["peak_mem_gib"]) == 2
    assert "tiny_stream_r1 step 3/3" in proc.stderr
    assert (out / "samples" / "step_00000003.mp4").is_file() and (out / "samples" / "step_00000003_w_intra.png").is_file()
    export = out / "exports" / "student_step_00000003.safetensors"
    from stream_r1.loaders import load_student
    model, info = load_student(str(export))
    assert info.family == "stream-r1" and info.stream_config.cache_policy == "window_sink"
    assert model.cfg.dim == 64 and json.loads((out / "checkpoints" / "step_00000003" / "config.json").read_text())[
        "name"] == "tiny_stream_r1"

    from safetensors.torch import save_file
    save_file({"context": torch.randn(1, 8, 32)}, str(tmp_path / "ctx.safetensors"))
    gen = subprocess.run([sys.executable, "-m", "stream_r1", "generate", "--checkpoint", str(export), "--no-decode",
                          "--context", str(tmp_path / "ctx.safetensors"), "--height", "32", "--width", "48",
                          "--frames", "21", "--latents-out", str(tmp_path / "lat.safetensors"), "--quiet"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert gen.returncode == 0, gen.stderr[-3000:]
    from safetensors.torch import load_file
    lat = load_file(str(tmp_path / "lat.safetensors"))["latents"]
    assert lat.shape == (1, 6, 16, 4, 6) and torch.isfinite(lat).all()


def test_the_export_names_the_text_encoder_and_vae_it_was_trained_with(torchrun_2, tmp_path):
    """`python -m stream_r1 generate --checkpoint runs/<name>/exports/...` finds the tiny recipe's hashed text
    encoder and seeded VAE in the export's training config; a file without one says in one line what to pass."""
    from stream_r1.loaders import checkpoint_text_encoder, checkpoint_vae, prompt_embedding
    from training.models import build_vae
    out, _ = torchrun_2
    export = out / "exports" / "student_latest.safetensors"
    enc = checkpoint_text_encoder(str(export), 32)
    assert torch.equal(enc.encode(["a red circle"]), prompt_embedding("a red circle", 32, 8))   # tiny: 8 tokens
    vae = checkpoint_vae(str(export))
    trained = build_vae("random", "tiny", seed=3, device=torch.device("cpu"), dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), trained.state_dict().values()))
    gen = subprocess.run([sys.executable, "-m", "stream_r1", "generate", "--checkpoint", str(export), "--prompt",
                          "a red circle", "--height", "32", "--width", "48", "--frames", "9", "--out",
                          str(tmp_path / "v.mp4"), "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert gen.returncode == 0 and (tmp_path / "v.mp4").is_file(), gen.stderr[-3000:]
    bare = tmp_path / "student.safetensors"
    from safetensors.torch import load_file, save_file
    save_file(load_file(str(export)), str(bare))
    with pytest.raises(ValueError, match=r"does not say which text encoder .* pass --text-encoder"):
        checkpoint_text_encoder(str(bare), 32)


def test_a_finished_run_says_so_instead_of_resuming_silently(tmp_path, caplog):
    from training.run import main
    Trainer(_cfg(tmp_path, 2)).train()
    argv = ["--recipe", "tiny_stream_r1", "--set", f"output_dir={tmp_path}", "--set", "schedule.steps=2",
            "--set", "log.progress=false"]
    with caplog.at_level("INFO", logger="training"):
        assert main(argv) == 0
    said = [r.getMessage() for r in caplog.records if "already finished" in r.getMessage()]
    assert len(said) == 1 and "at step 2" in said[0] and "--set schedule.steps=N" in said[0]


def test_one_process_gives_the_losses_of_two_for_the_same_global_batch(torchrun_2, tmp_path):
    """2 ranks x micro batch 1 (FSDP2, gloo; the student file read by rank 0 and broadcast into the shards) vs
    1 process x micro batch 2 (plain load): same weights, samples and draws, so the same losses."""
    out, _ = torchrun_2
    two = _losses(json.loads((out / "summary.json").read_text())["steps"])
    cfg = _cfg(tmp_path, 3, micro_batch=2, student=str(out / "student_init.safetensors"))
    cfg.checkpoint.export = False
    one = _losses(Trainer(cfg).train())
    assert [sorted(m) for m in one] == [sorted(m) for m in two]
    for a, b in zip(one, two):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4), (k, a, b)


def test_an_export_finds_the_files_of_its_recipe_relative_to_the_repository(tmp_path, monkeypatch):
    """A shapes recipe names runs/shapes/... relative to the repository root; the export under
    runs/shapes/<stage>/exports/ finds them from any working directory, and a missing one is named."""
    from safetensors.torch import save_file
    from stream_r1.checkpoint import save_dit_export
    from stream_r1.config import StreamConfig, WanConfig
    from stream_r1.loaders import checkpoint_vae
    from stream_r1.vae import VAEConfig, WanVAE
    from stream_r1.wan.model import WanModel
    vae_file = tmp_path / "runs" / "shapes" / "vae" / "vae.safetensors"
    vae_file.parent.mkdir(parents=True)
    vae = WanVAE(VAEConfig.tiny())
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(vae_file))
    cfg = get_recipe("shapes_stream_r1")
    export = tmp_path / "runs" / "shapes" / "stream_r1" / "exports" / "student_latest.safetensors"
    save_dit_export(export, WanModel(WanConfig.tiny()).init_weights(seed=1).state_dict(), WanConfig.tiny(),
                    StreamConfig.stream_r1(), extra={"training_config": cfg.to_json()})
    monkeypatch.chdir(tmp_path / "runs")
    found = checkpoint_vae(str(export))
    assert all(torch.equal(a, b) for a, b in zip(found.state_dict().values(), vae.state_dict().values()))
    vae_file.unlink()
    with pytest.raises(FileNotFoundError, match=r"trained with runs/shapes/vae/vae.safetensors.*pass --vae"):
        checkpoint_vae(str(export))


def test_the_shuffled_control_keeps_the_weight_statistics_and_every_step_is_logged(tmp_path):
    """Paired arms: a run with reward.control=shuffled sees the same reward weights (per step: W_inter's mean, range
    and effective sample size) as the informed run, only detached from their rollouts, so its generator losses
    differ; metrics.jsonl holds one line per step with ESS and the W_intra spread on every generator step."""
    import json

    def arm(name, control):
        cfg = _cfg(tmp_path / name, 4)
        cfg.reward.control = control
        return Trainer(cfg).train(), tmp_path / name / "metrics.jsonl"

    informed, _ = arm("informed", "none")
    shuffled, log = arm("shuffled", "shuffled")
    gen = [i for i, m in enumerate(informed) if m["generator_step"]]
    assert gen == [i for i, m in enumerate(shuffled) if m["generator_step"]] and gen
    for i in gen[:1]:                                  # the first generator step: same student, same rollouts
        a, b = informed[i], shuffled[i]
        for key in ("w_inter", "w_inter_min", "w_inter_max", "ess", "w_intra_std"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
        assert 1.0 <= a["ess"] <= 2.0
        assert a["gen_loss"] != pytest.approx(b["gen_loss"], rel=1e-9)   # the weights met other rollouts
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(4))
    assert all("ess" in x and "w_intra_std" in x for x in lines if x["generator_step"])


def test_the_reward_checker_correlation_logged_per_micro_batch():
    """reward.log_checker: Spearman(W_inter, the shapes checker's score) over the batch, i.e. r's ranks (W_inter is
    monotone in r). Rendered clips scored by the checker itself give +1; reversed weights -1; one clip nan."""
    import math

    from stream_r1.shapes import check
    from stream_r1.shapes.render import generate
    from training.trainer import _checker_rho

    clips = [generate(seed, 9, width=64, height=64) for seed in range(6)]
    frames = torch.stack([f for f, _ in clips]).float()
    noisy = (frames + 0.35 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    frames = torch.cat([frames[:3], noisy[3:]])                       # spread the checker's scores
    prompts = [s.prompt for _, s in clips]
    score = torch.tensor([check(v, p)["score"] for v, p in zip(frames.unbind(0), prompts)])
    assert len(set(score.tolist())) > 1
    assert _checker_rho(score.view(-1, 1, 1, 1, 1), frames, prompts) == pytest.approx(1.0)
    assert _checker_rho(-score.view(-1, 1, 1, 1, 1), frames, prompts) == pytest.approx(-1.0)
    assert math.isnan(_checker_rho(score[:1].view(1, 1, 1, 1, 1), frames[:1], prompts[:1]))


def test_generator_steps_log_their_phase_times_and_the_checker_runs_on_its_cadence(tmp_path, monkeypatch):
    """metrics.jsonl splits every generator step's wall time into its phases (rollout, teacher/critic scores, the
    decode and the reward weights, the backward), and reward.log_checker_every=N runs the (CPU) checker on every
    Nth generator step only."""
    import json

    import training.trainer as trainer_mod
    calls = []
    monkeypatch.setattr(trainer_mod, "_checker_rho", lambda w, f, p: calls.append(len(p)) or 0.5)
    cfg = _cfg(tmp_path / "run", 6)
    cfg.schedule.generator_every = 1
    cfg.reward.log_checker, cfg.reward.log_checker_every = True, 2
    history = Trainer(cfg).train()
    assert len(calls) == 3                                             # generator steps 0, 2, 4 of 0..5
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    phases = ("seconds_rollout", "seconds_scores", "seconds_decode", "seconds_reward", "seconds_backward")
    for line, m in zip(lines, history):
        assert all(line[p] > 0 for p in phases)
        assert sum(line[p] for p in phases) <= m["seconds"]
    assert [("r_checker" in x) for x in lines] == [True, False, True, False, True, False]


def test_the_batched_decode_equals_one_sample_at_a_time(tmp_path, monkeypatch):
    """Trainer.decode puts as many videos into one VAE call as DECODE_GROUP_PIXELS allows: the same frames as
    decoding them one by one."""
    trainer = Trainer(_cfg(tmp_path / "run", 0))
    x = torch.randn(3, 3, trainer.student.cfg.in_dim, *trainer.latent_hw, generator=torch.Generator().manual_seed(0))
    together = trainer.decode(x)
    monkeypatch.setattr(Trainer, "DECODE_GROUP_PIXELS", 1)             # one video per call
    alone = trainer.decode(x)
    assert together.shape == alone.shape == (3, 9, 3, 8 * trainer.latent_hw[0], 8 * trainer.latent_hw[1])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)

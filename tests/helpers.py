"""Small shared test inputs (fixtures live in conftest.py)."""
from pathlib import Path

import torch


def record_batch_sizes(monkeypatch, owner, name: str) -> list[int]:
    """Wrap `owner.name` (a function or method whose second positional argument is a batched tensor, e.g.
    `StreamingDecoder.decode(self, z)` or `teacher_ode_trajectory(teacher, noise)`): every call appends that
    tensor's batch size to the returned list, then runs the real thing."""
    sizes: list[int] = []
    real = getattr(owner, name)

    def spy(first, batched, *a, **k):
        sizes.append(batched.shape[0])
        return real(first, batched, *a, **k)

    monkeypatch.setattr(owner, name, spy)
    return sizes


def tiny_context(seed: int = 0, n: int = 9, width: int = 32) -> torch.Tensor:
    """A seeded [1, n, width] text context for the tiny model (text_dim 32)."""
    return torch.randn(1, n, width, generator=torch.Generator().manual_seed(seed))


# ---- the shapes world at tiny size (32x32, 9 frames, 2 steps per stage) ---------------------------------------
TINY_WORLD = ["--set", "world.clips=8", "--set", "world.frames=9", "--set", "world.height=32", "--set", "world.width=32",
              "--set", "pretrain.vae_frames=9", "--set", "pretrain.vae_crop=16", "--set", "schedule.steps=2",
              "--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "world.render_workers=1"]
TINY_ROLLOUT = ["--set", "rollout.height=32", "--set", "rollout.width=32", "--set", "rollout.latent_frames=3",
                "--set", "data.shapes_prompts=8", "--set", "schedule.global_batch=2", "--set", "schedule.micro_batch=2"]


def run_training(argv: list[str]) -> int:
    """`python -m training.run ARGV` in this process."""
    from training.run import main
    return main(argv)


def build_shapes_chain(root) -> None:
    """vae -> teacher -> ode_init (cached pairs) -> stream_r1 (synthetic reward) -> bundle, with `root` as cwd:
    runs/shapes/..., summary.json (the Stream-R1 steps) and bundle/."""
    import os
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert run_training(["--recipe", "shapes_vae", *TINY_WORLD, "--set", "schedule.global_batch=2"]) == 0
        assert run_training(["--recipe", "shapes_teacher", *TINY_WORLD, "--set", "schedule.global_batch=2"]) == 0
        assert run_training(["--recipe", "shapes_ode_init", *TINY_WORLD, *TINY_ROLLOUT, "--set", "ode.pairs=2",
                             "--set", "ode.teacher_steps=3"]) == 0
        assert run_training(["--recipe", "shapes_stream_r1", *TINY_WORLD, *TINY_ROLLOUT,
                             "--set", "schedule.generator_every=1", "--set", "reward.path=synthetic",
                             "--set", "log.summary_json=summary.json"]) == 0
        from training.shapes.bundle import main as bundle_main
        assert bundle_main(["--no-eval", "--out", str(root / "bundle")]) == 0
    finally:
        os.chdir(cwd)


def tiny_reward_cfg(tmp):
    """The shapes reward recipe at test size: 8 clips of 9 frames at 32 px, 2 steps of batch 2, output under `tmp`."""
    from training.config import TrainConfig

    tmp = Path(tmp)
    cfg = TrainConfig(method="reward", output_dir=str(tmp / "run"))
    w = cfg.world
    w.clips, w.frames, w.height, w.width, w.cache_dir = 8, 9, 32, 32, str(tmp / "cache")
    cfg.schedule.steps, cfg.schedule.global_batch = 2, 2
    cfg.optim.lr, cfg.optim.betas, cfg.pretrain.warmup_steps = 1e-3, (0.9, 0.999), 1
    cfg.log.progress = False
    return cfg


def train_tiny_reward(root) -> Path:
    """A 2-step shapes reward model (`tiny_reward_cfg`, tiny Qwen2-VL) under `root`; returns its VideoReward
    folder (`<root>/run/reward`)."""
    from stream_r1.reward.qwen2vl_config import Qwen2VLArch
    from training.shapes.reward import train_reward

    return train_reward(tiny_reward_cfg(root), torch.device("cpu"), arch=Qwen2VLArch.tiny())

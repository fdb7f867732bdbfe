"""Recipes: Python functions returning a complete `TrainConfig`. A variant copies one and changes fields.

Paper runs (spec-algorithm §7.1; paths relative to the working directory, as the reference's `checkpoints/`):

* `stream_r1_1.3b`: Stream-R1 - reward-weighted DMD of the causal 1.3B student (ODE init) against the 14B
  teacher (CFG 3, Wan negative prompt) with a 1.3B critic from the base model; VideoReward, beta 2,
  BalancedOverall, spatial/temporal saliency floors 0.15/0.2; 21 latent frames in chunks of 3; critic every
  step, generator every 5th; AdamW 2e-6 / 4e-7, betas (0, 0.999), wd 0.01, clip 10; EMA 0.99; 64 rollouts
  per optimizer step, 1000 steps.
* `dmd_1.3b`: the same without reward weighting (Self-Forcing DMD with Stream-R1's window).
* `ode_init_1.3b`: ODE pairs from the teacher, regressed by the causal student (the init the others need).

Tiny runs (CPU, seconds, random tiny models, hashed prompt embeddings, tiny VAE, synthetic tiny reward):
`tiny_stream_r1`, `tiny_dmd`, `tiny_ode_init`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from .config import TrainConfig

CKPT = "checkpoints"
WAN_1_3B = f"{CKPT}/Wan2.1-T2V-1.3B"


def dmd_1_3b() -> TrainConfig:
    cfg = TrainConfig(name="dmd_1.3b", method="dmd", output_dir="runs/dmd_1.3b")
    m = cfg.model
    m.student, m.teacher, m.critic = f"{CKPT}/ode_init.pt", f"{CKPT}/Wan2.1-T2V-14B", WAN_1_3B
    m.vae = f"{WAN_1_3B}/Wan2.1_VAE.pth"
    cfg.text.encoder = f"{WAN_1_3B}/models_t5_umt5-xxl-enc-bf16.pth"
    cfg.text.tokenizer = f"{WAN_1_3B}/google/umt5-xxl"
    cfg.data.prompt_file = "prompts/vidprom_filtered_extended.txt"
    return cfg


def stream_r1_1_3b() -> TrainConfig:
    cfg = dmd_1_3b()
    cfg.name, cfg.output_dir = "stream_r1_1.3b", "runs/stream_r1_1.3b"
    r = cfg.reward
    r.enabled, r.path, r.beta, r.mode = True, f"{CKPT}/VideoReward", 2.0, "BalancedOverall"
    r.intra, r.spatial_floor, r.temporal_floor = True, 0.15, 0.2
    return cfg


def ode_init_1_3b() -> TrainConfig:
    cfg = dmd_1_3b()
    cfg.name, cfg.method, cfg.output_dir = "ode_init_1.3b", "ode_init", "runs/ode_init_1.3b"
    cfg.model.student = WAN_1_3B                 # the causal student starts from the base 1.3B (no critic)
    cfg.schedule.generator_every = 1
    cfg.schedule.steps = 3000
    return cfg


# ---- tiny: CPU in seconds -----------------------------------------------------------------------------------
def _tiny(cfg: TrainConfig, name: str) -> TrainConfig:
    cfg.name, cfg.output_dir = name, f"runs/{name}"
    m = cfg.model
    m.student = m.teacher = m.critic = "random"
    m.student_arch = m.teacher_arch = m.critic_arch = "tiny"
    m.vae, m.vae_arch, m.attention = "random", "tiny", "sdpa"
    cfg.text.encoder, cfg.text.tokenizer, cfg.text.hash_tokens = "hash", "", 8
    cfg.text.negative_prompt = "blurry, static, low quality"
    cfg.data.prompt_file = ""
    r = cfg.rollout
    r.height, r.width, r.latent_frames = 32, 48, 9              # 3 chunks of 3 latent frames, 4x6 latent grid
    cfg.optim.lr, cfg.optim.critic_lr = 1e-4, 1e-4
    s = cfg.schedule
    s.steps, s.global_batch, s.micro_batch, s.generator_every, s.ema_start_step = 6, 2, 1, 2, 2
    cfg.checkpoint.interval, cfg.checkpoint.keep = 0, 2
    cfg.log.sample_interval = 0
    return cfg


def tiny_dmd() -> TrainConfig:
    return _tiny(TrainConfig(method="dmd"), "tiny_dmd")


def tiny_stream_r1() -> TrainConfig:
    cfg = _tiny(TrainConfig(method="dmd"), "tiny_stream_r1")
    r = cfg.reward
    r.enabled, r.path, r.balance_window, r.balance_warmup = True, "synthetic", 8, 4
    r.checkpointing = False
    return cfg


def tiny_ode_init() -> TrainConfig:
    cfg = _tiny(TrainConfig(method="ode_init"), "tiny_ode_init")
    cfg.ode.teacher_steps = 8
    cfg.schedule.generator_every = 1
    return cfg


RECIPES: dict[str, Callable[[], TrainConfig]] = {
    "stream_r1_1.3b": stream_r1_1_3b, "dmd_1.3b": dmd_1_3b, "ode_init_1.3b": ode_init_1_3b,
    "tiny_stream_r1": tiny_stream_r1, "tiny_dmd": tiny_dmd, "tiny_ode_init": tiny_ode_init,
}


def get_recipe(name: str) -> TrainConfig:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]()


def variant(cfg: TrainConfig, **changes) -> TrainConfig:
    """A copy of `cfg` with top-level fields replaced (sections are copied deeply)."""
    import copy
    return dataclasses.replace(copy.deepcopy(cfg), **changes)

"""Recipes: Python functions returning a complete `TrainConfig`. A variant copies one and changes fields.

Paper runs (spec-algorithm §7.1; paths relative to the working directory, as the reference's `checkpoints/`):

* `stream_r1_1.3b`: Stream-R1 - reward-weighted DMD of the causal 1.3B student (ODE init) against the 14B
  teacher (CFG 3, Wan negative prompt) with a 1.3B critic from the base model; VideoReward, beta 2,
  BalancedOverall, spatial/temporal saliency floors 0.15/0.2; 21 latent frames in chunks of 3; critic every
  step, generator every 5th; AdamW 2e-6 / 4e-7, betas (0, 0.999), wd 0.01, clip 10; EMA 0.99; 64 rollouts
  per optimizer step, 1000 steps.
* `stream_r1_1.3b_reference`: the same with the public code's forms where ours deviate on purpose: row-major
  (scrambled) patch saliency, raw per-axis maps mixed (no per-axis normalisation), text K/V gradient only at exit
  step 0, per-rank BalancedOverall history. Still ours: the exact causal latent mapping of the saliency (the
  public code interpolates trilinearly) and per-sample weights (identical at its batch of 1 per GPU).
* `dmd_1.3b`: the same without reward weighting (Self-Forcing DMD with Stream-R1's window).
* `ode_init_1.3b`: ODE pairs from the teacher, regressed by the causal student (the init the others need).

Shapes world (the embedded default model; `bench/shapes_train.sh` runs them in order on one GPU, outputs under
`runs/shapes/`): `shapes_vae` -> `shapes_teacher` (text encoder + bidirectional teacher) -> `shapes_reward` ->
`shapes_ode_init` -> `shapes_dmd` (baseline) and `shapes_stream_r1`; then `python -m training.shapes.bundle`.

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


def stream_r1_1_3b_reference() -> TrainConfig:
    """The paper's run with the public code's forms of the four knobs where our defaults deviate."""
    cfg = stream_r1_1_3b()
    cfg.name, cfg.output_dir = "stream_r1_1.3b_reference", "runs/stream_r1_1.3b_reference"
    r = cfg.reward
    r.saliency_order, r.normalize_axes, r.balance_sync = "reference", False, False
    cfg.rollout.text_kv_grad = "reference"
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


# ---- shapes world ------------------------------------------------------------------------------------------------
SHAPES = "runs/shapes"
SHAPES_VAE = f"{SHAPES}/vae/vae.safetensors"
SHAPES_TEACHER = f"{SHAPES}/teacher/teacher.safetensors"
SHAPES_TEXT = f"{SHAPES}/teacher/umt5.safetensors"
SHAPES_REWARD = f"{SHAPES}/reward/reward"
SHAPES_ODE = f"{SHAPES}/ode_init/exports/student_latest.safetensors"


def _shapes(cfg: TrainConfig, name: str) -> TrainConfig:
    cfg.name, cfg.output_dir = name, f"{SHAPES}/{name.removeprefix('shapes_')}"
    m = cfg.model
    m.student_arch = m.teacher_arch = m.critic_arch = "shapes-l"      # 9.1M; the 1.8M `shapes` never learned motion
    m.attention = "sdpa"
    r = cfg.rollout
    r.height = r.width = cfg.world.height
    r.latent_frames = (cfg.world.frames - 1) // 4 + 1                  # 45 frames -> 12 latent frames (4 chunks)
    cfg.text.negative_prompt = ""                                       # the teacher's CFG dropout uses ""
    cfg.data.shapes_prompts = 4096
    cfg.world.clips = 2048
    cfg.optim.betas, cfg.optim.weight_decay, cfg.optim.max_grad_norm = (0.9, 0.99), 0.0, 1.0
    cfg.log.interval = 50
    cfg.checkpoint.interval = 0
    return cfg


def shapes_vae() -> TrainConfig:
    cfg = _shapes(TrainConfig(method="vae"), "shapes_vae")
    cfg.optim.lr = 3e-4                                                # 1e-3 spiked and stalled at ~8 dB on the CPU
    cfg.pretrain.vae_edge_weight = 40.0                                # outlines, or every shape decodes as a blob
    s = cfg.schedule
    s.steps, s.global_batch = 800, 32              # 45-frame crops: 0.6 s/step on an H200 (8 min); the gate passed at 718
    return cfg


def shapes_teacher() -> TrainConfig:
    cfg = _shapes(TrainConfig(method="teacher"), "shapes_teacher")
    cfg.model.vae = SHAPES_VAE
    cfg.optim.lr, cfg.optim.weight_decay = 5e-4, 0.01
    s = cfg.schedule
    # 3,500 steps at 0.154 s/step on one H200 (9.5 min with the bank and the check; 2026-11-22: checker colour
    # 0.59, motion 0.25; the 1,600-step `shapes` teacher scored 0 and a 3,800-step one colour 0.22, motion 0)
    s.steps, s.global_batch, s.ema_decay, s.ema_start_step = 3500, 128, 0.999, 300
    return cfg


def shapes_reward() -> TrainConfig:
    # ~2 min of one H200: the first trainer ran 1.3 s/step (launch-bound: 2,816 ViT attention calls per block and
    # a dense AdamW over the 19.4M-entry embedding), the batched one is predicted at ~0.15 s/step (12x fewer ops;
    # bench/SHAPES.md 2026-11-22 CPU profile). 700 x 32 clips = 12 epochs of the 1,792 training clips, each with
    # fresh negatives. The model is 0.58M trained parameters at width 128: lr 1e-3 (CPU check at batch 8: stable,
    # training VQ accuracy ~0.75 after 120 steps but the loss still near 3 ln 2), short warmup so most steps run
    # near the peak. Learning is slow, not fast: 700 steps is a prediction, to be confirmed on the GPU.
    cfg = _shapes(TrainConfig(method="reward"), "shapes_reward")
    cfg.optim.lr, cfg.optim.betas = 1e-3, (0.9, 0.999)
    cfg.pretrain.warmup_steps = 50
    s = cfg.schedule
    s.steps, s.global_batch = 700, 32
    return cfg


def _shapes_student(cfg: TrainConfig, name: str) -> TrainConfig:
    cfg = _shapes(cfg, name)
    m = cfg.model
    m.teacher, m.vae = SHAPES_TEACHER, SHAPES_VAE
    cfg.text.encoder = SHAPES_TEXT
    cfg.parallel.activation_checkpointing = False
    cfg.checkpoint.keep = 1
    return cfg


def shapes_ode_init() -> TrainConfig:
    cfg = _shapes_student(TrainConfig(method="ode_init"), "shapes_ode_init")
    cfg.model.student = SHAPES_TEACHER               # the causal student starts from the (bidirectional) base model
    cfg.ode.teacher_steps, cfg.ode.guidance_scale, cfg.ode.pairs = 24, 2.0, 2048
    cfg.optim.lr = 2e-4
    s = cfg.schedule
    s.steps, s.global_batch, s.micro_batch, s.generator_every = 1000, 32, 32, 1
    s.ema_decay, s.ema_start_step = 0.995, 200
    return cfg


def shapes_dmd() -> TrainConfig:
    cfg = _shapes_student(TrainConfig(method="dmd"), "shapes_dmd")
    m = cfg.model
    m.student, m.critic = SHAPES_ODE, SHAPES_TEACHER
    cfg.dmd.guidance_scale = 2.0
    cfg.optim.lr, cfg.optim.critic_lr = 2e-5, 1e-4
    cfg.optim.betas = (0.0, 0.999)
    s = cfg.schedule
    # 500 steps = 100 generator updates; on one H200 (2026-11-22) DMD ran 0.38 s/step and Stream-R1 0.63 s/step
    # (reward + saliency), so both fit one device call side by side (bench/shapes_chain_x2.sh with GPUS="0 0")
    s.steps, s.global_batch, s.micro_batch, s.generator_every = 500, 16, 16, 5
    s.ema_decay, s.ema_start_step = 0.99, 50
    return cfg


def shapes_stream_r1() -> TrainConfig:
    cfg = shapes_dmd()
    cfg.name, cfg.output_dir = "shapes_stream_r1", f"{SHAPES}/stream_r1"
    r = cfg.reward
    r.enabled, r.path, r.beta, r.mode = True, SHAPES_REWARD, 2.0, "BalancedOverall"
    r.intra, r.spatial_floor, r.temporal_floor = True, 0.15, 0.2
    r.checkpointing, r.inter_norm = False, "batch"     # our reward is calibrated on rendered clips, not students
    # inter_norm='batch' divides W_inter by its batch mean, which cancels BalancedOverall's penalty exactly (one
    # factor exp(-beta lambda p) on every rollout; tests/test_saliency_weights.py): this recipe trains as Overall.
    # Kept rather than the paper's unnormalised exp(beta r): the shapes reward's z-scores sit far from 0 on
    # student videos, so exp(2 r) would rescale the generator's learning rate by the reward's calibration; and the
    # shipped shapes bundle was trained (and measured) with exactly these values.
    return cfg


def _shapes_arm(name: str, reward: bool, control: str = "none") -> TrainConfig:
    """One arm of the paired test of reward weighting (bench/shapes_arms.sh, bench/SHAPES.md): from the same ODE
    student, the same seeds and prompts, 1,000 steps = 200 generator updates. The reward arms weight DMD by the
    analytic shapes reward (saliency on the pixels), beta 1.5 (an effective sample size of half the batch of 16 on
    the starting student's rollouts: `python -m training.shapes.gate`), W_inter divided by its batch mean so the
    arms differ in how the weights are spread over rollouts, not in the step size; `control` = shuffled: the same
    weights detached from their rollouts. Mode Overall: under the batch mean BalancedOverall is Overall exactly."""
    cfg = shapes_dmd()
    cfg.name, cfg.output_dir = name, f"{SHAPES}/arms/{name.removeprefix('shapes_arm_')}"
    cfg.schedule.steps = 1000
    cfg.log.interval = 5
    if reward:
        r = cfg.reward
        r.enabled, r.path, r.target, r.beta, r.mode = True, "analytic-shapes", "pixels", 1.5, "Overall"
        r.intra, r.inter_norm, r.control, r.log_checker, r.checkpointing = True, "batch", control, True, False
        r.log_checker_every = 10           # 20 readings of Spearman(r, checker) over the run (16 rollouts each); 16
                                           # clips cost ~2-3 s of CPU checker time a reading (H100 probe, 2026-12-07)
    return cfg


def shapes_arm_dmd() -> TrainConfig:
    return _shapes_arm("shapes_arm_dmd", reward=False)


def shapes_arm_stream_r1() -> TrainConfig:
    return _shapes_arm("shapes_arm_stream_r1", reward=True)


def shapes_arm_shuffled() -> TrainConfig:
    return _shapes_arm("shapes_arm_shuffled", reward=True, control="shuffled")


RECIPES: dict[str, Callable[[], TrainConfig]] = {
    "shapes_vae": shapes_vae, "shapes_teacher": shapes_teacher, "shapes_reward": shapes_reward,
    "shapes_ode_init": shapes_ode_init, "shapes_dmd": shapes_dmd, "shapes_stream_r1": shapes_stream_r1,
    "shapes_arm_dmd": shapes_arm_dmd, "shapes_arm_stream_r1": shapes_arm_stream_r1,
    "shapes_arm_shuffled": shapes_arm_shuffled,
    "stream_r1_1.3b": stream_r1_1_3b, "stream_r1_1.3b_reference": stream_r1_1_3b_reference, "dmd_1.3b": dmd_1_3b,
    "ode_init_1.3b": ode_init_1_3b,
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

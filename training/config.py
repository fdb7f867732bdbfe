"""The training configuration: one tree of dataclasses whose field defaults are the only defaults.

A run is `recipe() -> TrainConfig`, then optional `--config file.toml|yaml` and `--set a.b=value` overrides,
each checked against the field names and types (unknown keys are errors that list the valid ones). The
resolved tree is logged at start and saved as JSON next to every checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from stream_r1.config import StreamConfig

WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走")
"""Wan2.1's standard negative prompt (shared_config.sample_neg_prompt), the teacher's unconditional branch."""


@dataclass(kw_only=True)
class ModelConfig:
    """Where the networks come from. A path is a file or folder any `stream_r1` loader accepts."""

    student: str = "random"
    """Causal student init: a DiT checkpoint (the ODE-init `.pt`, an export, ...) or 'random' (seeded init of
    `student_arch`, for tests and speed runs)."""
    student_arch: str = "1.3b"
    """WanConfig preset of a random student ('1.3b', '14b', 'tiny', 'tiny-comfy')."""
    teacher: str = "random"
    """Frozen bidirectional teacher ('real score'): checkpoint or 'random'."""
    teacher_arch: str = "14b"
    """WanConfig preset of a random teacher."""
    critic: str = "random"
    """Trainable bidirectional critic ('fake score'), initialised from the base model: checkpoint or 'random'."""
    critic_arch: str = "1.3b"
    """WanConfig preset of a random critic."""
    vae: str = "random"
    """Wan2.1 VAE file, 'random' (seeded random VAE of `vae_arch`) or 'none' (no decode: no reward, no videos)."""
    vae_arch: Literal["wan21", "tiny"] = "wan21"
    """VAEConfig preset of a random VAE."""
    seed: int = 0
    """Seed of every random init (student seed, critic seed + 1, teacher seed + 2, VAE seed + 3)."""
    attention: str = "auto"
    """Attention backend of the DiTs: 'auto', 'sdpa', 'cudnn', 'flash'."""


@dataclass(kw_only=True)
class TextConfig:
    """Prompt embeddings."""

    encoder: str = "hash"
    """umT5 file/folder (Wan .pth, HF or ComfyUI safetensors), or 'hash': deterministic hashed stand-in
    embeddings (`stream_r1.loaders.prompt_embedding`) for tiny models without a text encoder."""
    tokenizer: str = ""
    """spiece.model or the google/umt5-xxl folder when the encoder file carries no tokenizer ('' = find it)."""
    hash_tokens: int = 16
    """Tokens of each hashed embedding."""
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    """Unconditional prompt of the teacher's classifier-free guidance."""
    cache_size: int = 4096
    """Per-rank LRU cache of prompt embeddings (the encoder is replicated, never sharded: see trainer.py)."""


@dataclass(kw_only=True)
class DataConfig:
    """Prompts (data-free distillation: prompts only)."""

    prompt_file: str = ""
    """UTF-8 text file, one prompt per line (no empty lines); '' = shapes-world prompts (see `shapes_prompts`)."""
    shapes_prompts: int = 0
    """With no prompt file: 0 = the 16 built-in prompts of the tiny runs; N = N prompts drawn from the shapes
    world's distribution (scene seeds `prompt_seed` ...)."""
    prompt_seed: int = 500000
    """First scene seed of the shapes-world prompts (far from the clip bank's seeds)."""
    shuffle: bool = True
    """Reshuffle the prompt order every epoch (deterministic from `schedule.seed` and the epoch)."""


@dataclass(kw_only=True)
class RolloutConfig:
    """The self-forcing rollout: video size and the student's chunked sampler (same knobs as inference)."""

    height: int = 480
    """Video height in pixels (multiple of 16)."""
    width: int = 832
    """Video width in pixels (multiple of 16)."""
    latent_frames: int = 21
    """Latent frames per rollout (21 -> 81 video frames); a multiple of `frames_per_block`."""
    frames_per_block: int = 3
    """Latent frames per causal chunk."""
    denoising_steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    """The student's steps (warped with `timestep_shift`: 1000/937.5/833.3/625)."""
    warp_denoising_step: bool = True
    """Map each step s to grid[1000 - s] of the shifted schedule."""
    timestep_shift: float = 5.0
    """Shift of the student's flow-matching schedule."""
    cache_policy: Literal["window_sink", "full", "longlive"] = "window_sink"
    """Attention pattern of the rollout (window_sink: sink + window with window-relative RoPE, as Stream-R1)."""
    window_frames: int = 9
    """Attended latent frames incl. the sink (`local_attn_size`)."""
    sink_frames: int = 3
    """Sink frames (the first chunk)."""
    context_noise: float = 0.0
    """Timestep of the clean pass that writes a finished chunk's K/V."""
    context_pass_noise: bool = True
    """Noise the context-pass input at the grid sigma nearest to `context_noise` (sigma 0.00498 for t=0) while
    telling the model t=context_noise, as Self-Forcing training does (spec-models §2.8); False = inference."""
    exit_step: int = -1
    """Gradient (exit) step index; -1 = uniform random per micro-step, shared by all chunks and ranks."""
    text_kv_grad: Literal["every_call", "reference"] = "every_call"
    """Gradient into the cross-attention text K/V: 'every_call' = every exit forward recomputes them with gradient
    (cross-attention k/v weights learn from every rollout); 'reference' = the public code's cached K/V, assigned
    by the rollout's first call, which carries gradient only when the exit step is 0 (training/rollout.py)."""

    def stream_config(self) -> StreamConfig:
        """The inference settings this rollout trains for (written into the export)."""
        return StreamConfig(frames_per_block=self.frames_per_block, denoising_steps=tuple(self.denoising_steps),
                            warp_denoising_step=self.warp_denoising_step, timestep_shift=self.timestep_shift,
                            cache_policy=self.cache_policy, window_frames=self.window_frames,
                            sink_frames=self.sink_frames if self.cache_policy != "full" else 0,
                            full_cache_frames=max(21, self.latent_frames), context_noise=self.context_noise)


@dataclass(kw_only=True)
class DMDConfig:
    """Distribution matching (generator) and the critic's denoising loss."""

    guidance_scale: float = 3.0
    """Teacher CFG as cond + g * (cond - uncond) (classic w = g + 1)."""
    min_timestep: float = 20.0
    """Clamp of the score timestep (2% of 1000)."""
    max_timestep: float = 980.0
    """Clamp of the score timestep (98% of 1000)."""
    timestep_shift: float = 5.0
    """Shift applied to the uniform draw t ~ U{0..999}: tau = 1000 * s u / (1 + (s - 1) u)."""
    sigma: Literal["continuous", "grid"] = "continuous"
    """sigma of a score timestep: tau / 1000 everywhere (spec §8.10 fix) or the nearest entry of the student's
    shift grid (the reference's noising; its teacher/critic shift-8 lookups are not reproduced)."""


@dataclass(kw_only=True)
class RewardConfig:
    """Stream-R1's reward weighting of the DMD loss (W_inter per rollout, W_intra per frame and pixel)."""

    enabled: bool = False
    """Weight the generator loss with the reward model (False = plain DMD)."""
    path: str = ""
    """VideoReward folder (model_config.json + checkpoint-*/), or 'synthetic' (seeded tiny VideoReward with the
    real layout, built in memory) or 'synthetic-2b' (random weights at Qwen2-VL-2B size, for speed runs), or
    'analytic-shapes' (the shapes world's differentiable analytic reward; needs target 'pixels')."""
    beta: float = 2.0
    """W_inter = exp(beta * r)."""
    mode: Literal["VQ", "MQ", "TA", "Overall", "BalancedOverall"] = "BalancedOverall"
    """Reward signal r (spec §4.3)."""
    clip: Optional[float] = None
    """Clamp |r| before the exponential (§8.6); None = unbounded (reference)."""
    inter_norm: Literal["none", "batch"] = "none"
    """'none' = W_inter = exp(beta r) as the paper; 'batch' = divided by its mean over the global batch (all ranks),
    so only the ranking of rollouts matters, not the reward's absolute calibration (a reward whose z-scores sit
    far from 0 on student videos would otherwise rescale the generator's learning rate)."""
    control: Literal["none", "shuffled"] = "none"
    """`shuffled`: the uninformed control arm of a paired test: the same W_inter and W_intra values, detached from
    their rollouts (W_inter deranged within the micro-batch, W_intra maps moved one sample along; seeded by step)."""
    log_checker: bool = False
    """Shapes world: log Spearman(r, analytic checker score) over the generator micro-batch (`r_checker`)."""
    log_checker_every: int = 1
    """With log_checker: on every Nth generator step only (the checker runs on the CPU, ~0.4 s per 45-frame clip)."""
    balance_window: int = 50
    """BalancedOverall history length per axis."""
    balance_warmup: int = 50
    """BalancedOverall: generator micro-steps before the penalty applies."""
    balance_lambda: float = 0.5
    """BalancedOverall penalty weight."""
    balance_sync: bool = True
    """All-reduce the balance history over ranks (every rank applies the same penalty)."""
    intra: bool = True
    """Compute W_intra from reward saliency (False = W_inter only, one no-grad reward forward)."""
    spatial_floor: float = 0.15
    """sigma_min of the spatial weights."""
    temporal_floor: float = 0.2
    """tau_min of the temporal weights."""
    spatial_strength: float = 1.0
    """alpha_s."""
    temporal_strength: float = 1.0
    """alpha_t."""
    combine: Literal["adaptive", "max", "mean"] = "adaptive"
    """How the per-axis saliency maps mix."""
    temperature: float = 1.0
    """T_s of the adaptive softmax."""
    normalize_axes: bool = True
    """Divide each axis map by its mean before mixing (§8.4 fix); False = reference."""
    target: Literal["patches", "pixels"] = "patches"
    """Saliency target: ViT patch rows (reference granularity) or decoded pixels."""
    saliency_order: Literal["image", "reference"] = "image"
    """Patch order of the saliency maps (target 'patches'): 'image' = each patch where it is in the frame;
    'reference' = the public code's row-major view (spec-algorithm §8.1: spatially scrambled, but what the released
    checkpoint was trained with), for an exact reproduction of the paper's run. Temporal weights are the same."""
    frames: Literal["all", "fps"] = "all"
    """Reward input frames: all (reference) or uniform 2-fps sampling (§8.3)."""
    odd_frames: Literal["drop", "pad"] = "drop"
    """An odd frame count (81): drop the last frame (reference, transformers 4.45) or repeat it (transformers 5)."""
    checkpointing: bool = True
    """Recompute reward-model activations in the saliency backward passes."""


@dataclass(kw_only=True)
class ODEConfig:
    """ODE initialisation: teacher ODE pairs regressed by the causal student."""

    teacher_steps: int = 48
    """Euler steps of the teacher's probability-flow ODE (the student's sigmas are always on the path)."""
    guidance_scale: float = 3.0
    """Teacher CFG of the ODE, cond + g * (cond - uncond)."""
    pairs: int = 0
    """0 = a fresh teacher trajectory for every sample; N = a fixed set of N (prompt, noise) pairs, each
    trajectory computed once and reused every epoch (sample position p uses pair p mod N)."""


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW for the generator (student) and the critic; constant learning rates."""

    lr: float = 2e-6
    """Generator learning rate."""
    critic_lr: float = 4e-7
    """Critic learning rate."""
    betas: tuple[float, float] = (0.0, 0.999)
    """Adam betas of both optimizers."""
    weight_decay: float = 0.01
    """Decoupled weight decay of both optimizers."""
    eps: float = 1e-8
    """Adam epsilon."""
    max_grad_norm: float = 10.0
    """Global L2 clip of the generator gradients (0 = off)."""
    critic_max_grad_norm: float = 10.0
    """Global L2 clip of the critic gradients (0 = off)."""


@dataclass(kw_only=True)
class ScheduleConfig:
    """Step accounting. Every interval is in optimizer steps (spec §8.11)."""

    steps: int = 1000
    """Optimizer steps of the run."""
    global_batch: int = 64
    """Rollouts per optimizer step and network, over all ranks and accumulation micro-steps."""
    micro_batch: int = 1
    """Rollouts per rank and micro-step; accumulation = global_batch / (world_size * micro_batch)."""
    generator_every: int = 5
    """The generator is updated on optimizer steps k with k % generator_every == 0; the critic on every step."""
    ema_decay: float = 0.99
    """EMA of the student: shadow <- decay * shadow + (1 - decay) * theta after each generator update."""
    ema_start_step: int = 25
    """Optimizer steps after which the EMA is created from the live weights (25 = the reference's micro-step
    200 at 8 accumulation steps); 0 = from the start."""
    seed: int = 0
    """Base seed: every draw (noise, exit step, score timestep, prompt order) is derived from it, the step and
    the global sample index, so results do not depend on the process layout."""

    def is_generator_step(self, k: int) -> bool:
        """Optimizer step k (0-based) updates the generator (k = 0, 5, 10, ... at generator_every 5)."""
        return k % self.generator_every == 0

    def ema_due(self, steps_done: int) -> bool:
        """The EMA exists once this many optimizer steps are done (created right after step ema_start_step - 1)."""
        return steps_done >= self.ema_start_step

    def accumulation(self, world_size: int) -> int:
        per = world_size * self.micro_batch
        if self.global_batch % per:
            raise ValueError(f"schedule.global_batch={self.global_batch} is not divisible by world_size * "
                             f"micro_batch = {world_size} * {self.micro_batch}; use a global batch that is a "
                             f"multiple of {per} (e.g. {max(per, self.global_batch // per * per)})")
        return self.global_batch // per


@dataclass(kw_only=True)
class ParallelConfig:
    """FSDP2, precision and activation checkpointing."""

    fsdp: bool = True
    """fully_shard each transformer block, then the root, when a process group exists."""
    mixed_precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute dtype: auto = bf16 on GPU (fp32 params, fp32 gradient reduce), fp32 on CPU."""
    activation_checkpointing: bool = True
    """Recompute each transformer block in backward (student exit steps and critic)."""
    reshard_after_forward: bool = True
    """FSDP: free gathered parameters after each block's forward (ZeRO-3)."""
    replicate: int = 1
    """HSDP: replicate over this many groups and shard inside each (e.g. the node count, as the reference's
    HYBRID_SHARD); 1 = shard over all ranks."""


@dataclass(kw_only=True)
class CheckpointConfig:
    """Distributed checkpoints (full training state) and safetensors exports of the EMA student."""

    enabled: bool = True
    """Write checkpoints and exports at all (False for speed runs)."""
    interval: int = 200
    """Save every this many optimizer steps (and at the end and on SIGTERM); 0 = only then."""
    keep: int = 3
    """Keep the newest K checkpoints."""
    resume: str = "auto"
    """'auto' (newest checkpoint in output_dir/checkpoints, if any), 'none', or a checkpoint folder."""
    export: bool = True
    """Write the EMA student (the live student before the EMA exists) as safetensors with every checkpoint."""

    def due(self, steps_done: int, total_steps: int) -> bool:
        """Save after this many optimizer steps? (every `interval`, and at the end.)"""
        if not self.enabled:
            return False
        return steps_done >= total_steps or (self.interval > 0 and steps_done % self.interval == 0)


@dataclass(kw_only=True)
class LogConfig:
    """Observability (rank 0)."""

    interval: int = 1
    """One log line every this many optimizer steps."""
    tensorboard: bool = True
    """Write TensorBoard events when torch.utils.tensorboard is importable (never required)."""
    progress: bool = True
    """tqdm progress bar."""
    sample_interval: int = 50
    """Write the latest generator rollout as a video (and saliency pictures) every N steps; 0 = never."""
    summary_json: str = ""
    """Write per-step seconds and peak memory of every rank as JSON here at the end ('' = no)."""
    metrics_jsonl: bool = True
    """Append every step's metrics as one JSON line to <output_dir>/metrics.jsonl (rank 0)."""


@dataclass(kw_only=True)
class WorldConfig:
    """Shapes-world clips (rendered by `stream_r1.shapes`, deterministic from `clip_seed` and the clip index)."""

    clips: int = 4096
    """Clips in the bank every shapes-world recipe draws from (rendered once, cached under `cache_dir`)."""
    frames: int = 45
    """Frames per clip (1 + 4k; 45 -> 12 latent frames, 2.8 s at 16 fps)."""
    height: int = 96
    """Clip height in pixels (multiple of 16)."""
    width: int = 96
    """Clip width in pixels (multiple of 16)."""
    fps: int = 16
    """Frame rate of the clips (and of the videos the bundle generates)."""
    clip_seed: int = 1000
    """Scene seed of clip i is clip_seed + i."""
    supersample: int = 2
    """Anti-aliasing of the renderer."""
    cache_dir: str = "runs/shapes_world"
    """Where the rendered bank (uint8) and encoded latents are cached ('' = no cache)."""
    render_workers: int = 0
    """CPU processes rendering the bank (0 = one per core, at most 32); clips are identical whatever the count."""


@dataclass(kw_only=True)
class PretrainConfig:
    """Shapes-world pretraining (methods vae / teacher / reward): sizes and loss weights."""

    vae_dim: int = 12
    """Base width of the Wan-architecture VAE (real key names; 12 -> 2.0M parameters)."""
    vae_frames: int = 45
    """Frames per VAE training crop (1 + 4k). Must cover the causal receptive field (~40 frames): a VAE trained on
    13-frame crops reconstructs them at 20 dB and collapses to 3 dB after frame 13 of a longer clip."""
    vae_fg_weight: float = 10.0
    """Loss weight of foreground pixels (farther than 0.1 from the clip's median colour): shapes cover ~3 % of a
    frame, and an unweighted VAE first learns to draw the background alone (the 2026-11-22 attempt did)."""
    vae_edge_weight: float = 0.0
    """Extra loss weight on a +-2 px band around each shape's outline (`outline_band`). With only the foreground weight
    the VAE draws every kind as a blob (the 2026-11-22 VAE: checker shape 0.26 on reconstructions, originals 0.96);
    fine-tuning it on single frames with weight 40 here reached 0.45 in 1,200 CPU steps, against 0.25 with the
    foreground weight alone and 0.27 with that weight at 40 (bench/SHAPES.md, 2026-12-07)."""
    vae_init: str = ""
    """Start the VAE from this file (fine-tuning) instead of a seeded random init."""
    vae_crop: int = 48
    """Spatial crop of the VAE training clips in pixels (multiple of 8; the VAE is convolutional)."""
    vae_kl: float = 1e-4
    """Weight of 0.5 * mean(z^2) on the normalised latents (keeps them near unit scale for the DiT)."""
    vae_latent_noise: float = 0.03
    """Std of the noise added to normalised latents before decoding (a decoder robust to DiT error)."""
    text_dim: int = 64
    """umT5 d_model (= the DiTs' text_dim)."""
    text_layers: int = 2
    """umT5 encoder layers."""
    text_heads: int = 4
    """umT5 heads (d_kv = text_dim / heads)."""
    text_ff: int = 128
    """umT5 gated-GELU width."""
    text_lr: float = 3e-4
    """Learning rate of the text encoder (trained jointly with the teacher)."""
    cfg_dropout: float = 0.1
    """Probability that the teacher sees the empty prompt (classifier-free guidance)."""
    reward_margin_weight: float = 0.1
    """Reward model: weight of the penalty keeping the untargeted axes equal for prompt-mismatch pairs."""
    warmup_steps: int = 100
    """Linear learning-rate warmup of the pretraining optimizers."""


@dataclass(kw_only=True)
class TrainConfig:
    """A whole run."""

    name: str = "run"
    """Run name (log lines, TensorBoard)."""
    method: Literal["dmd", "ode_init", "vae", "teacher", "reward"] = "dmd"
    """dmd: self-forcing DMD with a critic (Stream-R1 when reward.enabled); ode_init: regress teacher ODE pairs;
    vae / teacher / reward: shapes-world pretraining (`training/shapes`) of the VAE, the text encoder + the
    bidirectional teacher, and the 3-axis reward model."""
    output_dir: str = "runs/run"
    """Checkpoints, exports, samples, logs and config.json go here."""
    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    dmd: DMDConfig = field(default_factory=DMDConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ode: ODEConfig = field(default_factory=ODEConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def validate(self, world_size: int = 1) -> None:
        """Raise ValueError naming the fix for inconsistent settings (called after all overrides)."""
        r, s = self.rollout, self.schedule
        from stream_r1.config import check_resolution
        check_resolution(r.height, r.width)
        if r.latent_frames < 1 or r.latent_frames % r.frames_per_block:
            raise ValueError(f"rollout.latent_frames={r.latent_frames} must be a positive multiple of "
                             f"frames_per_block={r.frames_per_block}")
        if not -1 <= r.exit_step < len(r.denoising_steps):
            raise ValueError(f"rollout.exit_step must be -1 (random) or in 0..{len(r.denoising_steps) - 1}")
        r.stream_config()                                   # StreamConfig's own checks
        if s.steps < 0 or s.generator_every < 1 or s.micro_batch < 1 or s.global_batch < 1:
            raise ValueError("schedule.steps >= 0, generator_every >= 1, micro_batch >= 1, global_batch >= 1")
        s.accumulation(world_size)
        if self.parallel.replicate < 1 or world_size % self.parallel.replicate:
            raise ValueError(f"parallel.replicate={self.parallel.replicate} must divide the world size {world_size}")
        if not 0.0 <= s.ema_decay < 1.0:
            raise ValueError(f"schedule.ema_decay must be in [0, 1), got {s.ema_decay}")
        if self.reward.enabled and self.method != "dmd":
            raise ValueError("reward.enabled needs method='dmd' (the reward weights the DMD generator loss)")
        if self.reward.enabled and self.model.vae == "none":
            raise ValueError("reward.enabled needs a VAE to decode rollouts: set model.vae to a file or 'random'")
        if self.reward.enabled and not self.reward.path:
            raise ValueError("reward.enabled needs reward.path (a VideoReward folder, 'synthetic' or 'analytic-shapes')")
        if self.reward.log_checker_every < 1:
            raise ValueError(f"reward.log_checker_every must be >= 1, got {self.reward.log_checker_every}")
        if self.reward.enabled and self.reward.path == "analytic-shapes" and self.reward.target != "pixels":
            raise ValueError("reward.path=analytic-shapes scores decoded pixels (it has no ViT patches): set "
                             "reward.target=pixels")
        if self.method in ("vae", "teacher", "reward"):
            w = self.world
            check_resolution(w.height, w.width)
            if w.frames < 1 or (w.frames - 1) % 4 or self.pretrain.vae_frames > w.frames or (self.pretrain.vae_frames - 1) % 4:
                raise ValueError(f"world.frames={w.frames} and pretrain.vae_frames={self.pretrain.vae_frames} must be "
                                 "1 + 4k with vae_frames <= frames (the VAE compresses time 4x after the first frame)")
            if self.pretrain.text_dim % self.pretrain.text_heads:
                raise ValueError(f"pretrain.text_dim={self.pretrain.text_dim} must be divisible by text_heads")
        if self.checkpoint.keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {self.checkpoint.keep}")

    # ---- (de)serialisation ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        cfg = cls()
        apply_mapping(cfg, d)
        return cfg


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


# ---- overrides --------------------------------------------------------------------------------------------------
def _fields(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _where(path: str) -> str:
    return f"'{path}'" if path else "the top level"


def _resolve(cfg: Any, dotted: str) -> tuple[Any, str, Any]:
    """'a.b.c' -> (owner dataclass, field name, annotated type); unknown keys name the valid ones."""
    parts = dotted.split(".")
    obj, trail = cfg, ""
    for i, name in enumerate(parts):
        fields = _fields(obj)
        if name not in fields:
            raise ValueError(f"unknown config key {dotted!r}: {_where(trail)} has no field {name!r}; valid: "
                             f"{', '.join(sorted(fields))}")
        if i == len(parts) - 1:
            return obj, name, fields[name]
        obj = getattr(obj, name)
        if not dataclasses.is_dataclass(obj):
            raise ValueError(f"config key {dotted!r}: {'.'.join(parts[:i + 1])!r} is a value, not a section")
        trail = ".".join(parts[:i + 1])
    raise AssertionError


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert `value` (a string from --set, or a TOML/YAML value) to the annotated type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:                                    # Optional[X]
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{key} must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{key} takes a list (comma-separated on the command line), got {value!r}")
        elem = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, elem, key) for v in items)
        if len(items) != len(args):
            raise ValueError(f"{key} takes {len(args)} values, got {len(items)}: {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(items, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.strip().lower() in ("true", "1", "yes", "on")
        raise ValueError(f"{key} takes true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"{key} takes an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{key} takes an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{key} takes a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{key} takes a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{key} takes a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def set_value(cfg: Any, dotted: str, value: Any) -> None:
    """Set one field of the tree `cfg` by its dotted name; a mapping sets the fields of a section."""
    owner, name, tp = _resolve(cfg, dotted)
    section = getattr(owner, name)
    if dataclasses.is_dataclass(section):
        if not isinstance(value, dict):
            names = list(_fields(section))
            raise ValueError(f"config key {dotted!r} is a section with fields {', '.join(names)}; set one of "
                             f"them, e.g. {dotted}.{names[0]}=...")
        for k, v in value.items():
            set_value(cfg, f"{dotted}.{k}", v)
        return
    setattr(owner, name, _coerce(value, tp, dotted))


def apply_mapping(cfg: Any, d: dict[str, Any]) -> None:
    """Apply a nested mapping (TOML/YAML/JSON) to the config tree, with the same checks as --set."""
    for k, v in d.items():
        set_value(cfg, k, v)


def apply_overrides(cfg: "TrainConfig", items: list[str]) -> None:
    """`--set a.b=value` items."""
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set takes key=value (e.g. optim.lr=2e-6), got {item!r}")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value)


def load_config_file(cfg: "TrainConfig", path: str | Path) -> None:
    """Apply a .toml, .yaml/.yml or .json file of overrides."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    text = path.read_bytes()
    if path.suffix == ".toml":
        import tomllib
        data = tomllib.loads(text.decode("utf-8"))
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or use a .toml file") from None
        data = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise ValueError(f"config file {path} must end in .toml, .yaml, .yml or .json")
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config sections, got {type(data).__name__}")
    apply_mapping(cfg, data)

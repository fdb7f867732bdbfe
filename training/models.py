"""Build the networks of a run (student, critic, teacher, VAE, reward model) and the student's EMA.

DiTs come from any file `stream_r1.checkpoint.load_dit_checkpoint` reads, or a seeded random init. With a
process group they are sharded with FSDP2 (`parallel.apply_fsdp`); a checkpoint is then read by rank 0 only
and broadcast into the shards (`set_model_state_dict(..., broadcast_from_rank0=True)`), so a 14B teacher is
held once per host, not once per rank.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from stream_r1.config import WanConfig
from stream_r1.wan.model import WanModel

from . import parallel
from .config import ParallelConfig, RewardConfig
from .parallel import DistInfo

log = logging.getLogger(__name__)

WRAPPER_INFIX = "_checkpoint_wrapped_module."


def check_model_path(key: str, value: str, allowed: tuple[str, ...] = ("random",)) -> None:
    if value in allowed:
        return
    if not value or not Path(value).expanduser().exists():
        raise FileNotFoundError(f"{key}: {value!r} does not exist; give a checkpoint file/folder or one of "
                                f"{list(allowed)}")


def build_dit(spec: str, arch: str, *, seed: int, info: DistInfo, mesh, pcfg: ParallelConfig,
              param_dtype: torch.dtype, compute_dtype: torch.dtype, trainable: bool, attention: str) -> WanModel:
    """A WanModel from a checkpoint or a seeded random init, optionally checkpoint-wrapped and FSDP-sharded.

    Trainable models keep `param_dtype` (fp32) master weights and compute in `compute_dtype` through FSDP's
    mixed precision; frozen models are stored in `compute_dtype`.
    """
    store = param_dtype if trainable else compute_dtype
    use_fsdp = mesh is not None
    sd: Optional[dict[str, Tensor]] = None
    if spec == "random":
        cfg = WanConfig.preset(arch)
        with torch.device("meta"):
            model = WanModel(cfg, attention=attention).to(store)
        model.to_empty(device=info.device).init_weights(seed=seed)      # init_weights sets every parameter
    else:
        from stream_r1.checkpoint import load_dit_checkpoint
        ck = load_dit_checkpoint(spec) if (info.is_main or not use_fsdp) else None
        cfg = _broadcast_config(ck.config if ck is not None else None, use_fsdp)
        with torch.device("meta"):
            model = WanModel(cfg, attention=attention)
        if not use_fsdp:
            model.load_state_dict(ck.state_dict, strict=True, assign=True)
            model = model.to(device=info.device, dtype=store)
        else:
            sd = {k: v.to(store) for k, v in ck.state_dict.items()} if ck is not None else {}
        log.info("%s: %s (%s)", spec, cfg, "trainable" if trainable else "frozen")
    model.requires_grad_(trainable)
    model.eval()                                           # no dropout anywhere; eval every step as the reference
    if trainable and pcfg.activation_checkpointing:
        parallel.apply_activation_checkpointing(model)
    if use_fsdp:
        mp_dtype = compute_dtype if (trainable and compute_dtype != store) else None
        parallel.apply_fsdp(model, mesh, param_dtype=mp_dtype, reshard_after_forward=pcfg.reshard_after_forward)
        if sd is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
            model.to_empty(device=info.device)
            set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                     strict=True))
    return model


def _broadcast_config(cfg: Optional[WanConfig], use_fsdp: bool) -> WanConfig:
    if not use_fsdp:
        return cfg
    import torch.distributed as dist
    box = [cfg.to_dict() if cfg is not None else None]
    dist.broadcast_object_list(box, src=0)
    return WanConfig.from_dict(box[0])


def canonical_name(name: str) -> str:
    return name.replace(WRAPPER_INFIX, "")


def build_vae(spec: str, arch: str, *, seed: int, device: torch.device, dtype: torch.dtype):
    from stream_r1.vae import VAEConfig, WanVAE, load_vae

    if spec == "none":
        return None
    if spec == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = WanVAE(VAEConfig.tiny() if arch == "tiny" else VAEConfig.wan21())
        vae = vae.to(device=device, dtype=dtype)
    else:
        vae = load_vae(spec, device=device, dtype=dtype)
    return vae.eval().requires_grad_(False)


ANALYTIC_SHAPES = "analytic-shapes"


def build_reward(cfg: RewardConfig, *, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """VideoReward from its folder, a seeded synthetic one ('synthetic' tiny, 'synthetic-2b' real size), or the shapes
    world's analytic reward ('analytic-shapes': colour, motion and stability of the prompted shape, differentiable in
    the pixels; `training/shapes/analytic_reward.py`)."""
    from stream_r1.reward.preprocess import VideoInputConfig

    if cfg.path == ANALYTIC_SHAPES:
        from .shapes.analytic_reward import AnalyticShapesReward
        return AnalyticShapesReward()

    video = VideoInputConfig(frames=cfg.frames, odd_frames=cfg.odd_frames)
    if cfg.path in ("synthetic", "synthetic-2b"):
        from stream_r1.reward.checkpoint import AXES, DOCUMENTED_NORM
        from stream_r1.reward.model import VideoRewardModel, build_qwen2vl
        from stream_r1.reward.qwen2vl_config import Qwen2VLArch
        from stream_r1.reward.synthetic import build_tiny_tokenizer

        arch = Qwen2VLArch.tiny() if cfg.path == "synthetic" else Qwen2VLArch.qwen2_vl_2b()
        if cfg.path == "synthetic":
            video = VideoInputConfig(frames=cfg.frames, odd_frames=cfg.odd_frames, min_pixels=28 * 28)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            qwen = build_qwen2vl(arch, dtype=dtype if cfg.path == "synthetic-2b" else torch.float32)
            head = nn.Linear(arch.hidden_size, 1, bias=False)
            nn.init.normal_(head.weight, std=0.5)
        mean, std = zip(*(DOCUMENTED_NORM[a] for a in AXES))
        model = VideoRewardModel(qwen, head, build_tiny_tokenizer(), arch, mean, std, video)
        return model.to(device).eval().requires_grad_(False)
    from stream_r1.reward.checkpoint import read_model_config, resolve_reward_files
    from stream_r1.reward.model import load_video_reward
    # the resize bounds travel with the checkpoint (a shapes-world reward model reads ~96x96 frames natively)
    fcfg = read_model_config(resolve_reward_files(cfg.path).model_config, check_norm=False)
    video = VideoInputConfig(frames=cfg.frames, odd_frames=cfg.odd_frames, min_pixels=fcfg.min_frame_pixels,
                             max_pixels=fcfg.max_frame_pixels)
    return load_video_reward(cfg.path, device=device, dtype=dtype, video=video)


class EMA:
    """fp32 shadow of the student's parameters, sharded like them (DTensor shards under FSDP2)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        with torch.no_grad():
            self.shadow = {canonical_name(n): p.detach().float().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for n, p in model.named_parameters():
            self.shadow[canonical_name(n)].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        return self.shadow

    def full_state_dict(self) -> dict[str, Tensor]:
        """Whole tensors (a collective on every rank under FSDP), on the CPU."""
        return {n: parallel.full_tensor(t).cpu() for n, t in self.shadow.items()}


def full_model_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Whole fp32 weights with canonical names (a collective on every rank under FSDP), on the CPU."""
    return {canonical_name(n): parallel.full_tensor(p.detach()).float().cpu() for n, p in model.named_parameters()}

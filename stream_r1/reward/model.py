"""VideoReward (VideoAlign): Qwen2-VL-2B + merged LoRA + a linear reward head read at three special tokens.

`RewardModel` is the small protocol every scorer implements (frames in [0, 1] + prompts -> raw scores per
axis), so other scorers plug into training, nodes and the CLI. `VideoRewardModel` is the released model:
transformers' own `Qwen2VLForConditionalGeneration` built from our architecture data, with the checkpoint's
weights converted and loaded strictly (see `checkpoint.py`).

Forward (spec-algorithm §9): video patches -> ViT + merger -> scattered into the `<|video_pad|>` positions ->
LLM -> final hidden state at `<|VQ_reward|>`, `<|MQ_reward|>`, `<|TA_reward|>` -> rm_head (fp32) -> [B, 3].
Positions: VideoAlign called the text model with `position_ids=None`, which in transformers 4.45 means 1-D
positions 0..L-1 copied into all three M-RoPE sections; the released scores are calibrated to that, so it is
the default (`position_mode="sequential"`). `"mrope"` uses the proper 3-D video positions instead.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .checkpoint import AXES, RELEASED_BASE_MODEL, RewardFileConfig, convert_state_dict, read_model_config, \
    resolve_reward_files
from .preprocess import VideoInputConfig, VideoPatches, preprocess_video, sample_frame_indices
from .prompt import PromptEncoder, TextBatch, TextTokenizer
from .qwen2vl_config import Qwen2VLArch

log = logging.getLogger(__name__)

PositionMode = Literal["sequential", "mrope"]


@runtime_checkable
class RewardModel(Protocol):
    """A video scorer: `score(frames [B, T, 3, H, W] in [0, 1], prompts) -> raw scores [B, len(axes)]` fp32."""

    axes: tuple[str, ...]
    """Score columns, e.g. ("VQ", "MQ", "TA")."""
    differentiable: bool
    """True when `score` is differentiable w.r.t. the frames (needed for saliency)."""

    def score(self, frames: Tensor, prompts: Sequence[str]) -> Tensor: ...

    def normalize(self, raw: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class RewardScores:
    """Scores of one batch; columns follow `axes`."""

    raw: Tensor
    """[B, A] fp32 raw head outputs."""
    normalized: Tensor
    """[B, A] fp32 z-scores (raw - mean) / std."""
    axes: tuple[str, ...]

    @property
    def overall(self) -> Tensor:
        """[B] mean of the z-scores (Stream-R1 / Reward Forcing; VideoAlign's own `reward()` sums them)."""
        return self.normalized.mean(dim=1)

    def as_dicts(self) -> list[dict[str, float]]:
        """Per sample: {"VQ": z, ..., "VQ_raw": raw, ..., "Overall": mean z}."""
        out = []
        for i in range(self.raw.shape[0]):
            d = {a: float(self.normalized[i, j]) for j, a in enumerate(self.axes)}
            d |= {f"{a}_raw": float(self.raw[i, j]) for j, a in enumerate(self.axes)}
            out.append(d | {"Overall": float(self.overall[i])})
        return out


def compute_scores(model: RewardModel, frames: Tensor, prompts: Sequence[str]) -> RewardScores:
    """Raw and normalised scores without building a graph (W_inter is always detached)."""
    with torch.no_grad():
        raw = model.score(frames, prompts).float()
        return RewardScores(raw, model.normalize(raw).float(), tuple(model.axes))


class VideoRewardModel(nn.Module):
    """The released VideoReward scorer; implements `RewardModel`."""

    axes: tuple[str, ...] = AXES
    differentiable = True

    def __init__(self, qwen: nn.Module, rm_head: nn.Linear, tokenizer: TextTokenizer, arch: Qwen2VLArch,
                 norm_mean: Sequence[float], norm_std: Sequence[float],
                 video: VideoInputConfig = VideoInputConfig(), position_mode: PositionMode = "sequential") -> None:
        super().__init__()
        if position_mode not in ("sequential", "mrope"):
            raise ValueError(f"position_mode must be 'sequential' or 'mrope', got {position_mode!r}")
        self.qwen, self.rm_head, self.arch = qwen, rm_head, arch
        self.video, self.position_mode = video, position_mode
        self.register_buffer("norm_mean", torch.tensor(list(norm_mean), dtype=torch.float32), persistent=False)
        self.register_buffer("norm_std", torch.tensor(list(norm_std), dtype=torch.float32), persistent=False)
        self.prompts = PromptEncoder(tokenizer, arch.video_token_id, arch.vision_start_token_id,
                                     arch.vision_end_token_id, arch.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return self.rm_head.weight.device

    def frame_indices(self, num_frames: int) -> list[int]:
        """Source frames the model reads from a video of `num_frames` frames."""
        return sample_frame_indices(num_frames, self.video)[0]

    def preprocess(self, frames: Tensor) -> VideoPatches:
        """frames [B, T, 3, H, W] in [0, 1] -> patches; differentiable."""
        return preprocess_video(frames.to(self.device), self.video)

    def encode_prompts(self, prompts: Sequence[str], video: VideoPatches) -> TextBatch:
        if len(prompts) != video.grid_thw.shape[0]:
            raise ValueError(f"got {len(prompts)} prompts for {video.grid_thw.shape[0]} videos; pass one per video")
        return self.prompts.encode(prompts, video.tokens_per_video).to(self.device)

    def forward_patches(self, pixel_values: Tensor, grid_thw: Tensor, text: TextBatch) -> Tensor:
        """pixel_values [B*N, 1176] (CLIP-normalised), grid_thw [B, 3] -> raw scores [B, 3] fp32.

        Differentiable w.r.t. pixel_values (the reference's per-ViT-patch saliency target).
        """
        b, seq = text.input_ids.shape
        positions, mask = None, text.attention_mask
        if self.position_mode == "sequential":                  # [3, B, L]: 0..L-1 in every M-RoPE section
            positions = torch.arange(seq, device=self.device).view(1, 1, seq).expand(3, b, seq)
            # padding is on the right and attention causal, so no real token ever sees a pad: the padding mask
            # changes only the (unread) pad rows. Without it SDPA runs its causal kernel instead of an
            # explicit [B, 1, L, L] mask (2.2x faster LLM on the CPU for the shapes reward; same scores).
            mask = None
        else:
            self.qwen.model.rope_deltas = None                  # HF caches these across calls
        out = self.qwen.model(input_ids=text.input_ids, attention_mask=mask, position_ids=positions,
                              pixel_values_videos=pixel_values, video_grid_thw=grid_thw,
                              mm_token_type_ids=text.mm_token_type_ids, use_cache=False)
        hidden = out.last_hidden_state                           # [B, L, D]
        idx = text.reward_positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # [B, 3, D]
        logits = self.rm_head(hidden.gather(1, idx).float())    # [B, 3, out_dim]
        if logits.shape[-1] == 1:
            return logits.squeeze(-1)                            # [B, 3]
        return logits.diagonal(dim1=1, dim2=2)                   # output_dim 3: score a from row a

    def score(self, frames: Tensor, prompts: Sequence[str]) -> Tensor:
        """frames [B, T, 3, H, W] in [0, 1] -> raw [B, 3] fp32 (VQ, MQ, TA). Builds a graph if frames need grad."""
        video = self.preprocess(frames)
        return self.forward_patches(video.pixel_values, video.grid_thw, self.encode_prompts(prompts, video))

    def normalize(self, raw: Tensor) -> Tensor:
        """[B, 3] raw -> z-scores with the checkpoint's constants."""
        return (raw.float() - self.norm_mean.to(raw.device)) / self.norm_std.to(raw.device)

    @contextlib.contextmanager
    def activation_checkpointing(self, enabled: bool = True) -> Iterator[None]:
        """Recompute ViT blocks and LLM layers in backward (non-reentrant) while inside the block.

        transformers only checkpoints modules in training mode; Qwen2-VL has no dropout, so train mode changes
        nothing else. Saliency of 81 frames at 480x832 (10,332 video tokens; H200, bf16, 2026-11-22): peak
        78.5 GiB -> 12.2 GiB, 1.96 s -> 2.9 s.
        """
        if not enabled:
            yield
            return
        was_training, q = self.qwen.training, self.qwen
        if hasattr(q, "activation_checkpointing_enable"):        # transformers >= 5.2x names
            q.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            q.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        q.train()
        try:
            yield
        finally:
            off = getattr(q, "activation_checkpointing_disable", None) or q.gradient_checkpointing_disable
            off()
            q.train(was_training)


# ---- building and loading ---------------------------------------------------------------------------------------
def build_qwen2vl(arch: Qwen2VLArch, state_dict: dict[str, Tensor] | None = None,
                  dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa") -> nn.Module:
    """`Qwen2VLForConditionalGeneration` for `arch`; random init, or built on meta and filled strictly from
    `state_dict` (current layout, lm_head optional when tied)."""
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl import modeling_qwen2_vl as hf

    cfg = arch.to_hf(attn_implementation)
    if state_dict is None:
        return batch_vision_attention(Qwen2VLForConditionalGeneration(cfg).to(dtype).eval())
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(cfg)
    expected = set(model.state_dict())
    sd = {k: v.to(dtype) for k, v in state_dict.items()}
    embed = "model.language_model.embed_tokens.weight"
    if arch.tie_word_embeddings and embed in sd:
        head = sd.pop("lm_head.weight", None)
        if head is not None and head.shape != sd[embed].shape:
            raise ValueError(f"lm_head.weight {list(head.shape)} does not match the embedding {list(sd[embed].shape)}")
        sd["lm_head.weight"] = sd[embed]
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise ValueError(f"reward weights do not fit the {arch.num_hidden_layers}-layer Qwen2-VL: missing "
                         f"{missing[:6]}{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
                         f"{' ...' if len(unexpected) > 6 else ''}; check the architecture (model_config.json)")
    for k, p in model.state_dict().items():
        if tuple(p.shape) != tuple(sd[k].shape):
            raise ValueError(f"{k}: file has {list(sd[k].shape)}, the architecture needs {list(p.shape)}; check "
                             f"the architecture (model_config.json)")
    model.load_state_dict(sd, strict=True, assign=True)
    model.tie_weights()
    # non-persistent rotary tables were created on meta: rebuild them (fp32, as transformers keeps them)
    model.model.language_model.rotary_emb = hf.Qwen2VLRotaryEmbedding(config=cfg.text_config)
    model.model.visual.rotary_pos_emb = hf.Qwen2VLVisionRotaryEmbedding(cfg.vision_config)
    return batch_vision_attention(model.eval())


def batch_vision_attention(qwen: nn.Module) -> nn.Module:
    """Make the ViT's SDPA attention one batched call over its frame chunks (in place; returns `qwen`).

    transformers' Qwen2-VL ViT attends within each temporal patch (`cu_seqlens`: one chunk of h*w patches per
    t, per video) and, for every attention implementation but flash-attention, loops over the chunks in Python:
    B * t SDPA calls per block (128 shapes clips x 22 = 2,816, forward and backward; 1,640 for one 81-frame
    480x832 video). When every chunk has the same length, as in any batch of same-size videos, the chunks are a
    batch dimension: the same attention in one SDPA call. Other cases (mixed sizes, eager/flash attention) run
    transformers' own forward.
    """
    try:
        cls = _batched_vision_attention_class()
    except (ImportError, AttributeError) as e:            # another transformers layout: keep its own forward
        log.info("ViT attention not batched (%s); transformers' per-chunk loop is used", e)
        return qwen
    for m in qwen.modules():
        if type(m) is cls.__base__:
            m.__class__ = cls
    return qwen


@functools.cache
def _batched_vision_attention_class() -> type:
    import torch.nn.functional as F
    from transformers.models.qwen2_vl import modeling_qwen2_vl as hf

    for name in ("VisionAttention", "apply_rotary_pos_emb_vision"):
        getattr(hf, name)                                  # AttributeError -> not batched (see the caller)

    class BatchedVisionAttention(hf.VisionAttention):
        """`VisionAttention` whose equal-length chunks go through one SDPA call (see `batch_vision_attention`)."""

        def forward(self, hidden_states: Tensor, cu_seqlens: Tensor, position_embeddings=None, *args, **kwargs):
            n = hidden_states.shape[0]
            c = cu_seqlens.numel() - 1
            if (getattr(self.config, "_attn_implementation", None) != "sdpa" or position_embeddings is None or args
                    or not all(hasattr(self, a) for a in ("qkv", "proj", "num_heads", "scaling")) or c < 1
                    or n % c or not bool((cu_seqlens.diff() == n // c).all())):
                return super().forward(hidden_states, cu_seqlens, position_embeddings, *args, **kwargs)
            q, k, v = self.qkv(hidden_states).reshape(n, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
            cos, sin = position_embeddings
            q, k = hf.apply_rotary_pos_emb_vision(q, k, cos, sin)               # [N, H, d]
            q, k, v = (x.reshape(c, n // c, self.num_heads, -1).transpose(1, 2) for x in (q, k, v))  # [C, H, L, d]
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)   # [C, H, L, d]
            return self.proj(out.transpose(1, 2).reshape(n, -1))

    return BatchedVisionAttention


def load_video_reward(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                      video: VideoInputConfig | None = None, position_mode: PositionMode = "sequential",
                      arch: Qwen2VLArch | None = None, tokenizer: TextTokenizer | None = None,
                      check_norm: bool = True, attn_implementation: str = "sdpa") -> VideoRewardModel:
    """Load a VideoReward checkpoint (folder, checkpoint-* folder or model.pth) offline, frozen, in eval mode.

    The architecture comes from `arch`, else model_config.json's `stream_r1_arch`, else the Qwen2-VL-2B data;
    the tokenizer from `tokenizer`, else the checkpoint's tokenizer folder.
    """
    from ..weights_io import read_tensors

    files = resolve_reward_files(path)
    fcfg: RewardFileConfig = read_model_config(files.model_config, check_norm=check_norm)
    if arch is None:
        arch = fcfg.arch
    if arch is None:
        if fcfg.base_model.rstrip("/").split("/")[-1] != RELEASED_BASE_MODEL.split("/")[-1]:
            raise ValueError(f"{files.model_config} names base model {fcfg.base_model!r}; only "
                             f"{RELEASED_BASE_MODEL} is known offline: pass arch=Qwen2VLArch(...)")
        arch = Qwen2VLArch.qwen2_vl_2b()
    if tokenizer is None:
        tokenizer = load_tokenizer(files.tokenizer)
    raw = read_tensors(files.weights)
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ValueError(f"{files.weights} is not a flat state dict of tensors; expected VideoReward's model.pth")
    sd, rm_head_w = convert_state_dict(raw, fcfg.lora_scale)
    del raw
    qwen = build_qwen2vl(arch, sd, dtype=dtype, attn_implementation=attn_implementation)
    del sd
    if rm_head_w.shape != (fcfg.output_dim, arch.hidden_size):
        raise ValueError(f"rm_head.weight is {list(rm_head_w.shape)}, expected [{fcfg.output_dim}, "
                         f"{arch.hidden_size}] (model_config.output_dim x hidden)")
    rm_head = nn.Linear(arch.hidden_size, fcfg.output_dim, bias=False)
    rm_head.weight.data.copy_(rm_head_w.float())                # the head stays fp32
    if video is None:
        video = VideoInputConfig(max_pixels=fcfg.max_frame_pixels, min_pixels=fcfg.min_frame_pixels)
    model = VideoRewardModel(qwen, rm_head, tokenizer, arch, fcfg.mean, fcfg.std, video, position_mode)
    model.requires_grad_(False)
    log.info("reward model %s: %s, %d LLM layers, LoRA scale %g", files.weights, dtype, arch.num_hidden_layers,
             fcfg.lora_scale)
    return model.to(device).eval()


def load_tokenizer(folder: str | Path | None) -> TextTokenizer:
    """The Qwen2 tokenizer saved with the checkpoint (local files only)."""
    if folder is None or not Path(folder).is_dir():
        raise ValueError(f"no tokenizer folder found ({folder}); VideoReward ships one in checkpoint-*/tokenizer. "
                         f"Pass its path, or tokenizer=...")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

"""Qwen2-VL-2B-Instruct architecture as data (VideoReward's base model), plus the tiny test preset.

The released VideoReward files carry no base-model config: VideoAlign loads it from the hub by name
(`Qwen/Qwen2-VL-2B-Instruct`). We keep the constants here (spec-models §6.7) so nothing is downloaded, and
build `transformers.Qwen2VLConfig` from them. `tiny()` is spec-models §7's test size: it keeps the real
special-token ids (vocab 151,660) and the real patch geometry.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel mean of Qwen2-VL's image normalisation (OpenAI CLIP)."""
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel std of Qwen2-VL's image normalisation (OpenAI CLIP)."""


@dataclass(frozen=True)
class Qwen2VLArch:
    """Architecture of one Qwen2-VL model; defaults are Qwen2-VL-2B-Instruct with VideoReward's vocabulary."""

    vision_depth: int = 32
    """ViT blocks."""
    vision_embed_dim: int = 1280
    """ViT width."""
    vision_num_heads: int = 16
    """ViT heads (head_dim 80; must be divisible by 4 for the 2-D rotary)."""
    vision_mlp_ratio: int = 4
    """ViT MLP width / embed width."""
    vision_hidden_act: str = "quick_gelu"
    """ViT MLP activation."""
    patch_size: int = 14
    """Spatial ViT patch, pixels."""
    temporal_patch_size: int = 2
    """Frames per ViT patch."""
    spatial_merge_size: int = 2
    """The merger folds merge x merge patches into one LLM token."""
    hidden_size: int = 1536
    """LLM width (= merger output width)."""
    intermediate_size: int = 8960
    """LLM MLP width."""
    num_hidden_layers: int = 28
    """LLM decoder layers."""
    num_attention_heads: int = 12
    """LLM query heads (head_dim 128)."""
    num_key_value_heads: int = 2
    """LLM key/value heads (GQA)."""
    rms_norm_eps: float = 1e-6
    """Epsilon of the LLM RMSNorms."""
    rope_theta: float = 1e6
    """Base of the LLM rotary embedding."""
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    """(t, h, w) split of head_dim / 2 for M-RoPE; sums to 64 = 128 / 2."""
    max_position_embeddings: int = 32768
    """Longest token sequence (text + video tokens) the reward model accepts."""
    vocab_size: int = 151660
    """151,657 Qwen2 tokens + VideoReward's 3 reward tokens (the released embedding has this many rows)."""
    extra_tokens: int = 3
    """Special tokens the reward model appended after Qwen2's 151,657 (VideoReward 3, HPSv3 1)."""
    tie_word_embeddings: bool = True
    """lm_head shares the token embedding (Qwen2-VL-2B); the reward head never uses lm_head."""
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    image_token_id: int = 151655
    video_token_id: int = 151656

    def __post_init__(self) -> None:
        head_dim = self.hidden_size // self.num_attention_heads
        if self.hidden_size % self.num_attention_heads or sum(self.mrope_section) * 2 != head_dim:
            raise ValueError(f"sum(mrope_section)={sum(self.mrope_section)} must be half the LLM head_dim "
                             f"({self.hidden_size}/{self.num_attention_heads} = {head_dim})")
        if (self.vision_embed_dim // self.vision_num_heads) % 4:
            raise ValueError(f"vision head_dim {self.vision_embed_dim // self.vision_num_heads} must be divisible "
                             f"by 4 (2-D rotary); change vision_num_heads")
        if self.vocab_size <= self.video_token_id + self.extra_tokens:
            raise ValueError(f"vocab_size {self.vocab_size} must exceed {self.video_token_id + self.extra_tokens} "
                             f"so the real reward-token ids after 151656 exist ({self.extra_tokens} extra tokens)")

    # ---- derived values -----------------------------------------------------------------------------------
    @property
    def patch_dim(self) -> int:  # 3 * 2 * 14 * 14 -> 1176
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def resize_factor(self) -> int:  # 14 * 2 -> 28: frame sides must be multiples of this
        return self.patch_size * self.spatial_merge_size

    # ---- presets ------------------------------------------------------------------------------------------
    @classmethod
    def qwen2_vl_2b(cls) -> "Qwen2VLArch":
        return cls()

    @classmethod
    def tiny(cls) -> "Qwen2VLArch":
        """spec-models §7: vision 2 x 32 (2 heads), text 2 x 64 (4 heads / 2 KV, mrope [2,3,3]); real ids."""
        return cls(vision_depth=2, vision_embed_dim=32, vision_num_heads=2, vision_mlp_ratio=2,
                   hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, mrope_section=(2, 3, 3), max_position_embeddings=4096)

    # ---- conversions --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Qwen2VLArch":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown Qwen2-VL architecture fields {unknown}; known: {sorted(names)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def to_hf(self, attn_implementation: str = "sdpa"):
        """The `transformers.Qwen2VLConfig` (5.x field names) for this architecture."""
        from transformers import Qwen2VLConfig

        text = dict(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads, rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings, hidden_act="silu", use_sliding_window=False,
            bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta,
                             "mrope_section": list(self.mrope_section)},
        )
        vision = dict(
            depth=self.vision_depth, embed_dim=self.vision_embed_dim, num_heads=self.vision_num_heads,
            mlp_ratio=self.vision_mlp_ratio, hidden_act=self.vision_hidden_act, hidden_size=self.hidden_size,
            patch_size=self.patch_size, temporal_patch_size=self.temporal_patch_size,
            spatial_merge_size=self.spatial_merge_size, in_channels=3,
        )
        cfg = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=self.tie_word_embeddings,
                            image_token_id=self.image_token_id, video_token_id=self.video_token_id,
                            vision_start_token_id=self.vision_start_token_id,
                            vision_end_token_id=self.vision_end_token_id)
        cfg._attn_implementation = attn_implementation
        cfg.text_config._attn_implementation = attn_implementation
        cfg.vision_config._attn_implementation = attn_implementation
        return cfg

"""Frozen configuration dataclasses: the one home of every default.

`WanConfig` uses the field names of the Wan2.1 checkpoints' own `config.json` (dim, ffn_dim, num_heads, ...).
`StreamConfig` holds the runtime knobs of chunked causal generation; its field defaults are Stream-R1's
(= Reward Forcing's) and the class methods give the settings of the other released families.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

CachePolicy = Literal["window_sink", "full", "longlive"]
CACHE_POLICIES: tuple[str, ...] = ("window_sink", "full", "longlive")


@dataclass(frozen=True)
class WanConfig:
    """Architecture of one Wan2.1 DiT (student, teacher and critic all use this class)."""

    dim: int = 1536
    """Hidden width of the transformer."""
    ffn_dim: int = 8960
    """Hidden width of each block's feed-forward network."""
    num_heads: int = 12
    """Attention heads; head_dim = dim / num_heads (128 in every released Wan2.1 model)."""
    num_layers: int = 30
    """Transformer blocks."""
    text_dim: int = 4096
    """Width of the text encoder's output (umT5-XXL d_model)."""
    text_len: int = 512
    """Text tokens seen by cross-attention; shorter contexts are zero-padded to this length."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep embedding."""
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """(t, h, w) patch of the Conv3d patchifier, in latent pixels."""
    in_dim: int = 16
    """Latent channels in (= VAE z_dim)."""
    out_dim: int = 16
    """Latent channels out."""
    eps: float = 1e-6
    """Epsilon of every LayerNorm / RMSNorm."""
    vae_stride: tuple[int, int, int] = (4, 8, 8)
    """(t, h, w) compression of the Wan2.1 VAE: 1 + 4k video frames -> 1 + k latent frames, 8x spatial."""
    rope_positions: int = 1024
    """Rows of each RoPE table: absolute temporal positions must stay below this."""

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim {self.head_dim} must be even and >= 6 for the 3-D RoPE split")

    # ---- derived values -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:  # 1536 / 12 -> 128
        return self.dim // self.num_heads

    def rope_split(self) -> tuple[int, int, int]:
        """Real widths of the (t, h, w) RoPE groups: 128 -> (44, 42, 42); 32 -> (12, 10, 10)."""
        d = self.head_dim
        return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)

    def latent_hw(self, height: int, width: int) -> tuple[int, int]:  # 480x832 -> (60, 104)
        return height // self.vae_stride[1], width // self.vae_stride[2]

    def token_grid(self, height: int, width: int) -> tuple[int, int]:  # 480x832 -> (30, 52)
        lh, lw = self.latent_hw(height, width)
        return lh // self.patch_size[1], lw // self.patch_size[2]

    def tokens_per_frame(self, height: int, width: int) -> int:  # 480x832 -> 30*52 = 1560
        gh, gw = self.token_grid(height, width)
        return gh * gw

    @property
    def pixel_multiple(self) -> int:  # 8 * 2 = 16
        return self.vae_stride[1] * self.patch_size[1]

    def num_parameters(self) -> int:
        """Exact parameter count (1.3B preset -> 1,418,996,800)."""
        d, f, t = self.dim, self.ffn_dim, self.text_dim
        pt, ph, pw = self.patch_size
        top = (d * self.in_dim * pt * ph * pw + d) + (d * t + d + d * d + d) + (d * self.freq_dim + d + d * d + d)
        top += 6 * d * d + 6 * d + 2 * d + (self.out_dim * pt * ph * pw) * (d + 1)
        block = 6 * d + 8 * (d * d + d) + 4 * d + 2 * d + (d * f + f) + (f * d + d)
        return top + self.num_layers * block

    # ---- presets --------------------------------------------------------------------------------
    @classmethod
    def wan_1_3b(cls) -> "WanConfig":
        return cls()

    @classmethod
    def wan_14b(cls) -> "WanConfig":
        return cls(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)

    @classmethod
    def tiny(cls) -> "WanConfig":
        """Test size with the real key names: head_dim 32 -> RoPE split 12/10/10."""
        return cls(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32)

    @classmethod
    def tiny_comfy(cls) -> "WanConfig":
        """Tiny model that stock ComfyUI's Wan detection accepts (head_dim 128, text_dim 4096)."""
        return cls(dim=128, ffn_dim=256, num_heads=1, num_layers=2, text_dim=4096)

    @classmethod
    def shapes(cls) -> "WanConfig":
        """The shapes world's student, teacher and critic (2.4M parameters; head_dim 64 -> RoPE 24/20/20;
        text_dim 64 = the shapes umT5's d_model)."""
        return cls(dim=128, ffn_dim=512, num_heads=2, num_layers=6, text_dim=64)

    @classmethod
    def shapes_l(cls) -> "WanConfig":
        """A larger shapes-world model (9.1M parameters, against 1.8M; head_dim 64 as `shapes`, 4 heads, 8 layers): the
        2026-11-22 `shapes` teacher kept its shapes in place but never learned their motion, with its
        cross-frame coupling flat from 1,500 to 3,800 steps (bench/SHAPES.md)."""
        return cls(dim=256, ffn_dim=1024, num_heads=4, num_layers=8, text_dim=64)

    @classmethod
    def preset(cls, name: str) -> "WanConfig":
        presets = {"1.3b": cls.wan_1_3b, "14b": cls.wan_14b, "tiny": cls.tiny, "tiny-comfy": cls.tiny_comfy,
                   "shapes": cls.shapes, "shapes-l": cls.shapes_l}
        if name not in presets:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    # ---- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WanConfig":
        """Accepts our own dict and Wan-AI's `config.json` (extra keys such as `_class_name` are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class StreamConfig:
    """Runtime settings of chunked causal generation (one chunk = `frames_per_block` latent frames)."""

    frames_per_block: int = 3
    """Latent frames denoised together; 3 matches every released checkpoint (12 video frames per chunk)."""
    denoising_steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    """Configured timesteps; with `warp_denoising_step` they index the shifted 1000-step grid."""
    warp_denoising_step: bool = True
    """Map step s to grid[1000 - s] of the shifted schedule: 1000/750/500/250 -> 1000/937.5/833.3/625."""
    timestep_shift: float = 5.0
    """Shift of the flow-matching sigma schedule the students were distilled with."""
    num_train_timesteps: int = 1000
    """Length of the flow-matching grid."""
    cache_policy: CachePolicy = "window_sink"
    """`window_sink` (Reward Forcing / Stream-R1: relative RoPE, EMA sink), `full` (Self-Forcing: absolute
    RoPE, no eviction) or `longlive` (absolute RoPE, fixed frame sink, rolling window)."""
    window_frames: int = 9
    """KV cache length in latent frames (sink included) for the rolling policies (`local_attn_size`)."""
    sink_frames: int = 3
    """Latent frames at the start of the cache that are never evicted."""
    sink_ema_alpha: float = 0.999
    """window_sink: sink <- alpha * sink + (1 - alpha) * block leaving the window (Reward Forcing's constant)."""
    sink_ema_source: Literal["evicted", "newest"] = "evicted"
    """window_sink: which block feeds the EMA: `evicted` (the frames leaving the window; Reward Forcing
    after its 2025-12-15 fix) or `newest` (the most recent finished chunk; its code before that fix)."""
    full_cache_frames: int = 21
    """`full` policy: cache length in latent frames (Self-Forcing was trained on 21 = 81 video frames)."""
    context_noise: float = 0.0
    """Timestep of the clean pass that writes a finished chunk's K/V into the cache."""
    skip_last_context_pass: bool = False
    """Skip the clean cache pass after the final chunk (saves one DiT pass; output unchanged)."""

    def __post_init__(self) -> None:
        if self.cache_policy not in CACHE_POLICIES:
            raise ValueError(f"cache_policy must be one of {CACHE_POLICIES}, got {self.cache_policy!r}")
        if self.frames_per_block < 1:
            raise ValueError(f"frames_per_block must be >= 1, got {self.frames_per_block}")
        if not self.denoising_steps:
            raise ValueError("denoising_steps must name at least one timestep, e.g. 1000,750,500,250")
        for s in self.denoising_steps:
            if not 0 < s <= self.num_train_timesteps:
                raise ValueError(f"denoising step {s} is outside (0, {self.num_train_timesteps}]")
        if self.cache_policy != "full":
            if self.sink_frames < 0 or self.window_frames < 1:
                raise ValueError("window_frames must be >= 1 and sink_frames >= 0")
            if self.window_frames - self.sink_frames < self.frames_per_block:
                raise ValueError(
                    f"window_frames ({self.window_frames}) must leave room for one chunk beyond the sink "
                    f"({self.sink_frames} + {self.frames_per_block}); try window_frames="
                    f"{self.sink_frames + 2 * self.frames_per_block}")
        if self.sink_ema_source not in ("evicted", "newest"):
            raise ValueError(f"sink_ema_source must be 'evicted' or 'newest', got {self.sink_ema_source!r}")
        if not 0.0 <= self.sink_ema_alpha <= 1.0:
            raise ValueError(f"sink_ema_alpha must be in [0, 1], got {self.sink_ema_alpha}")

    @property
    def cache_frames(self) -> int:
        """Frames the preallocated KV buffer holds."""
        return self.full_cache_frames if self.cache_policy == "full" else self.window_frames

    @property
    def relative_rope(self) -> bool:
        """Keys stored un-rotated and re-rotated with window-relative positions (unbounded streams)."""
        return self.cache_policy == "window_sink"

    def replace(self, **changes: Any) -> "StreamConfig":
        return dataclasses.replace(self, **changes)

    # ---- family presets (each returns the settings its checkpoints were trained with) --------------
    @classmethod
    def stream_r1(cls) -> "StreamConfig":
        return cls()

    @classmethod
    def reward_forcing(cls) -> "StreamConfig":
        return cls()

    @classmethod
    def self_forcing(cls) -> "StreamConfig":
        return cls(cache_policy="full", sink_frames=0)

    @classmethod
    def longlive(cls) -> "StreamConfig":
        return cls(cache_policy="longlive", window_frames=12, sink_frames=3)

    @classmethod
    def for_policy(cls, policy: str) -> "StreamConfig":
        return {"window_sink": cls.stream_r1, "full": cls.self_forcing, "longlive": cls.longlive}[policy]()

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def latent_frames_for(video_frames: int) -> int:
    """1 + 4k video frames -> 1 + k latent frames; other counts are refused with the nearest valid ones."""
    if video_frames < 1 or (video_frames - 1) % 4:
        lo = max(1, video_frames - (video_frames - 1) % 4)
        raise ValueError(f"num_frames must be 4k+1 (the VAE's causal rule), got {video_frames}; "
                         f"try {lo} or {lo + 4}")
    return 1 + (video_frames - 1) // 4


def video_frames_for(latent_frames: int) -> int:
    """1 + k latent frames -> 1 + 4k video frames (21 -> 81)."""
    return 1 + 4 * (latent_frames - 1)


def check_resolution(height: int, width: int, multiple: int = 16) -> None:
    """Refuse sizes the DiT cannot patchify, naming the nearest valid size."""
    for name, v in (("height", height), ("width", width)):
        if v < multiple or v % multiple:
            near = max(multiple, round(v / multiple) * multiple)
            raise ValueError(f"{name} must be a positive multiple of {multiple}, got {v}; try {near}")

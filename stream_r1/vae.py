"""Wan2.1 video VAE (z_dim 16): encode, decode and exact streaming decode.

Parameter names are those of the released `Wan2.1_VAE.pth` / `wan_2.1_vae.safetensors` (194 tensors), so the real
files load with `strict=True`. Layout (spec-models.md §4.1), real sizes in comments:

* encoder: conv1 3->96, downsamples (Res, Res, Resample) x 3 + (Res, Res), middle (Res, Attn, Res), head -> 32;
  top-level `conv1` (1x1x1) then split into mu | log_var (16 each); latents use mu only.
* decoder: top-level `conv2` (1x1x1 16->16), conv1 16->384, middle, upsamples (Res x 3, Resample) x 3 + Res x 3,
  head 96->3.

Time is causal everywhere: every 3-tap temporal conv sees the 2 previous input frames (zeros before the start), kept
in an explicit cache list (one slot per temporal conv; 24 in the encoder, 32 in the decoder). The decoder runs one
latent frame per call: the first produces 1 video frame, every later one 4 ("Rep" rule: on the very first latent frame
the upsample3d layers skip their temporal conv). Because that state is a fixed 2-frame history per conv, a video
decoded chunk by chunk with `StreamingDecoder` equals one full `WanVAE.decode`.

Latent spaces: `encode` returns and `decode` takes the *normalised* latents the DiT works in,
z = (mu - LATENT_MEAN) / LATENT_STD. ComfyUI's LATENT holds raw mu: convert with `normalize` / `denormalize`.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .ops import own_tail

LATENT_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
"""Per-channel mean of the raw Wan2.1 latent mu (spec-models.md §4.2)."""
LATENT_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)
"""Per-channel std of the raw Wan2.1 latent mu (spec-models.md §4.2)."""

_WAN21_KEY = "decoder.middle.0.residual.0.gamma"  # present in every Wan2.1 VAE file (ComfyUI's detection rule)
_WAN22_KEY = "decoder.upsamples.0.upsamples.0.residual.2.weight"  # only in the Wan2.2 VAE (z_dim 48)
Cache = list[Tensor | None]


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of the Wan2.1 VAE; field names follow upstream `_video_vae` (typo `temperal` included)."""

    dim: int = 96
    """Base width; stage widths are dim * dim_mult (96 -> 96/192/384/384)."""
    z_dim: int = 16
    """Latent channels (the encoder head emits 2 * z_dim: mu and log_var)."""
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    """Width multiplier of each resolution stage; 4 stages -> 3 resamples -> 8x spatial."""
    num_res_blocks: int = 2
    """Residual blocks per encoder stage (the decoder uses one more)."""
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    """Which encoder resamples also halve time (2 of them -> 4x); the decoder uses the reverse order."""

    def __post_init__(self) -> None:
        if self.z_dim != len(LATENT_MEAN):
            raise ValueError(f"z_dim must be {len(LATENT_MEAN)} (the Wan2.1 latent statistics), got {self.z_dim}")
        if self.dim % 2:
            raise ValueError(f"dim must be even (upsample convs halve the width), got {self.dim}")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            n = len(self.dim_mult) - 1
            raise ValueError(f"temperal_downsample needs {n} entries, got {self.temperal_downsample}")

    @classmethod
    def wan21(cls) -> VAEConfig:
        """The released model: 194 tensors, 126,892,531 parameters."""
        return cls()

    @classmethod
    def tiny(cls) -> VAEConfig:
        """Test model with the real key names and cache layout: dim 8, 194 tensors, 924,491 parameters."""
        return cls(dim=8)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor]) -> VAEConfig:
        """Infer the config of a Wan2.1 VAE state dict (bare keys): dim from `decoder.head.0.gamma` [dim,1,1,1]."""
        if "decoder.head.0.gamma" not in sd:
            raise ValueError("not a Wan2.1 VAE state dict: 'decoder.head.0.gamma' is missing")
        return cls(dim=int(sd["decoder.head.0.gamma"].shape[0]))

    @property
    def temporal_stride(self) -> int:  # (False, True, True) -> 4
        return 2 ** sum(self.temperal_downsample)

    @property
    def spatial_stride(self) -> int:  # 4 stages -> 8
        return 2 ** (len(self.dim_mult) - 1)


# ---- latent normalisation ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _latent_stats(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(mean, std) as [1, 16, 1, 1, 1] tensors, built once per device/dtype (no host->device copy per call)."""
    with torch.inference_mode(False):  # usable later outside inference mode too
        mean = torch.tensor(LATENT_MEAN, device=device, dtype=dtype).view(1, -1, 1, 1, 1)
        std = torch.tensor(LATENT_STD, device=device, dtype=dtype).view(1, -1, 1, 1, 1)
    return mean, std


def _check_latent_channels(x: Tensor) -> None:
    if x.ndim != 5 or x.shape[1] != len(LATENT_MEAN):
        raise ValueError(f"expected latents [B, {len(LATENT_MEAN)}, T, H, W], got {list(x.shape)}")


def check_stream_chunk(latents: Tensor, past: Tensor | None) -> None:
    """A streaming decoder's input check: latents [B, 16, f, h, w] with f >= 1 that continue the stream whose
    per-layer state `past` is [B, C, t, h, w] (None before the first chunk)."""
    _check_latent_channels(latents)
    if latents.shape[2] < 1:
        raise ValueError("latents hold no frame: expected [B, 16, f, h, w] with f >= 1")
    if past is not None and (past.shape[0], *past.shape[3:]) != (latents.shape[0], *latents.shape[3:]):
        raise ValueError(
            f"latents {list(latents.shape)} do not continue this stream (batch {past.shape[0]}, latent size "
            f"{past.shape[3]}x{past.shape[4]}); call reset() to start a new video"
        )


def normalize(mu: Tensor) -> Tensor:
    """Raw VAE mean (ComfyUI LATENT space) -> DiT space: (mu - mean) / std. mu: [B, 16, T, H, W]."""
    _check_latent_channels(mu)
    mean, std = _latent_stats(mu.device, mu.dtype)
    return (mu - mean) / std


def denormalize(z: Tensor) -> Tensor:
    """DiT space -> raw VAE mean: z * std + mean. z: [B, 16, T, H, W]."""
    _check_latent_channels(z)
    mean, std = _latent_stats(z.device, z.dtype)
    return z * std + mean


# ---- building blocks -----------------------------------------------------------------------------------------------
def _layout(weight: Tensor) -> torch.memory_format:
    """torch.channels_last_3d (channels_last) for a 5-D (4-D) weight stored NDHWC (NHWC) by `WanVAE.to_channels_last`,
    else contiguous_format."""
    fmt = torch.channels_last_3d if weight.dim() == 5 else torch.channels_last
    cl = weight.is_contiguous(memory_format=fmt) and not weight.is_contiguous()
    return fmt if cl else torch.contiguous_format


_ONEDNN = torch.backends.mkldnn.is_available()


def _onednn_conv(device_type: str, dtype: torch.dtype) -> bool:
    """Whether CausalConv3d calls oneDNN's convolution itself: float32 on the CPU of a torch build with oneDNN."""
    return device_type == "cpu" and dtype == torch.float32 and _ONEDNN


def channels_last_pays(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether `WanVAE.to_channels_last` speeds the VAE up on `device`: CUDA (cuDNN's NDHWC kernels, -25 % decode time
    on Hopper) and where the convs run on oneDNN (2.4x on top of its own kernel; bench/RESULTS.md, CPU decode)."""
    device = torch.device(device)
    return device.type == "cuda" or _onednn_conv(device.type, dtype)


class CausalConv3d(nn.Conv3d):
    """Conv3d that is causal in time: each output frame sees its kt - 1 predecessors (zeros before the start).

    The history (the last kt - 1 input frames, [B, C_in, 2, H, W]) lives in `cache[self.slot]`; spatial padding is
    symmetric (kernel // 2).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int | tuple[int, int, int]) -> None:
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        super().__init__(in_dim, out_dim, (kt, kh, kw), padding=(0, kh // 2, kw // 2))
        self.history = kt - 1
        self.slot = -1  # index into the cache list, set by _assign_slots

    def forward(self, x: Tensor, cache: Cache) -> Tensor:  # [B, C_in, T, H, W] -> [B, C_out, T, H, W]
        past = cache[self.slot]
        if past is None:
            x = F.pad(x, (0, 0, 0, 0, self.history, 0))  # zero history: [B, C, T + 2, H, W]
        else:
            x = torch.cat([past, x], dim=2)  # [B, C, 2 + T, H, W]
        x = x.contiguous(memory_format=_layout(self.weight))  # a 1-frame input's layout is ambiguous: pin it
        cache[self.slot] = own_tail(x, 2, self.history)  # [B, C, 2, H, W] in own storage: does not pin x
        if _onednn_conv(x.device.type, x.dtype):
            # PyTorch's CPU dispatch sends a batch-1 Conv3d to its im2col kernel (its size test reads N*C*T*H, no W);
            # oneDNN's is 2.5x faster here, 6x with channels-last weights (bench/RESULTS.md, CPU decode)
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                            self.groups)
        return super().forward(x)


class RMSNorm(nn.Module):
    """L2-normalise over channels (dim 1), times sqrt(C) * gamma. gamma is [C,1,1,1] (5-D input) or [C,1,1] (4-D)."""

    def __init__(self, dim: int, spatial_dims: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * spatial_dims))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) * (self.gamma * self.scale)


class ResidualBlock(nn.Module):
    """residual = {0 norm, 1 SiLU, 2 conv 3^3, 3 norm, 4 SiLU, 5 dropout (p=0), 6 conv 3^3} + optional 1^3 shortcut."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, 3), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3),
            RMSNorm(out_dim, 3), nn.SiLU(), nn.Dropout(0.0), CausalConv3d(out_dim, out_dim, 3),
        )
        self.shortcut = nn.Conv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: Tensor, cache: Cache) -> Tensor:  # [B, C_in, T, H, W] -> [B, C_out, T, H, W]
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        h = conv1(F.silu(norm1(x)), cache)
        h = conv2(F.silu(norm2(h)), cache)
        return h + (x if self.shortcut is None else self.shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame, with a residual connection."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, 2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, T, H, W] -> same
        b, c, t, h, w = x.shape
        y = rearrange(x, "b c t h w -> (b t) c h w")
        qkv = rearrange(self.to_qkv(self.norm(y)), "n c3 h w -> n 1 (h w) c3").contiguous()  # [B*T, 1, H*W, 3C]
        q, k, v = qkv.chunk(3, dim=-1)  # each [B*T, 1, H*W, C]
        y = F.scaled_dot_product_attention(q, k, v)
        y = rearrange(y, "n 1 (h w) c -> n c h w", h=h)
        y = rearrange(self.proj(y), "(b t) c h w -> b c t h w", t=t)
        return x + y


class Resample(nn.Module):
    """Spatial x2 up/down (per frame), optionally with a temporal x2 step.

    upsample3d: time_conv C -> 2C (causal, k=3), the two halves become frames 2t and 2t+1; skipped on the decoder's
    first latent frame. downsample3d: time_conv k=3 stride 2 over [last frame of the previous call, x]; the first call
    passes its frame through.
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="nearest-exact"), nn.Conv2d(dim, dim // 2, 3, padding=1)
            )
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1))
        elif mode == "downsample3d":
            self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
            self.slot = -1  # holds the last (spatially downsampled) input frame [B, C, 1, H/2, W/2]

    def forward(self, x: Tensor, cache: Cache, first: bool) -> Tensor:  # [B, C, T, H, W]
        if self.mode == "upsample3d" and not first:
            x = self.time_conv(x, cache)  # [B, 2C, T, H, W]
            x = rearrange(x, "b (two c) t h w -> b c (t two) h w", two=2)  # [B, C, 2T, H, W]
        t = x.shape[2]
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        x = self.resample(frames)
        x = rearrange(x, "(b t) c h w -> b c t h w", t=t)  # [B, C', T, 2H, 2W] or [B, C, T, H/2, W/2]
        if self.mode == "downsample3d":
            past = cache[self.slot]
            cache[self.slot] = own_tail(x, 2, 1)
            if past is not None:
                x = self.time_conv(torch.cat([past, x], dim=2))  # [B, C, T/2, H/2, W/2]
        return x


def _assign_slots(root: nn.Module) -> int:
    """Give every cached module a fixed index into the cache list; returns the list length."""
    cached = [m for m in root.modules() if hasattr(m, "slot")]
    for i, m in enumerate(cached):
        m.slot = i
    return len(cached)


def _middle(dim: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def _run(blocks: nn.Sequential, x: Tensor, cache: Cache, first: bool = False) -> Tensor:
    for block in blocks:
        if isinstance(block, ResidualBlock):
            x = block(x, cache)
        elif isinstance(block, Resample):
            x = block(x, cache, first)
        else:
            x = block(x)
    return x


class Encoder3d(nn.Module):
    """Video [B, 3, T, H, W] -> [B, 2*z_dim, T', H/8, W/8]; called on 1 frame, then 4 at a time (1 latent each)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]  # 96 -> [96, 96, 192, 384, 384]
        self.conv1 = CausalConv3d(3, dims[0], 3)
        blocks: list[nn.Module] = []
        in_dim = dims[0]
        for i, out_dim in enumerate(dims[1:]):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < len(cfg.temperal_downsample):
                blocks.append(Resample(out_dim, "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = _middle(in_dim)
        self.head = nn.Sequential(RMSNorm(in_dim, 3), nn.SiLU(), CausalConv3d(in_dim, cfg.z_dim * 2, 3))
        self.num_slots = _assign_slots(self)  # real: 22 convs + 2 downsample3d = 24

    def forward(self, x: Tensor, cache: Cache) -> Tensor:
        x = self.conv1(x, cache)
        x = _run(self.downsamples, x, cache)
        x = _run(self.middle, x, cache)
        norm, _, conv = self.head
        return conv(F.silu(norm(x)), cache)


class Decoder3d(nn.Module):
    """Latent [B, z_dim, 1, h, w] -> video [B, 3, 1 (first call) or 4, 8h, 8w]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]  # 96 -> [384, 384, 384, 192, 96]
        temporal_upsample = tuple(reversed(cfg.temperal_downsample))  # (True, True, False)
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3)
        self.middle = _middle(dims[0])
        blocks: list[nn.Module] = []
        in_dim = dims[0]
        for i, out_dim in enumerate(dims[1:]):
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < len(temporal_upsample):
                blocks.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
                in_dim = out_dim // 2  # the resample conv halves the width
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(RMSNorm(in_dim, 3), nn.SiLU(), CausalConv3d(in_dim, 3, 3))
        self.num_slots = _assign_slots(self)  # real: 30 convs + 2 upsample3d time_convs = 32

    def forward(self, x: Tensor, cache: Cache, first: bool) -> Tensor:
        """first: this is the stream's first latent frame (upsample3d layers then skip their temporal conv)."""
        x = self.conv1(x, cache)
        x = _run(self.middle, x, cache)
        x = _run(self.upsamples, x, cache, first)
        norm, _, conv = self.head
        return conv(F.silu(norm(x)), cache)


# ---- the VAE -------------------------------------------------------------------------------------------------------
def _check_video(video: Tensor, spatial: int, temporal: int) -> None:
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"expected video [B, 3, T, H, W] in [-1, 1], got {list(video.shape)}")
    t, h, w = video.shape[2:]
    if t < 1 or (t - 1) % temporal:
        lower = t - (t - 1) % temporal if t >= 1 else None
        options = f"{lower} or {lower + temporal}" if lower else "1"
        raise ValueError(f"the Wan VAE needs 1 + {temporal}k frames, got {t}; use {options}")
    for name, size in (("height", h), ("width", w)):
        if size < spatial or size % spatial:
            lower = size - size % spatial
            options = f"{lower} or {lower + spatial}" if lower else f"{spatial}"
            raise ValueError(f"{name} must be a multiple of {spatial}, got {size}; use {options}")


class WanVAE(nn.Module):
    """The Wan2.1 VAE. encode: video [B, 3, 1+4k, H, W] in [-1, 1] -> normalised latents [B, 16, 1+k, H/8, W/8].

    decode: the reverse (output clamped to [-1, 1]). Both accept tensors on any device/dtype and run in the module's
    own; latents are returned in float32, video in the module's dtype.
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder3d(cfg)
        self.conv1 = nn.Conv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)  # encoder output -> (mu, log_var)
        self.conv2 = nn.Conv3d(cfg.z_dim, cfg.z_dim, 1)  # latent -> decoder input
        self.decoder = Decoder3d(cfg)

    @property
    def device(self) -> torch.device:
        return self.conv2.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    @property
    def memory_format(self) -> torch.memory_format:
        """torch.channels_last_3d after `to_channels_last()`, else torch.contiguous_format."""
        return _layout(self.decoder.conv1.weight)

    def to_channels_last(self) -> WanVAE:
        """Put the conv weights in channels-last layout (NDHWC / NHWC); activations follow. Same results.

        On Hopper this lets cuDNN run its NDHWC implicit-GEMM kernels without converting every conv's input and output
        (18 % of the decode's GPU time in NCDHW): the decode takes 25 % less time (H200, 832x480, bench/RESULTS.md).
        """
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                m.to(memory_format=torch.channels_last_3d)
            elif isinstance(m, nn.Conv2d):  # the per-frame resample and attention convs: NHWC, so nothing converts
                m.to(memory_format=torch.channels_last)
        return self

    normalize = staticmethod(normalize)
    denormalize = staticmethod(denormalize)

    def encode(self, video: Tensor) -> Tensor:
        """video [B, 3, 1+4k, H, W] in [-1, 1] -> normalised latents [B, 16, 1+k, H/8, W/8] (float32, mu only).

        Frames run 1, 4, 4, ... through the encoder with a causal cache local to this call.
        """
        st, ss = self.cfg.temporal_stride, self.cfg.spatial_stride
        _check_video(video, ss, st)
        x = video.to(self.device, self.dtype)
        cache: Cache = [None] * self.encoder.num_slots
        starts = [0, *range(1, x.shape[2], st)]  # T=9 -> [0, 1, 5]
        mus = []
        for start in starts:
            stop = 1 if start == 0 else start + st
            h = self.encoder(x[:, :, start:stop], cache)  # [B, 32, 1, H/8, W/8]
            mus.append(self.conv1(h)[:, : self.cfg.z_dim])  # mu: [B, 16, 1, H/8, W/8]
        return normalize(torch.cat(mus, dim=2).float())

    def decode(self, latents: Tensor, clamp: bool = True) -> Tensor:
        """Normalised latents [B, 16, F, h, w] -> video [B, 3, 1+4(F-1), 8h, 8w] in [-1, 1].

        clamp=False returns the raw decoder output, for training: a clamped pixel has zero gradient, so one that
        overshoots to the wrong side of [-1, 1] would never come back.
        """
        return StreamingDecoder(self).decode(latents, clamp=clamp)


class StreamingDecoder:
    """Decode a latent stream chunk by chunk; the result equals one `WanVAE.decode` of the whole stream.

    The causal state is a list of 32 tensors (each [B, C, 2, H_l, W_l]: the last 2 input frames of one temporal conv)
    plus the count of latent frames seen; it does not grow with the stream. Several decoders may share one VAE.
    At 832x480 the state holds about 944 M elements (1.9 GB in 16-bit).
    """

    def __init__(self, vae: WanVAE) -> None:
        self.vae = vae
        self.cache: Cache = [None] * vae.decoder.num_slots
        self.latent_frames = 0  # latent frames decoded since the last reset

    def reset(self) -> None:
        """Start a new video."""
        self.cache = [None] * self.vae.decoder.num_slots
        self.latent_frames = 0

    @property
    def video_frames(self) -> int:  # 3 latent frames -> 9, 6 -> 21
        return 0 if self.latent_frames == 0 else 1 + self.vae.cfg.temporal_stride * (self.latent_frames - 1)

    def decode(self, latents: Tensor, clamp: bool = True) -> Tensor:
        """Normalised latents [B, 16, f, h, w] (f >= 1) -> frames [B, 3, n, 8h, 8w] in [-1, 1] (raw if not clamp).

        n = 4f, or 4f - 3 for the stream's first chunk (3 latents -> 9 frames, then 12 per chunk).
        """
        return self.decode_raw(denormalize(latents.to(self.vae.device, torch.float32)), clamp=clamp)

    def decode_raw(self, mu: Tensor, clamp: bool = True) -> Tensor:
        """`decode` of raw mu [B, 16, f, h, w] (ComfyUI's LATENT space: `denormalize` of the DiT's latents)."""
        check_stream_chunk(mu, self.cache[self.vae.decoder.conv1.slot])  # [B, 16, 2, h, w] once started
        vae = self.vae
        x = mu.to(vae.device, vae.dtype)  # raw mu [B, 16, f, h, w]
        x = x.contiguous(memory_format=vae.memory_format)  # activations follow the weights' layout on every device
        frames = []
        for i in range(x.shape[2]):  # one latent frame per call: same shapes however the stream is chunked
            y = vae.conv2(x[:, :, i : i + 1])  # [B, 16, 1, h, w]
            frames.append(vae.decoder(y, self.cache, first=self.latent_frames == 0))  # [B, 3, 1 or 4, 8h, 8w]
            self.latent_frames += 1
        video = torch.cat(frames, dim=2)
        return video.clamp_(-1.0, 1.0) if clamp else video

    def state_dict(self) -> dict[str, Tensor]:
        """The stream state as tensors (safetensors-friendly): 'latent_frames' and 'cache.{slot}'.

        The tensors are shared, not copied: decoding replaces cache entries and never writes into them.
        """
        state = {"latent_frames": torch.tensor(self.latent_frames, dtype=torch.int64)}
        state.update({f"cache.{i}": t for i, t in enumerate(self.cache) if t is not None})
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Resume a stream saved by `state_dict` (tensors are moved to the VAE's device and dtype)."""
        slots = self.vae.decoder.num_slots
        allowed = {"latent_frames", *(f"cache.{i}" for i in range(slots))}
        if "latent_frames" not in state or not set(state) <= allowed:
            raise ValueError(
                f"not a StreamingDecoder state: expected 'latent_frames' and cache.0..{slots - 1}, "
                f"got {sorted(state)[:5]}"
            )
        self.latent_frames = int(state["latent_frames"])
        self.cache = [None] * slots
        for i in range(slots):
            if f"cache.{i}" in state:
                self.cache[i] = state[f"cache.{i}"].to(self.vae.device, self.vae.dtype).contiguous(
                    memory_format=self.vae.memory_format)


# ---- loading -------------------------------------------------------------------------------------------------------
def _strip_prefix(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if sd and all(k.startswith("model.") for k in sd):
        return {k[len("model."):]: v for k, v in sd.items()}
    return dict(sd)


def is_wan21_vae_state_dict(sd: Mapping[str, object]) -> bool:
    """True for a Wan2.1 VAE state dict (bare or `model.`-prefixed keys); False for Wan2.2 VAEs and anything else."""
    keys = set(_strip_prefix(sd))  # type: ignore[arg-type]
    return _WAN21_KEY in keys and _WAN22_KEY not in keys


def _describe(keys: set[str]) -> str:
    """What a non-Wan2.1-VAE state dict looks like, for the error message."""
    def has(fragment: str) -> bool:
        return any(fragment in k for k in keys)

    if _WAN22_KEY in keys:
        return "a Wan2.2 VAE (z_dim 48, 16x compression), which Stream-R1 cannot use"
    if has("blocks.0.self_attn.q.weight") or has("patch_embedding.weight"):
        return "a Wan DiT (diffusion model) checkpoint"
    if has("condition_embedder.") or has("attn1.to_q"):
        return "a Diffusers-format Wan transformer"
    if has("decoder.up_blocks.") or has("post_quant_conv."):
        return "a Diffusers-format VAE (AutoencoderKLWan or an image VAE)"
    if has("token_embedding.weight") or has("shared.weight") or has("encoder.block.0."):
        return "a (um)T5 text encoder"
    if has("decoder.up.0.block.") or has("first_stage_model."):
        return "a Stable-Diffusion-style image VAE"
    if has("decoder.1.weight") and not has("decoder.head."):
        return "a TAEHV tiny preview decoder"
    return f"an unknown model (first keys: {sorted(keys)[:3]})"


def _read_file(path: Path) -> dict[str, Tensor]:
    from .weights_io import read_tensors

    return read_tensors(path)


_DECODER_PARTS = ("conv2.", "decoder.")


def load_vae(
    path_or_state_dict: str | os.PathLike | Mapping[str, Tensor],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    decoder_only: bool = False,
) -> WanVAE:
    """Load a Wan2.1 VAE (.pth / .safetensors / state dict; fp32 or 16-bit; keys bare or `model.`-prefixed).

    Returns the model in eval mode with frozen parameters, on `device` (default: CPU) in `dtype`.
    `decoder_only`: load `conv2` + `decoder` only (the encoder's keys are ignored and the model has no `encoder` /
    `conv1`): what streaming decode needs, at 60 % of the weights.
    Raises ValueError when the weights are not a Wan2.1 VAE, saying what they look like.
    """
    is_path = isinstance(path_or_state_dict, (str, os.PathLike))
    source = str(path_or_state_dict) if is_path else "the state dict"
    sd = _read_file(Path(path_or_state_dict)) if is_path else dict(path_or_state_dict)  # type: ignore[arg-type]
    sd = _strip_prefix(sd)
    if not is_wan21_vae_state_dict(sd):
        raise ValueError(
            f"{source} is not a Wan2.1 VAE: it looks like {_describe(set(sd))}. Expected the 194-tensor Wan2.1 VAE "
            f"(Wan2.1_VAE.pth or wan_2.1_vae.safetensors) with keys like '{_WAN21_KEY}'."
        )
    cfg = VAEConfig.from_state_dict(sd)
    with torch.device("meta"):
        vae = WanVAE(cfg)
    if decoder_only:
        del vae.encoder, vae.conv1
        sd = {k: v for k, v in sd.items() if k.startswith(_DECODER_PARTS)}
    expected = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {s})" for k, s in expected.items()
             if k in sd and tuple(sd[k].shape) != s]
    if missing or unexpected or wrong:
        problems = [f"{name} ({len(items)}): {items[:5]}" for name, items in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
        raise ValueError(f"{source} does not match the Wan2.1 VAE (dim {cfg.dim}): " + "; ".join(problems))
    device = torch.device("cpu") if device is None else torch.device(device)
    vae.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in sd.items()}, strict=True, assign=True)
    return vae.eval().requires_grad_(False)

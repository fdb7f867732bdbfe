"""Pictures of reward saliency for people: heat maps, overlays, the temporal profile chart, PNG files.

Drawn with torch only (no matplotlib / PIL). Display normalisation (per-map min-max, gamma) is for looking
at maps; it is not the training weight: W_intra itself is `weights.intra_weights(...).w_intra`.
All images are float [.., 3, H, W] in [0, 1].
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .saliency import pixel_to_latent_index

_CMAPS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "jet": ((0.0, 0.0, 0.5), (0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.5, 0.0, 0.0)),
    "blues": ((0.94, 0.97, 1.0), (0.62, 0.79, 0.88), (0.26, 0.57, 0.78), (0.03, 0.32, 0.61), (0.03, 0.19, 0.42)),
}
"""Colour stops, evenly spaced over [0, 1] ("blues": light blue -> navy, as in the paper figures)."""


def colorize(x: Tensor, cmap: str = "jet") -> Tensor:
    """x [..., H, W] in [0, 1] -> RGB [..., 3, H, W] by linear interpolation between the colour stops."""
    if cmap not in _CMAPS:
        raise ValueError(f"cmap must be one of {sorted(_CMAPS)}, got {cmap!r}")
    stops = torch.tensor(_CMAPS[cmap], dtype=torch.float32, device=x.device)  # [S, 3]
    pos = x.float().clamp(0, 1) * (len(stops) - 1)
    lo = pos.floor().long().clamp(max=len(stops) - 2)
    t = (pos - lo).unsqueeze(-1)                                              # [..., H, W, 1]
    rgb = stops[lo] * (1 - t) + stops[lo + 1] * t                             # [..., H, W, 3]
    return rgb.movedim(-1, -3)


def normalize_maps(maps: Tensor, per_map: bool = True, gamma: float = 1.0) -> Tensor:
    """maps [N, H, W] -> [0, 1] by min-max (per map, or over all), then ** gamma (display only)."""
    dims = (1, 2) if per_map else (0, 1, 2)
    lo, hi = maps.amin(dim=dims, keepdim=True), maps.amax(dim=dims, keepdim=True)
    return ((maps - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1) ** gamma


def resize_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """[N, h, w] -> [N, H, W] bilinear (antialiased when shrinking)."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False,
                         antialias=True)[:, 0]


def heatmaps(maps: Tensor, size: tuple[int, int] | None = None, cmap: str = "jet", per_map: bool = True,
             gamma: float = 1.0) -> Tensor:
    """[N, h, w] -> coloured [N, 3, H, W] (resized to `size` first)."""
    if size is not None:
        maps = resize_maps(maps, size)
    return colorize(normalize_maps(maps.float(), per_map, gamma), cmap)


def overlay(frames: Tensor, heat: Tensor, alpha: float = 0.55) -> Tensor:
    """frames, heat [N, 3, H, W] -> (1 - alpha) * frame + alpha * heat."""
    return ((1 - alpha) * frames.float() + alpha * heat.float()).clamp(0, 1)


def latent_to_frames(latent: Tensor, num_frames: int, size: tuple[int, int], temporal_stride: int = 4) -> Tensor:
    """Latent-grid map [F, h, w] -> per-pixel-frame map [T, H, W]: frame i shows latent ceil(i / 4)."""
    idx = torch.tensor([min(pixel_to_latent_index(i, temporal_stride), latent.shape[0] - 1)
                        for i in range(num_frames)], device=latent.device)
    return resize_maps(latent.index_select(0, idx), size)


def grid_image(images: Tensor, cols: int, pad: int = 2, pad_value: float = 1.0) -> Tensor:
    """[N, 3, H, W] -> one [3, rows*(H+pad)+pad, cols*(W+pad)+pad] contact sheet (row-major)."""
    n = images.shape[0]
    rows = -(-n // cols)
    filler = torch.full((rows * cols - n, *images.shape[1:]), pad_value, dtype=images.dtype, device=images.device)
    x = F.pad(torch.cat([images, filler]), (pad, 0, pad, 0), value=pad_value)  # [R*C, 3, H+pad, W+pad]
    x = rearrange(x, "(r c) ch h w -> ch (r h) (c w)", r=rows, c=cols)
    return F.pad(x, (0, pad, 0, pad), value=pad_value)


def temporal_profile_image(weights: Tensor, highlight: Sequence[bool] | None = None, height: int = 200,
                           width: int = 640, reference: float = 1.0) -> Tensor:
    """Bar chart [3, H, W] of weights [N] (e.g. tau per latent frame); highlighted bars red, others navy, a
    dotted grey line at `reference` (1.0 = the mean of tau), a black baseline."""
    w = weights.detach().float().cpu()
    n, margin = w.numel(), 8
    top = max(float(w.max()), reference) * 1.1
    img = torch.ones(3, height, width)
    plot_h, plot_w = height - 2 * margin, width - 2 * margin
    step = plot_w / max(n, 1)
    navy, red, grey = torch.tensor([0.03, 0.19, 0.42]), torch.tensor([0.85, 0.1, 0.1]), torch.tensor([0.6] * 3)
    for i in range(n):
        x0 = margin + int(round(i * step + 0.15 * step))
        x1 = max(x0 + 1, margin + int(round((i + 1) * step - 0.15 * step)))
        y0 = margin + plot_h - int(round(plot_h * max(float(w[i]), 0.0) / top))
        color = red if highlight is not None and highlight[i] else navy
        img[:, y0:margin + plot_h, x0:x1] = color[:, None, None]
    y_ref = margin + plot_h - int(round(plot_h * reference / top))
    dots = torch.arange(margin, margin + plot_w) % 8 < 4
    img[:, y_ref, margin:margin + plot_w] = torch.where(dots, grey[:, None], img[:, y_ref, margin:margin + plot_w])
    img[:, margin + plot_h, margin:margin + plot_w] = 0.0                      # baseline
    return img


def to_uint8_hwc(image: Tensor) -> Tensor:
    """[3, H, W] float in [0, 1] -> [H, W, 3] uint8."""
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu()


def write_png(path: str | Path, image: Tensor) -> None:
    """Write [3, H, W] float [0, 1] (or [H, W, 3] uint8) as an 8-bit RGB PNG (zlib, no PIL)."""
    px = image if image.dtype == torch.uint8 else to_uint8_hwc(image)
    h, w, _ = px.shape
    raw = torch.cat([torch.zeros(h, 1, dtype=torch.uint8), px.reshape(h, w * 3)], dim=1)  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw.numpy().tobytes(), 6)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)

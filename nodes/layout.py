"""The only module that knows both tensor layouts: ComfyUI's (IMAGE, LATENT, CONDITIONING) and the core's.

| ComfyUI                                             | core                                               |
|-----------------------------------------------------|----------------------------------------------------|
| IMAGE [B*T, H, W, 3] float32 in [0, 1]              | frames [B, T, 3, H, W] in [0, 1]                   |
| LATENT {"samples": raw VAE mu [B, 16, T, H/8, W/8]} | normalised latents [B, T, 16, h, w] ((mu-mean)/std)|
| CONDITIONING [[cond [B, L, 4096], {...}], ...]      | context [B, L, text_dim]                           |
"""
from __future__ import annotations

import logging

import torch
from einops import rearrange
from torch import Tensor

from ..stream_r1.vae import LATENT_MEAN, denormalize, normalize

log = logging.getLogger(__name__)
LATENT_CHANNELS = len(LATENT_MEAN)  # 16: the Wan2.1 VAE


def image_from_frames(frames: Tensor, device: torch.device) -> Tensor:
    """[B, T, 3, H, W] in [0, 1] -> IMAGE [B*T, H, W, 3] float32 (a video is a batch of frames)."""
    return rearrange(frames, "b t c h w -> (b t) h w c").to(device, torch.float32)


def frames_from_image(image: Tensor) -> Tensor:
    """IMAGE [T, H, W, 3] -> [1, T, 3, H, W]."""
    return rearrange(image, "t h w c -> 1 t c h w")


def placeholder_image(height: int, width: int, device: torch.device) -> Tensor:
    """One black frame [1, H, W, 3]: the IMAGE output when no VAE is connected."""
    return torch.zeros(1, height, width, 3, device=device)


def latent_from_core(z: Tensor, device: torch.device) -> dict:
    """Normalised [B, T, 16, h, w] -> LATENT {"samples": raw mu [B, 16, T, h, w]} in float32."""
    return {"samples": denormalize(rearrange(z.float(), "b t c h w -> b c t h w")).to(device)}


def raw_from_latent(latent: dict) -> Tensor:
    """LATENT -> raw mu [B, 16, T, h, w], checked to be a Wan2.1 video latent."""
    mu = latent["samples"]
    if mu.ndim != 5 or mu.shape[1] != LATENT_CHANNELS or mu.shape[2] < 1:
        extra = " (a Wan 2.2 latent: Stream-R1 uses the Wan 2.1 VAE)" if mu.ndim == 5 and mu.shape[1] == 48 else ""
        raise ValueError(f"expected a Wan2.1 video LATENT [B, {LATENT_CHANNELS}, T, H/8, W/8], "
                         f"got {list(mu.shape)}{extra}")
    return mu


def core_from_latent(latent: dict) -> Tensor:
    """LATENT -> normalised [B, T, 16, h, w] (the DiT's space)."""
    return rearrange(normalize(raw_from_latent(latent).float()), "b c t h w -> b t c h w")


def context_from_conditioning(conditioning: list, text_dim: int) -> Tensor:
    """CONDITIONING from CLIPTextEncode -> context [B, L, text_dim] (padded tokens stay zero)."""
    if not conditioning or not torch.is_tensor(conditioning[0][0]):
        raise ValueError("positive must be a CONDITIONING from CLIPTextEncode (with CLIPLoader type wan)")
    if len(conditioning) > 1:
        log.warning("conditioning has %d entries; Stream-R1 reads the first only", len(conditioning))
    cond = conditioning[0][0]
    if cond.ndim != 3 or cond.shape[-1] != text_dim:
        width = cond.shape[-1] if cond.ndim else 0
        raise ValueError(f"conditioning is {width} wide but this model reads {text_dim}-wide text features; "
                         f"the Wan student needs umT5-XXL (CLIPLoader type wan)")
    return cond

"""TAEHV tiny preview decoder for Wan2.1 latents (the `taew2_1.pth` / `taew2_1.safetensors` weights).

TAEHV ("Tiny AutoEncoder for Hunyuan Video", madebyollin/taehv; read at commit 1f14a56: `taehv.py`, `README.md`,
`examples/TAEW2.1_*_Demo.ipynb`) decodes a video latent with 2-D convolutions only. Time enters in two ways:

* **MemBlock**: a residual block whose first conv sees the current frame concatenated with the *previous* frame's
  input to the same block (zeros before the stream starts) - a causal memory of exactly one frame per block;
* **TGrow**: a 1x1 conv C -> s*C whose s channel groups become s consecutive frames (temporal upsampling).

Decoder layout (the checkpoint's `decoder.{i}` indices; real widths 256/128/64/64):

    0 soft clamp tanh(x/3)*3 | 1 conv3x3 16->256 | 2 ReLU
    3-5 MemBlock(256)   | 6 nearest x2 | 7 TGrow(256, 1)  | 8 conv3x3 256->128 (no bias)
    9-11 MemBlock(128)  | 12 nearest x2 | 13 TGrow(128, 2) | 14 conv3x3 128->64 (no bias)
    15-17 MemBlock(64)  | 18 nearest x2 | 19 TGrow(64, 2)  | 20 conv3x3 64->64 (no bias)
    21 ReLU | 22 conv3x3 64->3 -> RGB in about [0, 1]

So one latent frame becomes 4 video frames at 8x the size. The stream's first 3 output frames are dropped
(upstream `frames_to_trim = t_upscale - 1`), giving Wan's convention: 1 + 4(F-1) frames for F latent frames.

Facts taken from the source (not from weights, which were not available here):

* key names and shapes: 128 tensors in the released file, 64 `encoder.*` + 64 `decoder.*` (`_decoder_shapes`,
  `_encoder_shapes`); only the decoder is built here, the encoder keys are checked and dropped;
* latent scaling: none. TAEHV takes the latents the diffusion model works in; for Wan2.1 that is our *normalised*
  space z = (mu - mean) / std (README "TAEHV does not use any latent scales / shifts"; the Diffusers demo replaces
  the pipeline's VAE by TAEHV with latents_mean 0 and latents_std 1). ComfyUI's LATENT (raw mu) needs
  `stream_r1.vae.normalize` first;
* output in [0, 1] (upstream clamps to [0, 1]); we return [-1, 1] like `WanVAE.decode`.

Streaming equals one whole decode: each MemBlock's state is one frame (its last input), at its own frame rate, so
carrying that list from chunk to chunk gives exactly the inputs a whole-sequence run sees. We run each chunk's frames
through a block together (batched over time) and apply each TGrow *before* the nearest upsample that precedes it in
the checkpoint (a 1x1 conv commutes with nearest upsampling: 4x fewer TGrow FLOPs, same result).

Cost (`TAEHV.decoder_macs`; 9.84 M parameters): 263.5 GMAC per latent frame at 832x480 (272.1 in the checkpoint's
layer order), i.e. 0.132 TFLOP per video frame against the Wan VAE decoder's 3.39 TFLOP (spec-models §8.3): 26x fewer
FLOPs. Its stream state is 33.5 M elements (67 MB in 16-bit) against the Wan decoder's 944 M. Predicted GPU speed-up:
bench/RESULTS.md (not yet measured). Quality is lower: it is a preview decoder (upstream README, "limitations").
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .ops import own_tail
from .vae import _describe, check_stream_chunk, is_wan21_vae_state_dict

Memory = list[Tensor | None]

SOFT_CLAMP = 3.0
"""Latents enter through tanh(x / 3) * 3 (upstream `Clamp`, decoder.0)."""
OTHER_LATENT_SPACES: dict[int, str] = {
    48: "Wan2.2 TI2V-5B (taew2_2 / taew2_2_super)",
    32: "Hunyuan Video 1.5 (taehv1_5)",
    24: "MiniMax H3 (taeh3)",
    128: "LTX-2 (taeltx_2 / taeltx2_3)",
}
"""TAEHV latent widths other than Wan2.1's 16, by `decoder.1.weight.shape[1]` (upstream constructor)."""
SAME_SHAPE_NAMES: dict[str, str] = {
    "taehv1_5": "Hunyuan Video 1.5",
    "taehv": "Hunyuan Video",
    "taecvx": "CogVideoX",
    "taeos1_3": "Open-Sora 1.3",
}
"""TAEHV files with 16 latent channels: same tensor shapes as taew2_1, another latent space. Only the file name tells
them apart (as upstream does), so a file with one of these names is refused."""


@dataclass(frozen=True)
class TAEHVConfig:
    """Architecture of the TAEHV decoder (base variant; upstream constructor defaults for Wan2.1)."""

    latent_channels: int = 16
    """Wan2.1 latent channels (z_dim)."""
    widths: tuple[int, int, int, int] = (256, 128, 64, 64)
    """Channels of the three MemBlock stages and of the final conv (upstream `n_f`)."""
    time_upscale: tuple[bool, bool, bool] = (False, True, True)
    """Which stage's TGrow doubles the frame rate: 2 of 3 -> 4x, Wan's temporal stride."""
    image_channels: int = 3

    @property
    def temporal_stride(self) -> int:  # (False, True, True) -> 4
        return 2 ** sum(self.time_upscale)

    @property
    def spatial_stride(self) -> int:  # 3 nearest x2 upsamples -> 8
        return 2 ** len(self.time_upscale)


# ---- building blocks -----------------------------------------------------------------------------------------------
def _conv3x3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """tanh(x / 3) * 3: bounds the latents smoothly to (-3, 3)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / SOFT_CLAMP) * SOFT_CLAMP


class MemBlock(nn.Module):
    """out = ReLU(conv([x, past]) + x); conv = {0 conv3x3 2C->C, 1 ReLU, 2 conv3x3, 3 ReLU, 4 conv3x3}.

    past: this block's input at the previous frame (zeros at the stream's start). Decoder blocks keep the width, so
    the skip is the identity (no `skip` weights in the file).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv3x3(2 * dim, dim), nn.ReLU(inplace=True), _conv3x3(dim, dim),
                                  nn.ReLU(inplace=True), _conv3x3(dim, dim))

    def forward(self, x: Tensor, past: Tensor) -> Tensor:  # [N, C, H, W] each -> [N, C, H, W]
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + x)


class TGrow(nn.Module):
    """Temporal upsampling: 1x1 conv C -> stride*C, channel group j becomes sub-frame j (of `stride`)."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(dim, dim * stride, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # [B*T, C, H, W] -> [B*T*stride, C, H, W], frame-major
        return rearrange(self.conv(x), "n (s c) h w -> (n s) c h w", s=self.stride)


def _execution_order(layers: nn.Sequential) -> list[int]:
    """Layer indices in run order: each (nearest upsample, TGrow) pair swapped (they commute; TGrow is then 4x
    cheaper)."""
    order = list(range(len(layers)))
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.Upsample) and isinstance(layers[i + 1], TGrow):
            order[i], order[i + 1] = i + 1, i
    return order


class TAEHV(nn.Module):
    """The TAEHV decoder. `decode`: normalised latents [B, 16, F, h, w] -> video [B, 3, 1+4(F-1), 8h, 8w] in
    [-1, 1]; for streams use `TAEHVStreamingDecoder`."""

    def __init__(self, cfg: TAEHVConfig = TAEHVConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        layers: list[nn.Module] = [SoftClamp(), _conv3x3(cfg.latent_channels, w[0]), nn.ReLU(inplace=True)]
        for stage, grows in enumerate(cfg.time_upscale):
            layers += [MemBlock(w[stage]) for _ in range(3)]
            layers += [nn.Upsample(scale_factor=2), TGrow(w[stage], 2 if grows else 1),
                       _conv3x3(w[stage], w[stage + 1], bias=False)]
        layers += [nn.ReLU(inplace=True), _conv3x3(w[3], cfg.image_channels)]
        self.decoder = nn.Sequential(*layers)  # real: 23 layers, 64 tensors
        self.order = _execution_order(self.decoder)

    @property
    def device(self) -> torch.device:
        return self.decoder[1].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder[1].weight.dtype

    def run(self, x: Tensor, memory: Memory) -> Tensor:
        """Raw decoder on latents x [B, T, 16, h, w] -> [B, T*4, 3, 8h, 8w] (about [0, 1], untrimmed).

        memory: one entry per layer; a MemBlock's entry is its input at the last frame seen ([B, 1, C, H, W]) or
        None at the stream's start. Updated in place.
        """
        b = x.shape[0]
        h = rearrange(x, "b t c y x -> (b t) c y x")
        for i in self.order:
            layer = self.decoder[i]
            if isinstance(layer, MemBlock):
                frames = rearrange(h, "(b t) c y x -> b t c y x", b=b)  # [B, T', C, H, W]
                last = memory[i] if memory[i] is not None else torch.zeros_like(frames[:, :1])
                past = torch.cat([last, frames[:, :-1]], dim=1)  # frame t sees frame t-1
                memory[i] = own_tail(frames, 1, 1)  # [B, 1, C, H, W] in own storage: does not pin h
                h = layer(h, rearrange(past, "b t c y x -> (b t) c y x"))
            else:
                h = layer(h)
        return rearrange(h, "(b t) c y x -> b t c y x", b=b)

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, 16, F, h, w] -> video [B, 3, 1+4(F-1), 8h, 8w] in [-1, 1]."""
        return TAEHVStreamingDecoder(self).decode(latents)

    def decoder_macs(self, height: int, width: int) -> int:
        """Multiply-accumulates of the decoder per *latent* frame for a height x width video (run order).

        832x480: 263.5 G per latent frame = 65.9 G per video frame (0.132 TFLOP; 26x fewer than the Wan VAE).
        """
        frames, hh, ww = 1, height // self.cfg.spatial_stride, width // self.cfg.spatial_stride
        total = 0
        for i in self.order:
            layer = self.decoder[i]
            if isinstance(layer, nn.Upsample):
                hh, ww = hh * 2, ww * 2
            for m in layer.modules():
                if isinstance(m, nn.Conv2d):
                    k = m.kernel_size[0] * m.kernel_size[1]
                    total += frames * hh * ww * k * m.in_channels * m.out_channels
            if isinstance(layer, TGrow):
                frames *= layer.stride
        return total

    def flop_per_video_frame(self, height: int, width: int) -> float:
        return 2.0 * self.decoder_macs(height, width) / self.cfg.temporal_stride


class TAEHVStreamingDecoder:
    """Decode a latent stream chunk by chunk with TAEHV (a `ChunkDecoder`; drop-in for `vae.StreamingDecoder`).

    Frame counts follow the Wan VAE: the stream's first chunk of f latent frames gives 1 + 4(f-1) frames, later ones
    4f. The state is one frame per MemBlock (9 tensors, 33.5 M elements at 832x480) and the latent frame count; the
    result equals one `TAEHV.decode` of the whole stream.
    """

    def __init__(self, taehv: TAEHV) -> None:
        self.taehv = taehv
        self.reset()

    def reset(self) -> None:
        """Start a new video."""
        self.memory: Memory = [None] * len(self.taehv.decoder)
        self.latent_frames = 0

    @property
    def video_frames(self) -> int:  # 3 latent frames -> 9, 6 -> 21
        return 0 if self.latent_frames == 0 else 1 + self.taehv.cfg.temporal_stride * (self.latent_frames - 1)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, 16, f, h, w] (f >= 1) -> frames [B, 3, n, 8h, 8w] in [-1, 1].

        n = 4f, or 4f - 3 for the stream's first chunk (3 latents -> 9 frames, then 12 per chunk).
        """
        first_block = next(i for i, m in enumerate(self.taehv.decoder) if isinstance(m, MemBlock))  # 3
        check_stream_chunk(latents, self.memory[first_block])  # its last input: [B, 1, 256, h, w] once started
        x = rearrange(latents.to(self.taehv.device, self.taehv.dtype), "b c f h w -> b f c h w")
        y = self.taehv.run(x, self.memory)  # [B, 4f, 3, 8h, 8w], about [0, 1]
        if self.latent_frames == 0:
            y = y[:, self.taehv.cfg.temporal_stride - 1:]  # drop the 3 warm-up frames: 1 + 4(f-1) remain
        self.latent_frames += latents.shape[2]
        return rearrange(y.clamp(0.0, 1.0) * 2.0 - 1.0, "b t c h w -> b c t h w")

    def state_dict(self) -> dict[str, Tensor]:
        """The stream state: 'latent_frames' and 'memory.{layer}' (tensors shared, not copied)."""
        state = {"latent_frames": torch.tensor(self.latent_frames, dtype=torch.int64)}
        state.update({f"memory.{i}": t for i, t in enumerate(self.memory) if t is not None})
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Resume a stream saved by `state_dict` (moved to the decoder's device and dtype)."""
        blocks = [i for i, m in enumerate(self.taehv.decoder) if isinstance(m, MemBlock)]
        allowed = {"latent_frames", *(f"memory.{i}" for i in blocks)}
        if "latent_frames" not in state or not set(state) <= allowed:
            raise ValueError(f"not a TAEHVStreamingDecoder state: expected 'latent_frames' and memory.{{{blocks[0]}.."
                             f"{blocks[-1]}}}, got {sorted(state)[:5]}")
        self.reset()
        self.latent_frames = int(state["latent_frames"])
        for i in blocks:
            if f"memory.{i}" in state:
                self.memory[i] = state[f"memory.{i}"].to(self.taehv.device, self.taehv.dtype)


# ---- checkpoint layout and loading ---------------------------------------------------------------------------------
def _decoder_shapes(cfg: TAEHVConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = TAEHV(cfg)
    return {f"decoder.{k}": tuple(v.shape) for k, v in model.decoder.state_dict().items()}


def _encoder_shapes(cfg: TAEHVConfig) -> dict[str, tuple[int, ...]]:
    """The released file's encoder (not built here): conv 3->64, then per stage TPool (1x1, 2 frames -> 1 where the
    encoder halves time: (True, True, False)), a stride-2 conv3x3 and 3 MemBlock(64); conv3x3 64->16 last."""
    n = 64
    shapes: dict[str, tuple[int, ...]] = {"encoder.0.weight": (n, cfg.image_channels, 3, 3), "encoder.0.bias": (n,)}
    index = 2
    for pools in reversed(cfg.time_upscale):  # encoder time downscale is the decoder's upscale reversed
        shapes[f"encoder.{index}.conv.weight"] = (n, n * (2 if pools else 1), 1, 1)
        shapes[f"encoder.{index + 1}.weight"] = (n, n, 3, 3)
        for block in range(index + 2, index + 5):
            for j, c_in in ((0, 2 * n), (2, n), (4, n)):
                shapes[f"encoder.{block}.conv.{j}.weight"] = (n, c_in, 3, 3)
                shapes[f"encoder.{block}.conv.{j}.bias"] = (n,)
        index += 5
    shapes[f"encoder.{index}.weight"] = (cfg.latent_channels, n, 3, 3)  # encoder.17
    shapes[f"encoder.{index}.bias"] = (cfg.latent_channels,)
    return shapes


def _check_state_dict(sd: Mapping[str, Tensor], source: str, name: str | None, cfg: TAEHVConfig) -> None:
    keys = set(sd)
    hint = "Expected the Wan2.1 TAEHV (taew2_1.pth or taew2_1.safetensors from madebyollin/taehv)."
    if is_wan21_vae_state_dict(sd):
        raise ValueError(f"{source} is the full Wan2.1 VAE, not a TAEHV preview decoder: pass it as --vae "
                         f"(or load it with stream_r1.vae.load_vae). {hint}")
    if "decoder.1.weight" not in keys or "decoder.22.weight" not in keys:
        looks = "a TAEHV 'super' decoder (another architecture)" if "decoder.0.weight" in keys else _describe(keys)
        raise ValueError(f"{source} is not a Wan2.1 TAEHV decoder: it looks like {looks}. {hint}")
    z, rgb = sd["decoder.1.weight"].shape[1], sd["decoder.22.weight"].shape[0]
    if z != cfg.latent_channels or rgb != cfg.image_channels:
        space = OTHER_LATENT_SPACES.get(z, f"an unknown model with {z} latent channels")
        raise ValueError(f"{source} is a TAEHV for another latent space: {space} (z={z}, {rgb} output channels); "
                         f"Stream-R1 decodes Wan2.1 latents (z={cfg.latent_channels}). {hint}")
    if name is not None:
        stem = name.lower()
        for prefix, model in SAME_SHAPE_NAMES.items():  # a taew2_1 renamed e.g. taehv.pth is refused too
            if stem.startswith(prefix):
                raise ValueError(f"{source} is named like the TAEHV for {model}: same tensor shapes as taew2_1, but "
                                 f"another latent space (its previews would show wrong colours and shapes); if it "
                                 f"really is the Wan2.1 file, name it taew2_1. {hint}")
    want = _decoder_shapes(cfg)
    encoder = _encoder_shapes(cfg)
    present_encoder = [k for k in encoder if k in keys]
    missing = [k for k in want if k not in keys]
    if present_encoder and len(present_encoder) != len(encoder):
        missing += [k for k in encoder if k not in keys]
    unexpected = sorted(k for k in keys if k not in want and k not in encoder)
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {s})" for k, s in {**want, **encoder}.items()
             if k in keys and tuple(sd[k].shape) != s]
    if missing or unexpected or wrong:
        problems = [f"{what} ({len(items)}): {items[:5]}" for what, items in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
        raise ValueError(f"{source} does not match the Wan2.1 TAEHV layout: " + "; ".join(problems) + f". {hint}")


def load_taehv(path_or_state_dict: str | os.PathLike | Mapping[str, Tensor],
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> TAEHV:
    """Load the Wan2.1 TAEHV decoder (taew2_1 .pth / .safetensors or a state dict with its 128 (or decoder-only 64)
    tensors). Returns it in eval mode with frozen parameters on `device` (default CPU) in `dtype`.

    Raises ValueError naming what the weights are when they are not a Wan2.1 TAEHV (a full Wan VAE, a TAEHV for
    Hunyuan / Wan2.2 / LTX, a DiT...) or when keys or shapes differ from the released file.
    """
    from .weights_io import read_tensors

    is_path = isinstance(path_or_state_dict, (str, os.PathLike))
    source = str(path_or_state_dict) if is_path else "the state dict"
    sd = read_tensors(path_or_state_dict) if is_path else dict(path_or_state_dict)  # type: ignore[arg-type]
    cfg = TAEHVConfig()
    _check_state_dict(sd, source, Path(path_or_state_dict).stem if is_path else None, cfg)  # type: ignore[arg-type]
    with torch.device("meta"):
        model = TAEHV(cfg)
    device = torch.device("cpu") if device is None else torch.device(device)
    weights = {k[len("decoder."):]: v.to(device=device, dtype=dtype) for k, v in sd.items() if k.startswith("decoder.")}
    model.decoder.load_state_dict(weights, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def random_taehv(seed: int = 0, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 cfg: TAEHVConfig = TAEHVConfig()) -> TAEHV:
    """A TAEHV at real size with seeded random weights (PyTorch's default init): for timing and tests."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TAEHV(cfg)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def taehv_state_dict(model: TAEHV, *, with_encoder: bool = True, seed: int = 0) -> dict[str, Tensor]:
    """The model's weights in the released file's layout: `decoder.*`, plus seeded random `encoder.*` tensors of the
    real shapes when `with_encoder` (this package has no TAEHV encoder). For tests and format checks."""
    sd = {f"decoder.{k}": v.detach().clone() for k, v in model.decoder.state_dict().items()}
    if with_encoder:
        g = torch.Generator().manual_seed(seed)
        sd.update({k: torch.randn(s, generator=g) * 0.05 for k, s in _encoder_shapes(model.cfg).items()})
    return sd

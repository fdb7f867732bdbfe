"""Streaming decode with ComfyUI's stock VAE (or the pack's own Wan VAE), and the Decode node.

`vae.decode()` keeps its causal feature cache only for one call, so decoding chunk by chunk with it breaks
at every chunk boundary. `ComfyVAEStream` drives `vae.first_stage_model` itself, one latent frame per
decoder call, with one feature-cache list kept for the whole video (spec-comfyui §5.3): a stream decoded
in any number of pieces equals one full decode. It is also the core's `ChunkDecoder`, so the stream loop
decodes each chunk as soon as it is denoised.

`CoreVAE` is the VAE value for a Wan VAE of the core (`stream_r1.vae.WanVAE`, e.g. the shapes-world bundle's tiny
one, loaded by our demo loader rather than by the stock Load VAE): `vae_stream()` gives it a `CoreVAEStream` (the
core's `StreamingDecoder` plus the ComfyVAEStream methods the nodes call), and its `decode` answers the stock VAE
Decode's call.

The fast path: for a stock Wan2.1 VAE on the model's device, the Generate nodes stream through the core's decoder
built once from that VAE's weights (`fast_vae`: decoder only, ComfyUI's VAE dtype, channels-last on CUDA, compiled
with the student when Load Model's compile is on) under a ModelPatcher of its own, so ComfyUI still loads and
offloads it. Frames equal ComfyUI's own `vae.decode` within the dtype's rounding (tests/test_nodes_decode.py).
`ComfyVAEStream` stays for a VAE on another device (e.g. --cpu-vae) and for stream states saved with it.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Optional

import torch
from torch import Tensor

from ..stream_r1.vae import StreamingDecoder, WanVAE, channels_last_pays, denormalize, load_vae, normalize
from . import host, layout

log = logging.getLogger(__name__)


class ComfyVAEStream:
    """One video's decode state over a stock Wan2.1 `VAE` (comfy.sd.VAE).

    State: a list with one slot per causal conv of the decoder, each holding the last 2 input frames
    (about 1.9 GB in 16-bit at 832x480); it does not grow with the video.
    """

    note: Optional[str] = None
    """Why the fast decoder is not used (shown on the node), or None."""

    def __init__(self, vae: Any):
        self.vae, self.model = vae, _stock_wan21(vae)
        self.reset()

    @property
    def patcher(self) -> Any:
        return getattr(self.vae, "patcher", None)

    def reset(self) -> None:
        """Start a new video."""
        self.feat_cache: list = [None] * host.vae_cache_slots(self.model.decoder)

    def release(self) -> None:
        self.feat_cache = []

    def memory_required(self, shape: tuple) -> int:
        """ComfyUI's estimate for decoding one latent frame of `shape` [B, 16, T, h, w]."""
        estimate = getattr(self.vae, "memory_used_decode", None)
        return int(estimate((*shape[:2], 1, *shape[3:]), self.vae.vae_dtype)) if estimate else 0

    @torch.no_grad()
    def decode_raw(self, mu: Tensor) -> Tensor:
        """Raw mu [B, 16, f, h, w] (ComfyUI's LATENT space) -> video [B, 3, T, 8h, 8w] in [-1, 1];
        T = 4f, or 4f - 3 for the video's first piece."""
        out = []
        for i in range(mu.shape[2]):                     # one latent frame per call: the verified pattern
            x = self.model.conv2(mu[:, :, i:i + 1].to(self.vae.device, self.vae.vae_dtype))
            y = self.model.decoder(x, feat_cache=self.feat_cache, feat_idx=[0])  # [B, 3, 1 or 4, H, W]
            out.append(torch.cat(list(y), dim=2) if isinstance(y, (list, tuple)) else y)  # newer ComfyUI: a list
        return torch.cat(out, dim=2).float().clamp(-1.0, 1.0)

    def decode(self, latents: Tensor) -> Tensor:
        """The core's ChunkDecoder: normalised latents [B, 16, f, h, w] -> video [B, 3, T, H, W] in [-1, 1]."""
        return self.decode_raw(denormalize(latents.float()))

    def frames(self, mu: Tensor) -> Tensor:
        """Raw mu [B, 16, f, h, w] -> frames [B, T, 3, H, W] in [0, 1] (the core's conversion)."""
        return (self.decode_raw(mu) * 0.5 + 0.5).transpose(1, 2)

    def state_dict(self) -> dict[str, Tensor]:
        """The decode cache as tensors (stream state files): 'slots', 'cache.{i}' for tensors and 'rep.{i}' for
        ComfyUI's "Rep" markers (first-frame upsample slots)."""
        state = {"slots": torch.tensor(len(self.feat_cache), dtype=torch.int64)}
        for i, t in enumerate(self.feat_cache):
            if torch.is_tensor(t):
                state[f"cache.{i}"] = t
            elif t is not None:
                state[f"rep.{i}"] = torch.zeros(0)
        return state

    def load_state_dict(self, state: dict) -> None:
        slots = host.vae_cache_slots(self.model.decoder)
        if "slots" not in state or int(state["slots"]) != slots:
            raise ValueError(f"the saved decode cache is not for this VAE (it has {int(state.get('slots', -1))} "
                             f"slots, this VAE decoder {slots}): load the VAE the stream was decoded with")
        cache: list = [None] * slots
        for key, t in state.items():
            if key.startswith("cache."):
                cache[int(key[6:])] = t.to(self.vae.device, self.vae.vae_dtype)
            elif key.startswith("rep."):
                cache[int(key[4:])] = "Rep"
        self.feat_cache = cache

    def __deepcopy__(self, memo: dict) -> "ComfyVAEStream":
        new = copy.copy(self)                            # the VAE itself is shared, never copied
        new.feat_cache = copy.deepcopy(self.feat_cache, memo)
        return new


def _stock_wan21(vae: Any) -> Any:
    """The `first_stage_model` of a stock Wan 2.1 VAE (comfy.sd.VAE); ValueError naming the right file otherwise."""
    channels = getattr(vae, "latent_channels", None)
    model = getattr(vae, "first_stage_model", None)
    if channels != layout.LATENT_CHANNELS or not hasattr(model, "decoder") or not hasattr(model, "conv2"):
        kind = " (a Wan 2.2 VAE)" if channels == 48 else ""
        raise ValueError(f"this VAE has {channels} latent channels{kind}; Stream-R1 needs the Wan 2.1 VAE "
                         f"(wan_2.1_vae.safetensors, {layout.LATENT_CHANNELS} channels) in Load VAE")
    return model


class CoreVAE:
    """A VAE link value around the core's `WanVAE` (ComfyUI's VAE type is `comfy.sd.VAE`; this one supports what
    the Stream-R1 nodes use and the stock VAE Decode's call, `decode(raw mu)`, nothing else).

    `patcher`: a ModelPatcher around the module inside ComfyUI (so Generate loads it with the student), else None.
    """

    latent_channels = layout.LATENT_CHANNELS

    def __init__(self, vae: WanVAE, patcher: Any = None):
        self.core, self.patcher = vae, patcher
        self.compiled = False

    def compile(self, device: torch.device) -> Optional[str]:
        """torch.compile the decoder once (as `generate --compile` does); returns why not where it cannot run."""
        from .loader import compile_unavailable
        why_not = compile_unavailable(device)
        if why_not is None and not self.compiled:
            self.core.decoder.compile()
            self.compiled = True
        return why_not

    @torch.no_grad()
    def decode(self, samples: Tensor) -> Tensor:
        """Raw mu [B, 16, T, h, w] (a LATENT's samples) -> frames [B, T', H, W, 3] in [0, 1], as comfy.sd.VAE."""
        host.load_models([self.patcher])
        video = self.core.decode(normalize(layout.raw_from_latent({"samples": samples}).float()))  # [B, 3, T', H, W]
        return (video.float() * 0.5 + 0.5).permute(0, 2, 3, 4, 1).to(host.intermediate_device())

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"this VAE (the pack's own Wan VAE, e.g. the shapes-world demo's) supports decoding "
                             f"only (Stream-R1 nodes, VAE Decode); {name!r} is a feature of ComfyUI's VAE it lacks")

    def __deepcopy__(self, memo: dict) -> "CoreVAE":
        return self                                      # shared weights, like ComfyUI's VAE in a state copy


class CoreVAEStream(StreamingDecoder):
    """One video's decode state over a `CoreVAE`: the core's exact streaming decoder plus the methods the nodes
    call on a ComfyVAEStream."""

    note: Optional[str] = None

    def __init__(self, vae: CoreVAE):
        super().__init__(vae.core)
        self.wrapper = vae

    @property
    def patcher(self) -> Any:
        return self.wrapper.patcher

    def release(self) -> None:
        self.cache = []

    def memory_required(self, shape: tuple) -> int:
        """A bound for decoding one latent frame of `shape` [B, 16, T, h, w]: the widest decoder activations
        (a few layers of the largest width at the output size) plus the 2-frame cache of every slot."""
        b, _, _, h, w = shape
        cfg, size = self.vae.cfg, torch.empty((), dtype=self.vae.dtype).element_size()
        stride, frames = cfg.spatial_stride, cfg.temporal_stride
        return int(b * cfg.dim * max(cfg.dim_mult) * frames * (stride * h) * (stride * w) * size * 6)

    def frames(self, mu: Tensor) -> Tensor:
        """Raw mu [B, 16, f, h, w] -> frames [B, T, 3, H, W] in [0, 1] (as ComfyVAEStream.frames)."""
        return (self.decode_raw(mu.float()).float() * 0.5 + 0.5).transpose(1, 2)

    def __deepcopy__(self, memo: dict) -> "CoreVAEStream":
        new = copy.copy(self)                            # the VAE itself is shared, never copied
        new.cache = list(self.cache)                     # decoding replaces slots, never writes into them
        return new


_FAST = "_stream_r1_fast_vae"
"""Attribute of a stock VAE object holding its fast decoder (built once per loaded VAE, freed with it)."""


def fast_vae(vae: Any, device: torch.device) -> CoreVAE:
    """The core's decoder with the weights of the stock Wan 2.1 VAE `vae` (decoder only, in ComfyUI's VAE dtype,
    channels-last for cuDNN's NDHWC kernels on CUDA), under its own ModelPatcher; built on first use, then cached on
    `vae`. Costs a second copy of the decoder's weights in RAM (146 MB in bf16); on the GPU only this one is loaded."""
    fast = getattr(vae, _FAST, None)
    if fast is None:
        offload = getattr(getattr(vae, "patcher", None), "offload_device", None) or host.offload_device()
        core = load_vae(_stock_wan21(vae).state_dict(), device=offload, dtype=vae.vae_dtype, decoder_only=True)
        if channels_last_pays(device, core.dtype):
            core.to_channels_last()
        fast = CoreVAE(core, host.wrap_model(core, device, offload))
        setattr(vae, _FAST, fast)
    return fast


def _same_device(a: Any, b: Any) -> bool:
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index or 0) == (b.index or 0)       # "cuda" is "cuda:0"


def vae_stream(vae: Any, device: Optional[torch.device] = None, compile: bool = False,
               legacy: bool = False):
    """The streaming decode state for a VAE link value on a run on `device`: ours for a CoreVAE; for a stock Wan 2.1
    VAE on `device` the fast decoder (compiled when `compile`); else (the VAE on another device, a `legacy` state
    saved by ComfyVAEStream, no device given) ComfyUI's VAE driven directly, with a `note` saying so."""
    if isinstance(vae, CoreVAE):
        stream = CoreVAEStream(vae)
    elif device is None or legacy or not _same_device(getattr(vae, "device", device), device):
        stream = ComfyVAEStream(vae)
        if device is not None:
            stream.note = ("a stream state saved with ComfyUI's decoder: decoding it that way (eager)" if legacy else
                           f"the VAE runs on {vae.device}, the model on {device}: decoding with ComfyUI's VAE "
                           f"module (eager, slower)")
            log.warning("%s", stream.note)
        return stream
    else:
        stream = CoreVAEStream(fast_vae(vae, torch.device(device)))
    if compile and device is not None:
        stream.note = stream.wrapper.compile(torch.device(device))
    return stream


class StreamR1Decode:
    DESCRIPTION = ("Decode a Wan2.1 video LATENT with the stock VAE, one latent frame at a time with a persistent "
                   "causal cache: exact (equal to a full decode) with the memory of one frame, for latents of any "
                   "length. Works on any Wan2.1 LATENT, not only Stream-R1's.")
    CATEGORY = "Stream-R1/latent"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("Decoded frames: 1 + 4(T-1) images for T latent frames.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("VAE", {"tooltip": "The Wan 2.1 VAE (Load VAE: wan_2.1_vae.safetensors)."}),
            "samples": ("LATENT", {"tooltip": "A Wan 2.1 video latent [B, 16, T, H/8, W/8]."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def decode(self, vae: Any, samples: dict, unique_id: Optional[str] = None):
        mu = layout.raw_from_latent(samples)                               # [B, 16, T, h, w]
        stream, out = vae_stream(vae, host.torch_device()), host.intermediate_device()
        host.load_models([stream.patcher], stream.memory_required(tuple(mu.shape)))
        progress, pieces = host.Progress(mu.shape[2], unique_id, unit="latent frame"), []
        try:
            for i in range(mu.shape[2]):
                if host.interrupted():
                    break
                pieces.append(stream.frames(mu[:, :, i:i + 1]).to(out))   # [B, 1 or 4, 3, H, W]
                progress.update(i + 1, pieces[-1][0, -1].permute(1, 2, 0))
        finally:
            stream.release()
            progress.close()
        host.throw_if_interrupted()
        return (layout.image_from_frames(torch.cat(pieces, dim=1), out),)

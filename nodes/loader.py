"""StreamR1ModelLoader: a checkpoint file -> STREAM_R1_MODEL (the causal student, ModelPatcher-wrapped)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..stream_r1.checkpoint import FAMILY_KEY, load_dit_checkpoint, save_dit_export
from ..stream_r1.config import StreamConfig
from ..stream_r1.loaders import StudentInfo, load_student
from ..stream_r1.wan.attention import resolve_attention
from ..stream_r1.wan.model import WanModel
from . import host

log = logging.getLogger(__name__)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DOWNLOAD_HINT = ("the released Stream-R1 student: run `python -m stream_r1 download --comfyui <ComfyUI> --only "
                 "stream_r1` in the Stream-R1 pack folder (ComfyUI's Missing Models dialog downloads only "
                 ".safetensors files), then refresh")


@dataclass(eq=False)
class StreamR1Model:
    """STREAM_R1_MODEL: the student, what its file said, and (inside ComfyUI) its ModelPatcher."""

    module: WanModel
    info: StudentInfo
    patcher: Any
    """comfy.model_patcher.ModelPatcher around `module`, or None headless."""
    device: torch.device
    """Where it runs (ComfyUI moves it there for each run and back to the offload device after)."""
    dtype: torch.dtype
    compile: bool = False
    """Compiled DiT stages; the VAE decoder that streams with it is compiled too (nodes/decode.py)."""

    @property
    def stream_config(self) -> StreamConfig:
        """The checkpoint family's settings (cache policy, window, sink): what `cache_policy=auto` means."""
        return self.info.stream_config

    @property
    def text_dim(self) -> int:
        return self.module.cfg.text_dim

    def load(self, memory_required: int = 0, others: tuple = ()) -> None:
        """Bring the weights (and the `others` patchers, e.g. the VAE's) onto the GPU for a run."""
        host.load_models([self.patcher, *others], memory_required)

    def __deepcopy__(self, memo: dict) -> "StreamR1Model":
        return self                                  # a shared handle: forked streams share the weights


def compile_unavailable(device: torch.device) -> Optional[str]:
    """Why torch.compile cannot run here (None: it can): it needs a CUDA device and Triton."""
    from torch.utils._triton import has_triton
    if device.type != "cuda" or not has_triton():
        return (f"compile needs a CUDA GPU with Triton (device {device.type}, Triton "
                f"{'found' if has_triton() else 'missing'}): running eager")
    return None


def compile_student(module: WanModel, device: torch.device) -> bool:
    """`WanModel.compile_blocks()` where it pays (a CUDA device with Triton), with PyTorch's compile caches in a
    folder that outlives the process (`stream_r1.compile_cache`); elsewhere log why not and stay eager."""
    why_not = compile_unavailable(device)
    if why_not is not None:
        log.warning("%s", why_not)
        return False
    from ..stream_r1.compile_cache import use_compile_cache
    use_compile_cache(host.compile_cache_folder())
    module.compile_blocks()
    return True


def write_safetensors_once(path: str | os.PathLike, entry: Optional[str] = None) -> Optional[Path]:
    """A `.pt` checkpoint's weights as our safetensors export beside it (`<stem>.safetensors`): written once, the
    first time the `.pt` loads, so the next load can pick a file that needs no unpickling and loads lazily.

    Only for the file's default entry (`entry` None: generator_ema, else generator), only where that file does
    not exist yet and the folder is writable; atomic (temp + rename, `save_dit_export`). The metadata keeps the
    family (`stream_r1.family`) and the family's stream config, so the copy streams exactly as the `.pt` does.
    Returns the written path, or None when nothing was written (a failure is logged, never raised)."""
    src = Path(path)
    target = src.with_suffix(".safetensors")
    if src.suffix.lower() != ".pt" or entry is not None or target.exists() or not os.access(src.parent, os.W_OK):
        return None
    try:
        ck = load_dit_checkpoint(src)                 # the .pt again (mmap): its own dtype, not the compute one
        save_dit_export(target, ck.state_dict, ck.config, ck.stream_config,
                        extra={FAMILY_KEY: ck.family, "family": ck.family, "converted_from": src.name})
    except (OSError, RuntimeError) as e:
        log.warning("could not write %s beside %s: %s", target.name, src.name, e)
        return None
    log.info("wrote %s (the weights of %s, family %s): pick it next time", target, src.name, ck.family)
    return target


class StreamR1ModelLoader:
    DESCRIPTION = ("Load a causal Wan2.1 student (Stream-R1, Reward Forcing, Self-Forcing, LongLive, or our own "
                   "exports; Wan-AI, Comfy-Org repackaged incl. fp8, and .pt training checkpoints) from "
                   "models/stream_r1 or models/diffusion_models. Text and VAE come from the stock CLIPLoader "
                   "(type wan) and Load VAE nodes.")
    CATEGORY = "Stream-R1/loaders"
    RETURN_TYPES = ("STREAM_R1_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The causal student with its family's default stream settings (a file whose family is not "
                       "recognised streams with Stream-R1's: cache policy window_sink; the node says so).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (host.model_files(), {"tooltip": "Checkpoint file from models/stream_r1 (listed first) "
                                                           "or models/diffusion_models."}),
            "dtype": (["auto", *DTYPES], {"default": "auto", "tooltip": "Compute dtype; auto = ComfyUI's "
                                          "choice for the device (bf16 on recent GPUs, fp32 on CPU). fp8 files "
                                          "are de-quantised to it."}),
            "attention": (["auto", "sdpa", "flash", "comfy"], {"default": "auto", "tooltip": "auto = cuDNN's fused "
                          "attention on Hopper and newer GPUs, elsewhere flash-attn when installed, else PyTorch "
                          "SDPA; comfy = ComfyUI's attention (follows --use-sage-attention etc.)."}),
            "entry": (["auto", "generator_ema", "generator"], {"default": "auto", "tooltip": "Which weights of "
                      "a .pt training checkpoint to load; auto = generator_ema, else generator. Ignored for "
                      "other files."}),
        }, "optional": {
            "compile": ("BOOLEAN", {"default": False, "tooltip": "torch.compile the DiT's block stages and the VAE "
                        "decoder that streams with it (CUDA GPUs with Triton; elsewhere eager, with a note). The "
                        "first run after a server start compiles (about a minute the very first time, seconds once "
                        "the compile cache in user/stream_r1/compile_cache holds it); later runs stream about 2x "
                        "faster."}),
        }}

    def load(self, model_name: str, dtype: str, attention: str, entry: str, compile: bool = False):
        try:
            path = host.resolve_model(model_name)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}. For {DOWNLOAD_HINT}.") from None
        device, offload = host.torch_device(), host.offload_device()
        compute = host.default_dtype(device) if dtype == "auto" else DTYPES[dtype]
        comfy_attn = host.comfy_attention() if attention == "comfy" else None
        if attention == "comfy" and comfy_attn is None:
            log.warning("attention 'comfy' needs ComfyUI; using 'auto'")
        backend = comfy_attn or ("auto" if attention == "comfy" else resolve_attention(attention))
        module, info = load_student(path, device=offload, dtype=compute, attention=backend,
                                    entry=None if entry == "auto" or path.endswith((".safetensors", ".sft"))
                                    else entry)
        if info.family == "wan-base":
            log.warning("%s holds bidirectional Wan2.1 base weights, not a distilled causal student: "
                        "streamed output will not be good", model_name)
        notes = list(info.notes)
        picked = None if entry == "auto" else entry
        converted = write_safetensors_once(path, picked)          # None unless a .pt was converted now
        if converted is not None:
            notes.append(f"wrote {converted.name} beside it (same weights, family and stream settings, no pickle): "
                         f"pick it next time")
        compiled = compile_student(module, device) if compile else False
        patcher = host.wrap_model(module, device, offload)
        model = StreamR1Model(module, info, patcher, device if patcher is not None else offload, compute, compiled)
        if notes:                                    # what the loader assumed or did (family default, conversion)
            return {"ui": {"text": [f"{model_name}: {n}" for n in notes]}, "result": (model,)}
        return (model,)

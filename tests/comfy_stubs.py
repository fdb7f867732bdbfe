"""Minimal stand-ins for the ComfyUI modules the node pack uses (ComfyUI cannot be installed here).

`build(...)` returns modules for `sys.modules` (ComfyUI's own tests-unit pattern); each fake records what the
nodes did on a `Recorder`, so tests can assert on progress updates, previews, events, model loads and
interrupts. Behaviour follows ComfyUI 0.8.0 where it matters: folder_paths resolves names without leaving
the folder, the progress hook raises once Cancel was pressed, throwing clears the interrupt flag.
`FakeWanVAE` mimics `comfy.sd.VAE` around a Wan2.1 VAE, built on the core's tiny `WanVAE`.
"""
from __future__ import annotations

import importlib.util
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from stream_r1.vae import VAEConfig, WanVAE

PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


@dataclass
class Recorder:
    progress: list = field(default_factory=list)
    """(value, total, preview) per ProgressBar.update_absolute."""
    bars: list = field(default_factory=list)
    """(total, node_id) per ProgressBar created."""
    events: list = field(default_factory=list)
    """(event, data) per PromptServer.send_sync."""
    texts: list = field(default_factory=list)
    loads: list = field(default_factory=list)
    """(patchers, kwargs) per load_models_gpu."""
    patchers: list = field(default_factory=list)
    empty_cache: int = 0
    attention_calls: int = 0
    interrupted: bool = False
    interrupt_after_events: Optional[int] = None
    """Press Cancel when this many chunk events were sent."""

    def clear(self) -> None:
        for name in ("progress", "bars", "events", "texts", "loads", "patchers"):
            getattr(self, name).clear()


class InterruptProcessingException(Exception):
    pass


def _module(name: str, package: bool = False, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    if package:
        mod.__path__ = []  # a package whose other submodules do not exist (ImportError, like a missing feature)
    mod.__dict__.update(attrs)
    return mod


def build(models_dir: Path, output_dir: Path, rec: Recorder) -> dict[str, types.ModuleType]:
    mods = {name: _module(name, package=True) for name in ("comfy", "comfy.ldm", "comfy.ldm.modules", "comfy_api")}

    # ---- comfy.model_management --------------------------------------------------------------------------
    def throw_exception_if_processing_interrupted():
        if rec.interrupted:
            rec.interrupted = False
            raise InterruptProcessingException()

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        rec.loads.append((list(models), dict(memory_required=memory_required, force_full_load=force_full_load)))
        for m in models:                   # as ComfyUI's ModelPatcher.patch_model / unpatch_model: plain bookkeeping
            if hasattr(m, "model") and hasattr(m, "load_device"):
                m.model.device = m.load_device

    def soft_empty_cache(force=False):
        rec.empty_cache += 1

    mods["comfy.model_management"] = _module(
        "comfy.model_management", InterruptProcessingException=InterruptProcessingException,
        get_torch_device=lambda: torch.device("cpu"), unet_offload_device=lambda: torch.device("cpu"),
        intermediate_device=lambda: torch.device("cpu"),
        unet_dtype=lambda device=None, model_params=0, supported_dtypes=(), weight_dtype=None: torch.float32,
        load_models_gpu=load_models_gpu, soft_empty_cache=soft_empty_cache,
        processing_interrupted=lambda: rec.interrupted,
        throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted)

    # ---- comfy.utils / comfy.model_patcher / comfy.cli_args / comfy.latent_formats -------------------------
    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.current = total, 0
            rec.bars.append((total, node_id))

        def update_absolute(self, value, total=None, preview=None):
            self.total = total if total is not None else self.total
            self.current = value
            rec.progress.append((value, self.total, preview))
            throw_exception_if_processing_interrupted()  # what main.py's global progress hook does

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device
            rec.patchers.append(self)

    mods["comfy.utils"] = _module("comfy.utils", ProgressBar=ProgressBar)
    mods["comfy.model_patcher"] = _module("comfy.model_patcher", ModelPatcher=ModelPatcher)
    mods["comfy.cli_args"] = _module("comfy.cli_args", args=types.SimpleNamespace(preview_size=512))
    g = torch.Generator().manual_seed(7)
    wan21 = type("Wan21", (), {"latent_rgb_factors": (torch.randn(16, 3, generator=g) * 0.1).tolist(),
                               "latent_rgb_factors_bias": [0.0, 0.1, 0.2]})
    mods["comfy.latent_formats"] = _module("comfy.latent_formats", Wan21=wan21)

    # ---- comfy.ldm.modules.attention: optimized_attention with ComfyUI's calling convention ----------------
    def optimized_attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                            skip_output_reshape=False, **kwargs):
        rec.attention_calls += 1
        assert skip_reshape and q.shape[1] == heads                       # [B, heads, L, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)     # [B, heads, L, d]
        return out.transpose(1, 2).reshape(q.shape[0], -1, heads * q.shape[-1])   # [B, L, heads*d]

    mods["comfy.ldm.modules.attention"] = _module("comfy.ldm.modules.attention",
                                                  optimized_attention=optimized_attention)

    # ---- folder_paths ----------------------------------------------------------------------------------
    fnp = {"diffusion_models": ([str(models_dir / "unet"), str(models_dir / "diffusion_models")], PT_EXTENSIONS)}

    def get_filename_list(folder_name):
        paths, exts = fnp[folder_name]
        out = set()
        for base in paths:
            for dirpath, _, files in os.walk(base):
                for f in files:
                    if not exts or os.path.splitext(f)[1].lower() in exts:
                        out.add(os.path.relpath(os.path.join(dirpath, f), base).replace(os.sep, "/"))
        return sorted(out)

    def get_full_path(folder_name, filename):
        filename = os.path.relpath(os.path.join("/", filename), "/")      # ComfyUI's guard against "../"
        for base in fnp[folder_name][0]:
            path = os.path.join(base, filename)
            if os.path.isfile(path):
                return path
        return None

    def get_save_image_path(filename_prefix, output_dir, image_width=0, image_height=0):
        subfolder = os.path.dirname(os.path.normpath(filename_prefix))
        filename = os.path.basename(os.path.normpath(filename_prefix))
        folder = os.path.join(output_dir, subfolder)
        if os.path.commonpath((output_dir, os.path.abspath(folder))) != output_dir:
            raise Exception("Saving image outside the output folder is not allowed.")
        os.makedirs(folder, exist_ok=True)
        taken = [int(m.group(1)) for f in os.listdir(folder) if (m := re.match(re.escape(filename) + r"_(\d+)_", f))]
        return folder, filename, max(taken, default=0) + 1, subfolder, filename_prefix

    out = str(output_dir.resolve())
    os.makedirs(out, exist_ok=True)
    mods["folder_paths"] = _module(
        "folder_paths", models_dir=str(models_dir), folder_names_and_paths=fnp, supported_pt_extensions=PT_EXTENSIONS,
        get_filename_list=get_filename_list, get_full_path=get_full_path, get_output_directory=lambda: out,
        get_save_image_path=get_save_image_path)

    # ---- server / comfy_api ----------------------------------------------------------------------------
    class PromptServer:
        instance = None

        def send_sync(self, event, data, sid=None):
            rec.events.append((event, data))
            if rec.interrupt_after_events is not None and len(rec.events) >= rec.interrupt_after_events:
                rec.interrupted = True

        def send_progress_text(self, text, node_id, sid=None):
            rec.texts.append((text, node_id))

    PromptServer.instance = PromptServer()
    mods["server"] = _module("server", PromptServer=PromptServer)

    class VideoFromFile:
        def __init__(self, file):
            self.file = file

    mods["comfy_api.latest"] = _module("comfy_api.latest", package=True,
                                       InputImpl=types.SimpleNamespace(VideoFromFile=VideoFromFile))

    if importlib.util.find_spec("PIL") is None:  # ComfyUI always has Pillow; this machine may not
        class FakePILImage:
            def __init__(self, arr):
                self.array, self.size, self.mode = arr, (arr.shape[1], arr.shape[0]), "RGB"

        image = _module("PIL.Image", fromarray=FakePILImage, Image=FakePILImage)
        mods["PIL"] = _module("PIL", package=True, Image=image)
        mods["PIL.Image"] = image
    return mods


def add_input_directory(mods: dict[str, types.ModuleType], input_dir: Path) -> str:
    """Give the fake folder_paths of `build(...)` ComfyUI's input folder (`get_input_directory`), as ComfyUI 0.8.0
    has it; returns the folder (absolute, created)."""
    inp = str(input_dir.resolve())
    os.makedirs(inp, exist_ok=True)
    mods["folder_paths"].get_input_directory = lambda: inp
    return inp


# ---- a comfy.sd.VAE look-alike ------------------------------------------------------------------------------
class _ComfyStyleDecoder(nn.Module):
    """The core's Decoder3d behind ComfyUI's signature `decoder(x, feat_cache=, feat_idx=)`."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, feat_cache=None, feat_idx=[0]):  # noqa: B006 (ComfyUI's signature)
        first = feat_cache[self.inner.conv1.slot] is None        # nothing cached yet: the video's first frame
        return self.inner(x, feat_cache, first)


class _ComfyStyleWanVAE(nn.Module):
    def __init__(self, core: WanVAE):
        super().__init__()
        self.conv2 = core.conv2
        self.decoder = _ComfyStyleDecoder(core.decoder)
        self._core = [core]                              # a list: not registered as a submodule

    def state_dict(self, *args, **kwargs):
        """ComfyUI's WanVAE has the Wan file's own key names (decoder.middle.0.residual.0.gamma, ...)."""
        return self._core[0].state_dict(*args, **kwargs)


class FakeWanVAE:
    """Mimics `comfy.sd.VAE` for a Wan VAE: first_stage_model with conv2 / decoder, device, vae_dtype, patcher."""

    def __init__(self, latent_channels: int = 16, seed: int = 0):
        torch.manual_seed(seed)
        self.core = WanVAE(VAEConfig.tiny()).eval().requires_grad_(False)
        self.first_stage_model = _ComfyStyleWanVAE(self.core)
        self.latent_channels = latent_channels
        self.device, self.vae_dtype, self.output_device = torch.device("cpu"), torch.float32, torch.device("cpu")
        self.patcher = types.SimpleNamespace(name="vae patcher")

    def memory_used_decode(self, shape, dtype):
        return 1000 * shape[2]

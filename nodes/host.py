"""The one module that touches ComfyUI's services. Each is imported on first use, never at import time, and
each has a headless fallback, so the nodes run (and are tested) without ComfyUI:

- model files: folder_paths `stream_r1` (registered here) + `diffusion_models`;
  headless: $STREAM_R1_MODELS or ./models with the same subfolders.
- devices, dtype, loading: comfy.model_management, comfy.model_patcher.ModelPatcher + load_models_gpu;
  headless: cuda if available, else cpu, and the model stays where it was loaded.
- interruption: processing_interrupted / throw_exception_if_processing_interrupted; headless: never.
- progress: comfy.utils.ProgressBar with a JPEG preview per update; headless: tqdm on stderr.
- events: server.PromptServer.instance.send_sync; headless: none. (Routes: nodes/live.py adds its own.)
- attention: comfy.ldm.modules.attention.optimized_attention; headless: none ('auto' is used).
- output files: folder_paths.get_save_image_path; headless: $STREAM_R1_OUTPUT or ./output.
- VIDEO values: comfy_api.latest.InputImpl.VideoFromFile; headless: none.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

log = logging.getLogger(__name__)

MODEL_FOLDER = "stream_r1"
"""Our folder under ComfyUI's models directory (extendable from extra_model_paths.yaml: `stream_r1: <dir>`)."""
SEARCH_FOLDERS = (MODEL_FOLDER, "diffusion_models")
REWARD_FOLDER = "VideoReward"
HPSV3_FOLDER = "HPSv3"
"""models/stream_r1/HPSv3: HPSv3.safetensors + tokenizer/ (Qwen2-VL-7B-Instruct's), for test-time scaling."""
"""models/stream_r1/VideoReward holds the reward model (`python -m stream_r1 download`): never offered as a student."""
MODEL_EXTENSIONS = (".safetensors", ".sft", ".pt", ".pth", ".ckpt", ".bin")
CHUNK_EVENT = "stream_r1.chunk"
"""Websocket event sent once per generated chunk (the web extension listens for it). Data: node (id), chunk
(index in the stream), chunks_done / chunks (this run), frames (video frames this run), latent_frames (in the
stream), fps (video frames per second this run, end to end), seconds (elapsed this run)."""
PREVIEW_SIZE = 512
"""Longest preview side when ComfyUI's --preview-size cannot be read."""


def _service(module: str, attr: str) -> Any:
    """`module` when ComfyUI provides it (and it has `attr`), else None. Never raises for a missing host."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return mod if hasattr(mod, attr) else None


def _mm() -> Any:
    return _service("comfy.model_management", "get_torch_device")


# ---- model files ---------------------------------------------------------------------------------------
def _folder_paths() -> Any:
    """folder_paths with our `stream_r1` folder registered (a dict update; idempotent)."""
    fp = _service("folder_paths", "get_filename_list")
    if fp is not None:
        default = os.path.join(fp.models_dir, MODEL_FOLDER)
        paths, exts = fp.folder_names_and_paths.setdefault(
            MODEL_FOLDER, ([default], set(fp.supported_pt_extensions)))
        if default not in paths:          # registered first by extra_model_paths.yaml: keep ours too
            paths.append(default)
        if not exts:                      # a yaml-registered folder accepts every file; list weights only
            exts.update(fp.supported_pt_extensions)
    return fp


def models_dir() -> Path:
    """Headless models directory: $STREAM_R1_MODELS, else ./models (with stream_r1/ and diffusion_models/)."""
    return Path(os.environ.get("STREAM_R1_MODELS", "models")).expanduser()


def _headless_files(folder: str) -> list[str]:
    base = models_dir() / folder
    if not base.is_dir():
        return []
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*")
                  if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS)


def model_files() -> list[str]:
    """Names offered by the loader: files of `stream_r1` (except the reward model's folder), then of
    `diffusion_models` (no duplicates)."""
    fp = _folder_paths()
    names: list[str] = []
    for folder in SEARCH_FOLDERS:
        found = fp.get_filename_list(folder) if fp is not None else _headless_files(folder)
        names += [n for n in found if n not in names and not (folder == MODEL_FOLDER and
                                                              n.split("/", 1)[0] in (REWARD_FOLDER, HPSV3_FOLDER))]
    return names


def resolve_model(name: str) -> str:
    """Full path of a listed model name; names are resolved only through the listing (no path traversal)."""
    fp = _folder_paths()
    for folder in SEARCH_FOLDERS:
        if fp is not None:
            path = fp.get_full_path(folder, name)
            if path is not None:
                return path
        elif name in _headless_files(folder):
            return str(models_dir() / folder / name)
    where = "models/stream_r1 or models/diffusion_models" if fp is not None else \
        f"{models_dir() / MODEL_FOLDER} or {models_dir() / 'diffusion_models'} (set STREAM_R1_MODELS)"
    raise FileNotFoundError(f"model file {name!r} not found; put the checkpoint in {where} and refresh")


def reward_files() -> list[str]:
    """Reward-model weight files under models/stream_r1/VideoReward (e.g. VideoReward/checkpoint-11352/model.pth)."""
    fp = _folder_paths()
    found = fp.get_filename_list(MODEL_FOLDER) if fp is not None else _headless_files(MODEL_FOLDER)
    return [n for n in found if n.split("/", 1)[0] == REWARD_FOLDER and n.endswith((".pth", ".pt", ".safetensors"))]


def resolve_reward(name: str) -> str:
    """Full path of a listed reward file; resolved only through the listing (no path traversal)."""
    if name not in reward_files():
        where = f"models/{MODEL_FOLDER}/{REWARD_FOLDER}" if _folder_paths() is not None else \
            f"{models_dir() / MODEL_FOLDER / REWARD_FOLDER} (set STREAM_R1_MODELS)"
        raise FileNotFoundError(f"reward model {name!r} not found; put VideoReward (model_config.json, "
                                f"checkpoint-*/model.pth, tokenizer) in {where}: run `python -m stream_r1 download "
                                f"--comfyui <ComfyUI> --only videoreward` in the Stream-R1 pack folder (ComfyUI's "
                                f"Missing Models dialog cannot fetch a folder)")
    fp = _folder_paths()
    return fp.get_full_path(MODEL_FOLDER, name) if fp is not None else str(models_dir() / MODEL_FOLDER / name)


def hpsv3_files() -> list[str]:
    """HPSv3 weight files under models/stream_r1/HPSv3 (e.g. HPSv3/HPSv3.safetensors)."""
    fp = _folder_paths()
    found = fp.get_filename_list(MODEL_FOLDER) if fp is not None else _headless_files(MODEL_FOLDER)
    return [n for n in found if n.split("/", 1)[0] == HPSV3_FOLDER and n.endswith(".safetensors")]


def resolve_hpsv3(name: str) -> str:
    """Full path of a listed HPSv3 file; resolved only through the listing (no path traversal)."""
    if name not in hpsv3_files():
        where = f"models/{MODEL_FOLDER}/{HPSV3_FOLDER}" if _folder_paths() is not None else \
            f"{models_dir() / MODEL_FOLDER / HPSV3_FOLDER} (set STREAM_R1_MODELS)"
        raise FileNotFoundError(f"HPSv3 file {name!r} not found; put HPSv3.safetensors (huggingface.co/MizzenAI/"
                                f"HPSv3) and Qwen2-VL-7B-Instruct's tokenizer files (in tokenizer/) in {where}")
    fp = _folder_paths()
    return fp.get_full_path(MODEL_FOLDER, name) if fp is not None else str(models_dir() / MODEL_FOLDER / name)


# ---- devices and model management ------------------------------------------------------------------------
def torch_device() -> torch.device:
    mm = _mm()
    if mm is not None:
        return torch.device(mm.get_torch_device())
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    """Where weights rest between runs (ComfyUI moves them to `torch_device()` for each run)."""
    mm = _mm()
    return torch.device(mm.unet_offload_device()) if mm is not None else torch_device()


def intermediate_device() -> torch.device:
    """Where IMAGE / LATENT outputs live, so downstream nodes and ComfyUI's cache hold no VRAM."""
    mm = _mm()
    return torch.device(mm.intermediate_device()) if mm is not None else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """ComfyUI's choice for diffusion models on `device` (bf16 > fp16 > fp32); headless: bf16 on CUDA, else fp32."""
    mm = _mm()
    if mm is not None and hasattr(mm, "unet_dtype"):
        dt = mm.unet_dtype(device, supported_dtypes=[torch.bfloat16, torch.float16, torch.float32])
        if dt in (torch.bfloat16, torch.float16, torch.float32):      # never an fp8 storage dtype
            return dt
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class Held(torch.nn.Module):
    """What the ModelPatcher holds for a module with a read-only `device` property (the core's WanVAE): ComfyUI
    writes `model.device` after moving the weights, which such a module refuses. `held` moves with it."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.held = module
        self.device = next(module.parameters()).device


def wrap_model(module: torch.nn.Module, load_device: torch.device, offload: torch.device) -> Any:
    """A ComfyUI ModelPatcher around `module` (so ComfyUI's offloading sees it), or None headless."""
    mp = _service("comfy.model_patcher", "ModelPatcher")
    if mp is None:
        return None
    prop = getattr(type(module), "device", None)
    if isinstance(prop, property) and prop.fset is None:
        module = Held(module)
    return mp.ModelPatcher(module, load_device=load_device, offload_device=offload)


def load_models(patchers: Sequence[Any], memory_required: int = 0) -> None:
    """Load the patchers fully onto the GPU, keeping `memory_required` bytes free (evicts other models)."""
    mm, patchers = _mm(), [p for p in patchers if p is not None]
    if mm is None or not patchers:
        return
    kw: dict[str, Any] = {"memory_required": memory_required}
    if "force_full_load" in inspect.signature(mm.load_models_gpu).parameters:
        kw["force_full_load"] = True     # our modules are plain torch: no per-layer weight casting
    mm.load_models_gpu(patchers, **kw)


def compile_cache_folder() -> Optional[Path]:
    """Where torch.compile's caches go inside ComfyUI: <user folder>/stream_r1/compile_cache (None headless: the
    core's default, ~/.cache/stream_r1/compile)."""
    fp = _service("folder_paths", "get_user_directory")
    return Path(fp.get_user_directory()) / "stream_r1" / "compile_cache" if fp is not None else None


def soft_empty_cache() -> None:
    mm = _mm()
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def interrupted() -> bool:
    """True once the user pressed Cancel (checked between chunks); headless: never."""
    mm = _mm()
    return bool(mm.processing_interrupted()) if mm is not None else False


def throw_if_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException when the user cancelled; headless: no-op."""
    mm = _mm()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def comfy_attention() -> Optional[Callable[..., torch.Tensor]]:
    """ComfyUI's optimized_attention (the user's --use-*-attention flag) as a [B, L, n, d] backend, or None."""
    mod = _service("comfy.ldm.modules.attention", "optimized_attention")
    if mod is None:
        return None

    def comfy_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None):
        b, lq, n, d = q.shape
        out = mod.optimized_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), n, mask=mask,
                                      skip_reshape=True)                       # [B, Lq, n*d]
        return out.reshape(b, lq, n, d)

    return comfy_attn


def vae_cache_slots(decoder: torch.nn.Module) -> int:
    """Length of the causal feature-cache list of a Wan VAE decoder (ComfyUI's own count when available)."""
    wan = _service("comfy.ldm.wan.vae", "CausalConv3d")
    for name in ("count_cache_layers", "count_conv3d"):       # newer ComfyUI / 0.8.0
        if wan is not None and hasattr(wan, name):
            return getattr(wan, name)(decoder)
    return sum(1 for m in decoder.modules() if type(m).__name__ == "CausalConv3d"
               or getattr(m, "mode", None) == "downsample3d")


# ---- progress, previews, events ----------------------------------------------------------------------------
class Progress:
    """Per-chunk progress: ComfyUI's ProgressBar (with a preview image) or, headless, a tqdm bar."""

    def __init__(self, total: int, node_id: Optional[str] = None, unit: str = "chunk"):
        self.total, self.node_id = total, node_id
        utils = _service("comfy.utils", "ProgressBar")
        self._bar, self._tqdm = None, None
        if utils is not None:
            accepts_id = "node_id" in inspect.signature(utils.ProgressBar).parameters
            self._bar = utils.ProgressBar(total, node_id=node_id) if accepts_id else utils.ProgressBar(total)
        else:
            from tqdm import tqdm
            self._tqdm = tqdm(total=total, unit=unit, desc="Stream-R1", leave=False)

    def update(self, value: int, image: Optional[torch.Tensor] = None, text: str = "") -> None:
        """value: chunks done; image: newest frame [H, W, 3] in [0, 1] (shown as the node's preview)."""
        if self._bar is not None:
            self._bar.update_absolute(value, self.total, _preview(image) if image is not None else None)
            if text:
                _send_progress_text(text, self.node_id)
        else:
            self._tqdm.update(value - self._tqdm.n)
            if text:
                self._tqdm.set_postfix_str(text)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


def _preview(image: torch.Tensor) -> Optional[tuple]:
    """("JPEG", PIL image, max size): the preview tuple ComfyUI's ProgressBar accepts."""
    try:
        from PIL import Image
    except ImportError:
        return None
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()   # [H, W, 3]
    cli = _service("comfy.cli_args", "args")
    return "JPEG", Image.fromarray(arr), getattr(cli.args, "preview_size", PREVIEW_SIZE) if cli else PREVIEW_SIZE


def latent_preview(z: torch.Tensor) -> Optional[torch.Tensor]:
    """Coarse RGB [h, w, 3] of one normalised latent frame [16, h, w] with ComfyUI's Wan2.1 latent-to-RGB
    factors (used when no VAE is connected); None headless."""
    fmt = _service("comfy.latent_formats", "Wan21")
    factors = getattr(fmt.Wan21, "latent_rgb_factors", None) if fmt is not None else None
    if factors is None:
        return None
    w = torch.tensor(factors, dtype=torch.float32).T                              # [3, 16]
    bias = getattr(fmt.Wan21, "latent_rgb_factors_bias", None)
    b = torch.tensor(bias, dtype=torch.float32) if bias is not None else None
    rgb = torch.nn.functional.linear(z.detach().float().cpu().movedim(0, -1), w, b)  # [h, w, 3]
    return ((rgb + 1) / 2).clamp(0, 1)


def prompt_server() -> Any:
    """ComfyUI's PromptServer instance; None headless."""
    srv = _service("server", "PromptServer")
    return getattr(srv.PromptServer, "instance", None) if srv is not None else None



def prompt_id() -> Optional[str]:
    """Id of the prompt ComfyUI is executing (the server's `last_prompt_id`); None headless or unknown."""
    server = prompt_server()
    pid = getattr(server, "last_prompt_id", None) if server is not None else None
    return pid if isinstance(pid, str) else None


def send_event(event: str, data: dict) -> None:
    """A custom websocket message to every client (`api.addEventListener(event, ...)` in the web UI)."""
    server = prompt_server()
    if server is not None:
        server.send_sync(event, data)


def _send_progress_text(text: str, node_id: Optional[str]) -> None:
    server = prompt_server()
    if server is not None and node_id is not None and hasattr(server, "send_progress_text"):
        server.send_progress_text(text, node_id)


# ---- output files --------------------------------------------------------------------------------------------
def save_path(prefix: str, ext: str, width: int, height: int, default: str = "stream_r1/video") -> tuple[str, dict]:
    """A new numbered file in the output directory for `prefix` (e.g. "stream_r1/video" -> stream_r1/video_00001_.mp4).

    Returns (full path, UI entry {"filename", "subfolder", "type": "output"}). The prefix names a file inside the
    output folder (`filename_prefix`): empty, "." or a folder alone ("shots/") take `default`'s name; absolute
    paths, ".." that leaves the folder, control characters (NUL, newlines) and names longer than the file system
    allows are refused with a ValueError saying what to write. Every path is checked to stay inside the output
    folder: ComfyUI's own rule in get_save_image_path, applied again to the result, and headless the same rule
    against $STREAM_R1_OUTPUT (or ./output).
    """
    prefix = clean_filename_prefix(prefix, default)
    fp = _service("folder_paths", "get_save_image_path")
    root = output_folder()
    if fp is not None:
        folder, name, counter, subfolder, _ = fp.get_save_image_path(prefix, root, width, height)
    else:
        folder = os.path.join(root, os.path.dirname(prefix))
        name, subfolder = os.path.basename(prefix), os.path.dirname(prefix)
        taken = [int(m.group(1)) for f in (os.listdir(folder) if os.path.isdir(folder) else [])
                 if (m := re.fullmatch(re.escape(name) + r"_(\d+)_?\..*", f))]
        counter = max(taken, default=0) + 1
    filename = f"{name}_{counter:05}_.{ext}"
    path = os.path.join(folder, filename)
    _check_inside_output(root, path, prefix)
    os.makedirs(folder, exist_ok=True)
    return path, {"filename": filename, "subfolder": subfolder, "type": "output"}


def video_output(path: str) -> Any:
    """A VIDEO value for stock nodes (SaveVideo, GetVideoComponents) that reads the file lazily; None headless."""
    api = _service("comfy_api.latest", "InputImpl")
    return api.InputImpl.VideoFromFile(path) if api is not None else None


# ---- output folder rules and stream state files -----------------------------------------------------------------
NAME_MAX_BYTES = 255
"""Longest file or folder name (bytes) on ext4, XFS, APFS and NTFS (255 UTF-16 units there)."""
PATH_MAX_BYTES = 4095
"""Longest path Linux opens (PATH_MAX 4096 with the terminating NUL)."""
STATE_EXTENSIONS = (".safetensors",)
"""Files Stream-R1 Load State lists (state files are safetensors; Save State and the CLI write .safetensors)."""
INPUT_MARK = " [input]"
"""Suffix of names from the input folder in Load State's list (ComfyUI's annotated-name convention)."""


def output_folder() -> str:
    """ComfyUI's output directory; headless: $STREAM_R1_OUTPUT, else ./output (absolute, normalised)."""
    fp = _service("folder_paths", "get_output_directory")
    root = fp.get_output_directory() if fp is not None else os.environ.get("STREAM_R1_OUTPUT", "output")
    return os.path.abspath(os.path.expanduser(root))


def input_folder() -> Optional[str]:
    """ComfyUI's input directory; headless: $STREAM_R1_INPUT, else ./input (None when ComfyUI has no input folder)."""
    fp = _service("folder_paths", "get_output_directory")
    if fp is not None:
        return os.path.abspath(fp.get_input_directory()) if hasattr(fp, "get_input_directory") else None
    return os.path.abspath(os.path.expanduser(os.environ.get("STREAM_R1_INPUT", "input")))


def clean_filename_prefix(prefix: str, default: str) -> str:
    """`prefix` as a normalised name relative to the output folder ("a/./b" -> "a/b"), or `default` for an empty one,
    "." and the like, or `default`'s name in a given folder ("shots/" -> "shots/video"). ValueError (one line, what to
    write instead) for anything that is not a plain relative name inside the output folder."""
    example = f"write a name inside the output directory, e.g. {default!r} (subfolders with '/')"
    if not isinstance(prefix, str):
        raise ValueError(f"filename_prefix must be text, got {type(prefix).__name__}: {example}")
    shown = repr(prefix if len(prefix) <= 80 else prefix[:77] + "...")
    if any(ord(c) < 32 or ord(c) == 127 for c in prefix):
        raise ValueError(f"filename_prefix {shown} contains a control character (NUL, newline, tab, ...): {example}")
    try:
        os.fsencode(prefix)
    except UnicodeError:
        raise ValueError(f"filename_prefix {shown} is not valid text for a file name: {example}") from None
    text = prefix.strip()
    if os.path.isabs(text) or os.path.splitdrive(text)[0] or text.startswith(("/", "\\")):
        raise ValueError(f"filename_prefix {shown} is an absolute path, which leaves the output directory: "
                         f"{example}")
    folder_only = text.endswith(("/", os.sep))
    norm = os.path.normpath(text) if text else "."
    parts = norm.split(os.sep)
    if os.pardir in parts:
        raise ValueError(f"filename_prefix {shown} leaves the output directory ('..'): {example}")
    if norm == ".":
        norm, folder_only = os.path.normpath(default), False
    elif folder_only:
        norm = os.path.join(norm, os.path.basename(default))
    *folders, name = norm.split(os.sep)
    for part, room in [(f, NAME_MAX_BYTES) for f in folders] + [(name, NAME_MAX_BYTES - len("_00001_.safetensors"))]:
        if len(os.fsencode(part)) > room:
            raise ValueError(f"filename_prefix {shown} has a name of {len(os.fsencode(part))} bytes; the file system "
                             f"allows {room} there (with the counter and extension): use a shorter name")
    return norm.replace(os.sep, "/")


def _check_inside_output(root: str, path: str, prefix: str) -> None:
    """ComfyUI's rule (folder_paths.get_save_image_path): a written file lies inside the output directory."""
    full = os.path.abspath(path)
    if os.path.commonpath((root, full)) != root or full == root:
        raise ValueError(f"filename_prefix {prefix!r} leaves the output directory {root}: write a name inside it, "
                         "e.g. 'stream_r1/video'")
    if len(os.fsencode(full)) > PATH_MAX_BYTES:
        raise ValueError(f"filename_prefix {prefix!r} makes a path of {len(os.fsencode(full))} bytes (the limit is "
                         f"{PATH_MAX_BYTES}): use shorter folder names")


def _state_roots() -> list[tuple[str, str]]:
    """(name suffix, folder) where state files are listed: the output folder (plain names), then the input folder."""
    roots = [("", output_folder())]
    inp = input_folder()
    if inp is not None and inp != roots[0][1]:
        roots.append((INPUT_MARK, inp))
    return roots


def _state_index() -> dict[str, str]:
    """{listed name: full path} of every state file (*.safetensors) under the output and input folders."""
    index: dict[str, str] = {}
    for mark, root in _state_roots():
        found = []
        for dirpath, dirnames, files in os.walk(root):            # symlinked folders are not followed
            dirnames.sort()
            found += [os.path.join(dirpath, f) for f in files if f.lower().endswith(STATE_EXTENSIONS)]
        for path in sorted(found):
            index.setdefault(os.path.relpath(path, root).replace(os.sep, "/") + mark, path)
    return index


def state_files() -> list[str]:
    """Names Stream-R1 Load State offers: *.safetensors in the output folder as Save State writes them
    ("stream_r1/state_00001_.safetensors"), then in the input folder ("fox.state.safetensors [input]").
    Headless: $STREAM_R1_OUTPUT (./output) and $STREAM_R1_INPUT (./input)."""
    return list(_state_index())


def resolve_state(name: str) -> str:
    """Full path of a listed state name. Names are resolved only through the listing: any other name (a path, "..",
    a file that is missing) gets the same error, which says nothing about whether such a file exists."""
    path = _state_index().get(name) if isinstance(name, str) else None
    if path is None:
        shown = repr(name if not isinstance(name, str) or len(name) <= 80 else name[:77] + "...")
        where = "ComfyUI's output or input folder" if _service("folder_paths", "get_output_directory") else \
            f"{output_folder()} or {input_folder()} (set STREAM_R1_OUTPUT / STREAM_R1_INPUT)"
        raise FileNotFoundError(f"stream state {shown} is not one of the listed state files: save the stream with "
                                f"Stream-R1 Save State, or copy the state file into {where}, then refresh (R) and "
                                "pick it from the list")
    return path

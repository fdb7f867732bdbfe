"""Reading tensor files safely: safetensors, or torch pickles through `weights_only=True` only.

One home for the rules every loader follows (DiT checkpoints, VAE, text encoder, reward model): memory-map
where possible, refuse pickles that would need arbitrary code, and turn a cut download into a clear message.
"""
from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def incomplete_error(path: Path, why: str) -> ValueError:
    return ValueError(f"{path} is incomplete or corrupt ({why}); the download or copy was cut short — "
                      f"download it again")


def torch_load(path: Path) -> Any:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    is_zip = magic == b"PK\x03\x04"
    if is_zip and not zipfile.is_zipfile(path):
        raise incomplete_error(path, "zip archive has no central directory")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" in msg or "Unsupported class" in msg or "GLOBAL" in msg:
            detail = next((ln.strip() for ln in msg.splitlines() if "Unsupported" in ln), msg.splitlines()[0])
            raise ValueError(
                f"{path} is refused for safety: it contains Python objects other than tensors ({detail}), and "
                f"loading it would need torch.load(weights_only=False), which can run arbitrary code. If you "
                f"trust the file, re-save only its tensors (e.g. torch.save(sd) or safetensors save_file) "
                f"elsewhere and load that") from None
        raise incomplete_error(path, f"unpickling failed: {msg.splitlines()[0][:200]}") from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, KeyError, ImportError) as e:
        raise incomplete_error(path, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    except Exception as e:  # struct.error and friends from a cut legacy pickle
        raise incomplete_error(path, f"{type(e).__name__}: {e}") from None


def read_tensors(path: "str | Path") -> dict[str, Tensor]:
    """A flat {name: tensor} dict from a .safetensors or torch file (a lone 'state_dict' wrapper is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix in (".safetensors", ".sft"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise incomplete_error(path, str(e).splitlines()[0][:200]) from None
    obj = torch_load(path)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return dict(obj)

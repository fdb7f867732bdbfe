"""Reading tensor files safely: safetensors, or torch pickles through `weights_only=True` only.

One home for the rules every loader follows (DiT checkpoints, VAE, text encoder, reward model): memory-map
where possible, refuse pickles that would need arbitrary code, and turn a cut download into a clear message.
"""
from __future__ import annotations

import json
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
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), "pt") as f:
                sd, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
        except (SafetensorError, OSError) as e:
            raise incomplete_error(path, str(e).splitlines()[0][:200]) from None
        return unpack_rows(sd, meta, path)
    obj = torch_load(path)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return dict(obj)


# ---- row-packed tables ----------------------------------------------------------------------------------------------
ROW_PACKED = "stream_r1_row_packed"
"""safetensors metadata key: JSON {name: total rows} of the tables stored as `<name>.rows` + `<name>.row_ids`."""


def pack_rows(sd: Mapping[str, Tensor], tables: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Store only the given rows of each table {name: row ids} of `sd` (tables [N, D] whose other rows are never
    read, e.g. the embedding rows a tokenizer cannot emit): returns the new dict and the safetensors metadata
    `read_tensors` needs to expand it (rows not stored read as zeros)."""
    out, sizes = dict(sd), {}
    for name, ids in tables.items():
        if name not in sd or sd[name].dim() != 2:
            raise ValueError(f"{name!r} is not a 2-D table of this state dict; pass the key of a table to pack")
        table = out.pop(name)
        ids_t = torch.as_tensor(sorted(set(int(i) for i in ids)), dtype=torch.long)
        if len(ids_t) and (ids_t[0] < 0 or ids_t[-1] >= table.shape[0]):
            raise ValueError(f"row ids for {name!r} must lie in [0, {table.shape[0]}); got {int(ids_t[0])}.."
                             f"{int(ids_t[-1])}")
        out[f"{name}.rows"] = table[ids_t].contiguous()                   # [n, D]
        out[f"{name}.row_ids"] = ids_t                                    # [n]
        sizes[name] = int(table.shape[0])
    return out, {ROW_PACKED: json.dumps(sizes)}


def unpack_rows(sd: dict[str, Tensor], meta: Mapping[str, str], path: "str | Path" = "") -> dict[str, Tensor]:
    """Expand the tables `pack_rows` stored: rows not stored read as zeros."""
    if ROW_PACKED not in meta:
        return sd
    for name, n in json.loads(meta[ROW_PACKED]).items():
        try:
            rows, ids = sd.pop(f"{name}.rows"), sd.pop(f"{name}.row_ids")
        except KeyError:
            raise incomplete_error(Path(path), f"metadata names the row-packed table {name!r} but its .rows / "
                                               f".row_ids tensors are missing") from None
        table = rows.new_zeros(int(n), rows.shape[-1])                    # [N, D]
        table[ids] = rows
        sd[name] = table
    return sd

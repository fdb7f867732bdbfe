"""Reading tensor files safely: safetensors, or torch pickles through `weights_only=True` only.

One home for the rules every loader follows (DiT checkpoints, VAE, text encoder, reward model): open regular files
only, check a safetensors header completely before any use, memory-map where possible, refuse pickles that would
need arbitrary code, and turn a cut download into a clear message.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import reprlib
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

MAX_HEADER_BYTES = 100_000_000
"""Largest safetensors JSON header accepted (the limit of the safetensors library itself)."""
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    **{k: getattr(torch, v) for k, v in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"))
       if hasattr(torch, v)},
}
_U64 = 2**64 - 1                # safetensors sizes and offsets are u64
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_SPECIAL_FILES = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
                  (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


class WeightsFileError(ValueError):
    """A weights file that cannot be used as it is: cut short, malformed, or not a regular file."""


def incomplete_error(path: "Path | str", why: str) -> WeightsFileError:
    return WeightsFileError(f"{path} is incomplete or corrupt ({why}); the download or copy was cut short — "
                            f"download it again")


def regular_file(path: "str | os.PathLike") -> os.stat_result:
    """stat of `path` (symlinks followed); refuses anything but a regular file, since reading a FIFO, device or
    socket can block or never end."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for is_kind, k in _SPECIAL_FILES if is_kind(st.st_mode)), "special file")
        raise WeightsFileError(f"{path} is a {kind}, not a regular file; pass the weights file itself")
    return st


def read_safetensors_header(path: "str | os.PathLike") -> tuple[dict[str, tuple[torch.dtype, tuple[int, ...]]],
                                                                 dict[str, str]]:
    """Check and read the header of a safetensors file (regular files only; reads the header, not the data)."""
    size = regular_file(path).st_size
    with open(path, "rb") as fh:
        return parse_safetensors_header(fh, size, str(path))


def parse_safetensors_header(fh: BinaryIO, size: int, where: str = "safetensors data"
                             ) -> tuple[dict[str, tuple[torch.dtype, tuple[int, ...]]], dict[str, str]]:
    """Parse and fully check the safetensors header at the start of `fh` (`size` bytes in all) before anything
    trusts it: JSON object without duplicate keys, `__metadata__` str -> str, every tensor a known dtype, integer
    shape and [begin, end] offsets of exactly its byte size, and the tensors tiling the data area exactly.

    Returns ({name: (dtype, shape)}, metadata); raises WeightsFileError naming what is wrong."""
    def bad(what: str) -> WeightsFileError:
        return WeightsFileError(f"{where}: {what}; the safetensors header is malformed — re-download or re-export "
                                f"the file")
    head = fh.read(8)
    if len(head) < 8:
        raise incomplete_error(where, f"only {size} bytes")
    n = int.from_bytes(head, "little")
    if n > MAX_HEADER_BYTES:
        raise bad(f"header length {n:,} exceeds {MAX_HEADER_BYTES:,} bytes (not a safetensors file?)")
    if n > size - 8:
        raise incomplete_error(where, f"header of {n:,} bytes, file of {size:,} bytes")
    raw = fh.read(n)
    if raw[:1] != b"{":
        raise bad("header does not start with '{'")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        json.dumps(header, ensure_ascii=False).encode("utf-8")     # a lone "\ud800" escape is not UTF-8 text
    except (ValueError, RecursionError) as e:      # JSONDecodeError, UnicodeDecodeError, duplicate keys
        raise bad(f"header is not valid JSON ({str(e)[:200]})") from None
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad(f"__metadata__ must map strings to strings, got {_short(meta)}")
    specs, spans = {}, []
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise bad(f"tensor {_short(name)} is {_short(info)}, not an object with dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise bad(f"tensor {_short(name)} has dtype {_short(dtype)}, which torch cannot hold "
                      f"(known: {', '.join(SAFETENSORS_DTYPES)})")
        if not _u64_list(shape):
            raise bad(f"tensor {_short(name)} has shape {_short(shape)}, not a list of non-negative integers")
        if not (_u64_list(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1]):
            raise bad(f"tensor {_short(name)} has data_offsets {_short(offsets)}, not [begin, end] with "
                      f"0 <= begin <= end")
        nbytes = _nbytes(shape, SAFETENSORS_DTYPES[dtype].itemsize)
        if nbytes != offsets[1] - offsets[0]:
            raise bad(f"tensor {_short(name)} is {dtype} {_short(shape)} "
                      f"({f'{nbytes:,}' if nbytes <= _U64 else 'over 2**64'} bytes) but its data_offsets {offsets} "
                      f"span {offsets[1] - offsets[0]:,} bytes")
        specs[name] = (SAFETENSORS_DTYPES[dtype], tuple(shape))
        spans.append((offsets[0], offsets[1], name))
    end, prev = 0, ""
    for begin, stop, name in sorted(spans):
        if begin < end:
            raise bad(f"tensor {_short(name)} data_offsets [{begin}, {stop}] overlap tensor {prev}, which ends at "
                      f"{end}")
        if begin > end:
            raise bad(f"tensor {_short(name)} data_offsets [{begin}, {stop}] leave data bytes [{end}, {begin}) "
                      f"unused")
        end, prev = stop, _short(name)
    if end > size - 8 - n:
        raise incomplete_error(where, f"header promises {8 + n + end:,} bytes, file has {size:,}")
    if end < size - 8 - n:
        raise bad(f"the tensors cover {end:,} bytes but the data area holds {size - 8 - n:,}: the rest belongs to "
                  f"no tensor")
    return specs, meta


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            raise ValueError(f"duplicate key {_short(k)}")
        seen.add(k)
    return dict(pairs)


def _nbytes(shape: list[int], itemsize: int) -> int:
    """Bytes of a tensor of this shape, or some number past 2**64 (stops early: a hostile shape can hold many huge
    dims)."""
    n = itemsize
    for d in shape:
        n *= d
        if n > _U64:
            break
    return n


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _u64_list(x: Any) -> bool:
    return isinstance(x, list) and all(type(v) is int and 0 <= v <= _U64 for v in x)


def _short(x: Any) -> str:
    """repr of x on one line, cut short (names and values in a header can be huge or deeply nested)."""
    return _REPR.repr(x)


def torch_load(path: Path) -> Any:
    regular_file(path)
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
    if path.suffix in (".safetensors", ".sft"):
        from safetensors import SafetensorError, safe_open
        read_safetensors_header(path)
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

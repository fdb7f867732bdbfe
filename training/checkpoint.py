"""Resumable training state with Distributed Checkpoint (DCP), and safetensors exports of the student.

Layout under `<output_dir>/checkpoints/`:

    step_00000200/            one DCP checkpoint (every rank writes its shards), renamed into place from
      .metadata, __*.distcp   `.tmp-step_00000200` once complete, so a killed job never leaves a half checkpoint
      trainer_state.json      step, data position, EMA flag, BalancedOverall history
      rng/rank_<r>.pt         each rank's torch RNG states
      config.json             the resolved TrainConfig
      manifest.json           size and sha256 of every file above (written last, checked on resume)
    exports/student_step_00000200.safetensors   EMA student (stream_r1.checkpoint.save_dit_export) + config.json

Only the newest `keep` checkpoints stay. The folder must be on a filesystem every rank can reach.

Trust boundary on resume. DCP's own reader unpickles `.metadata` with plain `pickle.load` and the non-tensor
entries of the shards with `torch.load(weights_only=False)`: a crafted folder would run code. So resume
1. refuses a folder without `manifest.json`, or whose files differ from it (size, sha256): a checkpoint changed
   after this trainer saved it (a swapped `.metadata` or shard, a truncated copy) is never read. Checkpoints of
   older versions are sealed once by hand: `python -m training.checkpoint seal PATH` (which runs the checks of 2);
2. reads `.metadata` through an unpickler that builds only DCP's metadata classes, torch.Size, dtypes and
   layouts, and shard entries through `torch.load(weights_only=True)`; the shard files named in the metadata
   must be files of the manifest. A folder whose manifest was forged along with its payload stops here.
A refusal is one line (`UntrustedCheckpoint`, a ValueError: `python -m training.run` exits with code 2).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import re
import shutil
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException, FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from . import parallel

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{8})$")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "stream_r1.training.checkpoint/manifest-1"
_DIGEST_SHARE = ".digests.rank_{}.json"
"""Each rank's share of the hashing at save time, merged into the manifest by rank 0 and removed."""


class UntrustedCheckpoint(ValueError):
    """A checkpoint folder that resume refuses to read (see the module docstring)."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and d.is_dir() and (d / "trainer_state.json").is_file():
            out.append((int(m.group(1)), d))
    return sorted(out)


def resolve_resume(resume: str, root: Path) -> Optional[Path]:
    """'auto' -> newest checkpoint under root (or None), 'none' -> None, else the named folder (must exist)."""
    if resume == "none":
        return None
    if resume == "auto":
        found = list_checkpoints(root)
        return found[-1][1] if found else None
    path = Path(resume).expanduser()
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"checkpoint.resume: {path} is not a training checkpoint (no trainer_state.json); "
                                f"pass a folder like {root}/step_00000200, 'auto' or 'none'")
    return path


def save(root: Path, step: int, state: dict[str, Any], meta: dict[str, Any], config_json: str, keep: int,
         rank: int) -> Path:
    """Write one checkpoint atomically (collective: every rank calls it). Returns the final folder."""
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "rng").mkdir()
    parallel.barrier()
    dcp.save(state, checkpoint_id=str(tmp))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, tmp / "rng" / f"rank_{rank}.pt")
    parallel.barrier()
    _write_digest_share(tmp, rank, _world_size())      # every rank hashes a share of the shards
    parallel.barrier()
    if rank == 0:
        (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=2))
        (tmp / "config.json").write_text(config_json)
        write_manifest(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    parallel.barrier()
    return final


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "trainer_state.json").read_text())


def load(path: Path, state: dict[str, Any], rank: int) -> None:
    """Fill `state` (same structure as saved) in place from the checkpoint; restore this rank's RNG.

    Collective. Raises UntrustedCheckpoint on every rank, before any pickle is read, unless the folder matches its
    manifest and its metadata holds only DCP's own classes (module docstring).
    """
    problem: Optional[UntrustedCheckpoint] = None
    try:
        trusted = verify_manifest(path, rank, _world_size())
        check_metadata(path, trusted)
    except UntrustedCheckpoint as e:
        problem = e
    if parallel.any_rank(problem is not None):
        raise problem or UntrustedCheckpoint(f"{path}: another rank refused this checkpoint (its error says why); "
                                             f"refusing to resume from it")
    try:
        dcp.load(state, checkpoint_id=str(path), storage_reader=_TrustedReader(path, trusted),
                 planner=_WeightsOnlyLoadPlanner(path))
    except CheckpointException as e:                 # DCP wraps what its reader and planner raise
        ours = [f[0] for f in e.failures.values() if isinstance(f, tuple) and isinstance(f[0], UntrustedCheckpoint)]
        if ours:
            raise ours[0] from None
        raise
    rng_file = path / "rng" / f"rank_{rank}.pt"
    if f"rng/rank_{rank}.pt" in trusted and rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])


def export_student(path: Path, full_state: Callable[[], dict[str, torch.Tensor]], config, stream_config,
                   extra: dict[str, Any], config_json: str, rank: int) -> Optional[Path]:
    """Gather the student (collective) and write it as one safetensors file on rank 0, plus config.json beside."""
    from stream_r1.checkpoint import save_dit_export

    sd = full_state()
    if rank != 0:
        return None
    meta = {**extra, "training_config": config_json}
    out = save_dit_export(path, sd, config, stream_config, extra=meta)
    path.with_suffix(".config.json").write_text(config_json)
    return out


# ---- trust boundary: manifest -------------------------------------------------------------------------------
def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _digest(path: Path, chunk: int = 1 << 24) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def _checkpoint_files(folder: Path) -> list[str]:
    """Every file under `folder` as a POSIX relative path, the manifest and the digest shares excepted."""
    names = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(n for n in names if n != MANIFEST and not re.fullmatch(r"\.digests\.rank_\d+\.json", n))


def _write_digest_share(folder: Path, rank: int, world: int) -> None:
    share = {n: _digest(folder / n) for n in _checkpoint_files(folder)[rank::world]}
    (folder / _DIGEST_SHARE.format(rank)).write_text(json.dumps(share))


def write_manifest(folder: Path) -> Path:
    """Record the size and sha256 of every file of `folder` in folder/manifest.json (the ranks' digest shares
    are used where their size still matches, the rest is hashed here); returns the manifest's path."""
    known: dict[str, dict[str, Any]] = {}
    for share in sorted(folder.glob(_DIGEST_SHARE.format("*"))):
        known.update(json.loads(share.read_text()))
    files = {}
    for name in _checkpoint_files(folder):
        rec = known.get(name)
        files[name] = rec if rec and rec["size"] == (folder / name).stat().st_size else _digest(folder / name)
    out, tmp = folder / MANIFEST, folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1))
    tmp.replace(out)
    for share in folder.glob(_DIGEST_SHARE.format("*")):
        share.unlink()
    return out


def _plain_relative(name: object) -> bool:
    if not isinstance(name, str) or not name or "\\" in name or ":" in name or "\0" in name:
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and all(part not in ("", ".", "..") for part in name.split("/"))


def verify_manifest(folder: Path, rank: int = 0, world: int = 1) -> set[str]:
    """Check `folder` against its manifest; returns the names it vouches for. Every file's size is checked; this
    rank hashes its share (every `world`-th file from `rank`), so the ranks together hash each file once."""
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise UntrustedCheckpoint(
            f"{folder} has no {MANIFEST} (saved by an older version, or not by this trainer) and resuming reads "
            f"pickles that could run code; if you trust where it came from, run `python -m training.checkpoint seal "
            f"{folder}` once, then resume again")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        ok = manifest.get("format") == MANIFEST_FORMAT and isinstance(files, dict) and all(
            isinstance(r, dict) and isinstance(r.get("size"), int) and isinstance(r.get("sha256"), str)
            for r in files.values())
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise UntrustedCheckpoint(f"{mpath} is not a checkpoint manifest ({MANIFEST_FORMAT}); refusing to resume "
                                  f"from {folder}")
    for name in (".metadata", "trainer_state.json"):
        if name not in files:
            raise UntrustedCheckpoint(f"{mpath} does not list {name}; refusing to resume from {folder}")
    for i, (name, rec) in enumerate(sorted(files.items())):
        if not _plain_relative(name):
            raise UntrustedCheckpoint(f"{mpath} lists {name!r}, not a plain relative path; refusing to resume from "
                                      f"{folder}")
        path = folder / name
        if not path.is_file():
            raise UntrustedCheckpoint(f"{folder}: {name} is missing, {MANIFEST} lists it; the copy is incomplete, "
                                      f"refusing to resume from it")
        size = path.stat().st_size
        if size != rec["size"]:
            raise UntrustedCheckpoint(f"{folder}: {name} has {size} bytes, {MANIFEST} records {rec['size']}; the "
                                      f"checkpoint changed after it was saved, refusing to resume from it")
        if i % world == rank and (got := _digest(path)["sha256"]) != rec["sha256"]:
            raise UntrustedCheckpoint(f"{folder}: {name} has sha256 {got[:16]}..., {MANIFEST} records "
                                      f"{rec['sha256'][:16]}...; the checkpoint changed after it was saved, "
                                      f"refusing to resume from it")
    return set(files)


# ---- trust boundary: what DCP unpickles ---------------------------------------------------------------------
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),          # a layout by its name: torch.strided
    ("collections", "OrderedDict"),
    *(("pathlib", n) for n in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP metadata and nothing else: its dataclasses and enum, torch.Size, torch dtypes and layouts,
    paths and ordered dicts. Any other global (os.system, builtins.exec, ...) is refused before it is looked up."""

    def __init__(self, file, where: Path):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout)):
            return getattr(torch, name)
        if module == _DCP_METADATA:
            import dataclasses
            import enum
            obj = getattr(sys.modules.get(module) or __import__(module, fromlist=[name]), name, None)
            if isinstance(obj, type) and obj.__module__ == module and (dataclasses.is_dataclass(obj)
                                                                       or issubclass(obj, enum.Enum)):
                return obj
        raise UntrustedCheckpoint(f"{self.where} asks to build {module}.{name}, which DCP metadata never holds (a "
                                  f"pickle that could run code); refusing to resume from {self.where.parent}")

    def persistent_load(self, pid):
        raise UntrustedCheckpoint(f"{self.where} holds a persistent id, which DCP metadata never has; refusing to "
                                  f"resume from {self.where.parent}")


def read_metadata(path: Path):
    """The DCP Metadata of checkpoint folder `path` (or of the `.metadata` file itself), unpickled safely."""
    from torch.distributed.checkpoint.metadata import Metadata

    file = path if path.name.endswith(".metadata") else path / ".metadata"
    try:
        with open(file, "rb") as f:
            md = _MetadataUnpickler(f, file).load()
    except UntrustedCheckpoint:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UntrustedCheckpoint(f"{file} is not DCP metadata ({type(e).__name__}: {e}); refusing to resume from "
                                  f"{file.parent}") from None
    if not isinstance(md, Metadata):
        raise UntrustedCheckpoint(f"{file} holds a {type(md).__name__}, not DCP Metadata; refusing to resume from "
                                  f"{file.parent}")
    return md


def _check_storage_paths(md, folder: Path, trusted: set[str]) -> None:
    for info in (md.storage_data or {}).values():
        rel = getattr(info, "relative_path", None)
        if rel not in trusted or not _plain_relative(rel):
            raise UntrustedCheckpoint(f"{folder}/.metadata points at {rel!r}, not a file of {MANIFEST}; refusing to "
                                      f"resume from {folder}")


def check_metadata(folder: Path, trusted: set[str]) -> None:
    """`.metadata` unpickles to DCP metadata only, and names only files that `trusted` (the manifest) lists."""
    _check_storage_paths(read_metadata(folder), folder, trusted)


class _TrustedReader(FileSystemReader):
    """DCP's file reader, with `.metadata` read by `_MetadataUnpickler` and shard paths confined to the manifest."""

    def __init__(self, path: Path, trusted: set[str]):
        super().__init__(path)
        self.folder, self.trusted = Path(path), trusted

    def read_metadata(self, *args: Any, **kwargs: Any):
        from torch.distributed.checkpoint.metadata import StorageMeta

        md = read_metadata(Path(self._get_metadata_path(kwargs.get("rank"))))
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md

    def set_up_storage_reader(self, metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        _check_storage_paths(metadata, self.folder, self.trusted)
        super().set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)


class _WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, except that non-tensor entries (optimizer hyper-parameters) are unpickled with
    `torch.load(weights_only=True)`, not `weights_only=False`."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UntrustedCheckpoint(f"{self.folder}: the entry {read_item.dest_index.fqn!r} is a pickle that "
                                      f"could run code ({first}); refusing to resume from it") from None
        buf = io.BytesIO()                           # re-serialised by us from plain values: safe for DCP's loader
        torch.save(obj, buf)
        buf.seek(0)
        super().load_bytes(read_item, buf)


def seal(folder: Path) -> Path:
    """Vouch for an existing checkpoint (one saved before manifests existed): check that it holds nothing but
    what DCP writes (`.metadata` through the restricted unpickler, every non-tensor entry and RNG file through
    `weights_only=True`), then write its manifest. Raises UntrustedCheckpoint otherwise."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    if not (folder / "trainer_state.json").is_file():
        raise UntrustedCheckpoint(f"{folder} is not a training checkpoint (no trainer_state.json)")
    md = read_metadata(folder)
    _check_storage_paths(md, folder, set(_checkpoint_files(folder)))
    for index, info in md.storage_data.items():
        if not isinstance(md.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            continue
        if getattr(info, "transform_descriptors", None):
            raise UntrustedCheckpoint(f"{folder}: {index.fqn!r} was written through a DCP stream extension, which "
                                      f"seal cannot check")
        with open(folder / info.relative_path, "rb") as f:
            f.seek(info.offset)
            blob = io.BytesIO(f.read(info.length))
        try:
            torch.load(blob, weights_only=True)
        except pickle.UnpicklingError:
            raise UntrustedCheckpoint(f"{folder}: the entry {index.fqn!r} is a pickle that could run code; not "
                                      f"sealing it") from None
    for rng in sorted((folder / "rng").glob("*.pt")):
        try:
            torch.load(rng, weights_only=True)
        except pickle.UnpicklingError:
            raise UntrustedCheckpoint(f"{rng} is a pickle that could run code; not sealing {folder}") from None
    return write_manifest(folder)


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m training.checkpoint seal PATH [PATH ...]`: see `seal`."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m training.checkpoint",
                                description="Vouch for checkpoints saved before manifests existed (see `seal`).")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("seal", help="check a checkpoint folder and write its manifest.json").add_argument(
        "folders", nargs="+", type=Path, metavar="PATH")
    args = p.parse_args(argv)
    for folder in args.folders:
        try:
            out = seal(folder)
        except (UntrustedCheckpoint, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"sealed {folder}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Resumable training state with Distributed Checkpoint (DCP), and safetensors exports of the student.

Layout under `<output_dir>/checkpoints/`:

    step_00000200/            one DCP checkpoint (every rank writes its shards), renamed into place from
      .metadata, __*.distcp   `.tmp-step_00000200` once complete, so a killed job never leaves a half checkpoint
      trainer_state.json      step, data position, EMA flag, BalancedOverall history
      rng/rank_<r>.pt         each rank's torch RNG states
      config.json             the resolved TrainConfig
    exports/student_step_00000200.safetensors   EMA student (stream_r1.checkpoint.save_dit_export) + config.json

Only the newest `keep` checkpoints stay. The folder must be on a filesystem every rank can reach.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed.checkpoint as dcp

from . import parallel

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{8})$")


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
    if rank == 0:
        (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=2))
        (tmp / "config.json").write_text(config_json)
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
    """Fill `state` (same structure as saved) in place from the checkpoint; restore this rank's RNG."""
    dcp.load(state, checkpoint_id=str(path))
    rng_file = path / "rng" / f"rank_{rank}.pt"
    if rng_file.is_file():
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

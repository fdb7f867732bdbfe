"""The embedded shapes-world bundle: a small causal student, its VAE, umT5 text encoder (tokenizer inside) and
reward model, all in the real formats, trained by `training/` recipes (see `bundle.json` for the commands,
seeds, device and evaluation). It is what `python -m stream_r1 generate` runs when no checkpoint is given,
and what the ComfyUI demo loader node loads: a real model that works on a CPU with no downloads.

Layout of the folder (`STREAM_R1_SHAPES_BUNDLE` overrides its location)::

    student.safetensors   causal Wan DiT export (Wan key names, WanConfig + StreamConfig in the metadata)
    vae.safetensors       Wan2.1-architecture VAE (real key names, dim 12)
    umt5.safetensors      umT5 encoder, ComfyUI layout (HF names + `spiece_model`)
    reward/               VideoReward layout (model_config.json + checkpoint-*/) for saliency and Stream-T1
    bundle.json           size, fps, recipe commands, seeds, evaluation table
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

FILES = {"student": "student.safetensors", "vae": "vae.safetensors", "text_encoder": "umt5.safetensors"}
REWARD_DIR = "reward"


def bundle_dir() -> Path:
    """Where the bundle lives: $STREAM_R1_SHAPES_BUNDLE, else `stream_r1/shapes/bundle/` in the package."""
    env = os.environ.get("STREAM_R1_SHAPES_BUNDLE")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent / "bundle"


def available(root: Optional[Path] = None) -> bool:
    root = root or bundle_dir()
    return all((root / f).is_file() for f in FILES.values())


def manifest(root: Optional[Path] = None) -> dict[str, Any]:
    """bundle.json (size, fps, default prompt, recipe, evaluation); {} when absent."""
    p = (root or bundle_dir()) / "bundle.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def paths(root: Optional[Path] = None) -> dict[str, Path]:
    root = root or bundle_dir()
    out = {k: root / v for k, v in FILES.items()}
    out["reward"] = root / REWARD_DIR
    return out


@dataclass
class ShapesBundle:
    model: Any                  # WanModel (causal student), eval, on device
    info: Any                   # loaders.StudentInfo
    vae: Any                    # WanVAE
    text_encoder: Any           # text_encoder.TextEncoder
    height: int
    width: int
    fps: int
    root: Path

    def reward(self, device="cpu", dtype=torch.float32):
        """The bundle's 3-axis VideoReward (None when the bundle ships none)."""
        from ..reward.model import load_video_reward
        p = self.root / REWARD_DIR
        return load_video_reward(p, device=device, dtype=dtype) if p.is_dir() else None


def load_bundle(device="cpu", dtype: torch.dtype = torch.float32, attention: str = "auto",
                root: Optional[Path] = None) -> ShapesBundle:
    """Load the student, VAE and text encoder of the bundle (raises FileNotFoundError naming what is missing)."""
    from ..loaders import load_student          # relative: ComfyUI imports the pack under a path-derived name
    from ..text_encoder import load_text_encoder
    from ..vae import load_vae

    root = root or bundle_dir()
    p = paths(root)
    missing = [str(p[k]) for k in FILES if not p[k].is_file()]
    if missing:
        raise FileNotFoundError(f"the shapes-world bundle is incomplete, missing {missing}; rebuild it with the "
                                "recipes in docs/shapes-world.md or pass --checkpoint/--vae/--text-encoder")
    model, info = load_student(str(p["student"]), device=device, dtype=dtype, attention=attention)
    vae = load_vae(str(p["vae"]), device=device, dtype=dtype)
    enc = load_text_encoder(str(p["text_encoder"]), device=device, dtype=dtype)
    m = manifest(root)
    return ShapesBundle(model, info, vae, enc, int(m.get("height", 96)), int(m.get("width", 96)),
                        int(m.get("fps", 16)), root)

"""Build ready-to-run modules from files: the causal student, plus seeded random stand-ins.

Used by the CLI, the nodes and the benchmarks; paths arrive resolved, devices and dtypes as arguments.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from .config import StreamConfig, WanConfig
from .wan.model import WanModel

log = logging.getLogger(__name__)


@dataclass
class StudentInfo:
    config: WanConfig
    stream_config: StreamConfig
    """Cache policy and knobs of the checkpoint's family (what it was trained with)."""
    format: str
    family: str
    source: str
    notes: list[str] = field(default_factory=list)
    """What the loader assumed (e.g. an unknown family streaming with Stream-R1's defaults); the node shows them."""


def load_student(path: str, *, device: "torch.device | str" = "cpu", dtype: torch.dtype = torch.float32,
                 attention: str = "auto", entry: Optional[str] = None, num_heads: Optional[int] = None,
                 lora: Optional[str] = None) -> tuple[WanModel, StudentInfo]:
    """Load any supported DiT file strictly into a `WanModel` (eval mode, on `device` in `dtype`)."""
    from .checkpoint import load_dit_checkpoint

    ck = load_dit_checkpoint(path, entry=entry, num_heads=num_heads, lora=lora)
    with torch.device("meta"):
        model = WanModel(ck.config, attention=attention)
    model.load_state_dict(ck.state_dict, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    info = StudentInfo(ck.config, ck.stream_config, ck.format, ck.family, str(path), ck.notes)
    log.info("loaded %s (%s, %s): %s", path, ck.format, ck.family, ck.config)
    return model, info


def random_student(cfg: WanConfig, *, seed: int = 0, device: "torch.device | str" = "cpu",
                   dtype: torch.dtype = torch.float32, attention: str = "auto") -> WanModel:
    """A seeded random model at any size (speed does not depend on weight values)."""
    model = WanModel(cfg, attention=attention).init_weights(seed=seed)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def prompt_embedding(prompt: str, text_dim: int, tokens: int = 16) -> torch.Tensor:
    """Deterministic stand-in context [1, tokens, text_dim] for models without a text encoder (demo only)."""
    import hashlib

    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
    return torch.randn(1, tokens, text_dim, generator=torch.Generator().manual_seed(seed))


class HashedText:
    """The tiny recipes' text encoder ("hash"): `prompt_embedding` stand-ins, `tokens` rows each."""

    def __init__(self, text_dim: int, tokens: int):
        self.text_dim, self.tokens = text_dim, tokens

    def encode(self, prompts: list[str]) -> torch.Tensor:                   # [B, tokens, text_dim]
        return torch.cat([prompt_embedding(p, self.text_dim, self.tokens) for p in prompts])


def _trained_with(path: str, what: str, flag: str) -> tuple[dict[str, Any], Path]:
    """The training config a trainer export carries in its metadata, and the export's path."""
    from .checkpoint.formats import metadata_json
    from .weights_io import read_safetensors_header

    path = Path(path).expanduser()
    meta = read_safetensors_header(path)[1] if path.suffix in (".safetensors", ".sft") else {}
    if "training_config" not in meta:
        raise ValueError(f"{path.name} does not say which {what} it was trained with (only this pack's trainer "
                         f"exports do); pass {flag}")
    return metadata_json(meta, "training_config", path), path


def _find(name: str, export: Path, flag: str) -> Path:
    """A file the training config names: as given (relative to the working directory), else relative to one of the
    export's folders (runs/<stage>/exports/x.safetensors names runs/shapes/... relative to the repository)."""
    for base in (Path.cwd(), *export.resolve().parents):
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(f"{export.name} was trained with {name}, which is not there (nor next to the export); "
                            f"pass {flag} with that file")


def checkpoint_text_encoder(path: str, text_dim: int, *, device: "torch.device | str" = "cpu",
                            dtype: torch.dtype = torch.float32) -> Any:
    """The text encoder a trainer export (`runs/<name>/exports/*.safetensors`) was trained with: the umT5 file its
    training config names, or the tiny recipes' hashed embeddings. Returns an object with `.encode(prompts)` ->
    [B, L, text_dim]; raises ValueError / FileNotFoundError saying what to pass (--text-encoder)."""
    cfg, export = _trained_with(path, "text encoder", "--text-encoder (umT5 file) or --context")
    text = cfg.get("text", {})
    if text.get("encoder", "hash") == "hash":
        return HashedText(text_dim, int(text.get("hash_tokens", 16)))
    from .text_encoder import load_text_encoder
    tok = _find(text["tokenizer"], export, "--tokenizer") if text.get("tokenizer") else None
    return load_text_encoder(_find(text["encoder"], export, "--text-encoder"), tokenizer=tok, device=device,
                             dtype=dtype)


def checkpoint_vae(path: str, *, device: "torch.device | str" = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """The VAE a trainer export was trained with: the file its training config names, or the tiny recipes' seeded
    random one (the trainer's seed: model.seed + 3). Raises ValueError / FileNotFoundError saying what to pass."""
    from .vae import VAEConfig, WanVAE, load_vae

    cfg, export = _trained_with(path, "VAE", "--vae (Wan2.1 VAE file) or --no-decode")
    m = cfg.get("model", {})
    if m.get("vae", "none") == "none":
        raise ValueError(f"{export.name} was trained without a VAE; pass --vae (Wan2.1 VAE file) or --no-decode")
    if m["vae"] != "random":
        return load_vae(_find(m["vae"], export, "--vae"), device=device, dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(m.get("seed", 0)) + 3)
        vae = WanVAE(VAEConfig.tiny() if m.get("vae_arch") == "tiny" else VAEConfig.wan21())
    return vae.to(device=device, dtype=dtype).eval()

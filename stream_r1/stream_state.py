"""Stream state files: save a running stream, resume it bit-identically, branch it.

One safetensors file (format ``stream_r1.stream_state``, version 2; version 1 files are read too) holds everything a
`StreamSession` needs to continue: the KV cache (valid part, incl. the EMA sink), its indices (so RoPE positions
continue), the text K/V, the prompt embedding, the random generator's state, the clean latents the session keeps for
re-cache / sink refresh, the given noise (if any), the streaming decoder's causal cache, and the chunk index.
Resuming it in a session with the same model (weights fingerprint), dtype, size and cache layout continues exactly
as the uninterrupted stream would have (CPU fp32: bit-identical; see tests/test_stream_state.py). Branching =
resuming and switching the prompt (`set_context` / a timeline).

Tensors (all on CPU, contiguous):

| key                         | shape / dtype                               | what                                     |
|-----------------------------|---------------------------------------------|------------------------------------------|
| cache.k, cache.v            | [layers, B, local_end, heads, head_dim]     | valid part of the self-attention buffers |
| cache.index                 | int64 [5]                                   | global_end, local_end, frame_seqlen,     |
|                             |                                             | capacity, sink_tokens (in tokens)        |
| cache.cross_k, cache.cross_v| [layers, B, text_len, heads, head_dim]      | text K/V (when computed)                 |
| cache.rotated               | int64 [5] (optional, version 2)             | RoPE split (t, h, w) + token grid (rows, |
|                             |                                             | columns) when window_sink keys are       |
|                             |                                             | stored rotated at their slots            |
| context                     | [B, L, text_dim]                            | current prompt embedding                 |
| rng                         | uint8 [n]                                   | `torch.Generator.get_state()`            |
| recent_latents              | [B, <= cache_frames, 16, h, w]              | clean latents of the last frames         |
| sink_latents                | [B, sink_frames, 16, h, w] (optional)       | clean latents of the first frames        |
| noise                       | [B, F, 16, h, w] (optional)                 | initial noise given to the session       |
| decoder.*                   | the decoder's `state_dict()` (optional)     | causal decode cache, latent frame count  |
| extra.*                     | caller tensors (optional)                   | e.g. telemetry references, a node's tail |

Metadata (safetensors header, strings): ``format``, ``version``, ``model`` (WanConfig JSON), ``fingerprint``
(hash of a few small weight tensors), ``dtype``, ``stream_config`` (StreamConfig JSON), ``session`` (JSON: height,
width, batch, chunk_index, frame_offset, seed, prompt, pieces, sink_pieces, decoder, rng_device, created) and
``extra`` (caller JSON).

Resuming checks, each a ValueError naming what differs: format and version, a complete readable file (a truncated
one is refused), the model architecture, the dtype, the weights fingerprint, size and batch, the cache layout
(cache_policy, frames_per_block, window_frames, sink_frames; `full` may grow full_cache_frames), the other
sampling fields (unless a `config` is given on purpose: then a warning, and the continuation is a variant), and
the decoder (a state saved without one cannot feed a decoder). A generator state from another device type is
replaced by a reseed (warning), since CPU and CUDA generators are not interchangeable.

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the target, so a failed
or interrupted save never damages the previous state file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from .config import StreamConfig, WanConfig

log = logging.getLogger(__name__)

FORMAT = "stream_r1.stream_state"
VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 2 added cache.rotated (version 1 caches hold un-rotated window_sink keys, which is what its absence
means)."""
LAYOUT_FIELDS = ("cache_policy", "frames_per_block", "window_frames", "sink_frames", "num_train_timesteps")
"""StreamConfig fields a saved cache depends on: they must match to resume."""
SPEED_FIELDS = ("skip_last_context_pass", "rotate_keys_once", "cuda_graphs")
"""StreamConfig fields that change how fast a stream runs, never what it generates: free to differ on resume."""


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of small weight tensors that fp8 quantisation leaves alone (embeddings' biases, modulations,
    norms, head), in float32: tells one checkpoint from another of the same architecture."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if name.endswith(("modulation", "norm_q.weight", "norm_k.weight", "norm3.weight", "norm3.bias")) or \
                (not name.startswith("blocks.") and name.endswith("bias")):
            h.update(name.encode())
            h.update(p.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _cpu(t: Tensor) -> Tensor:
    """A contiguous CPU copy (never a view: safetensors refuses tensors that share memory)."""
    return t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)


@dataclass
class SavedStream:
    """A loaded state file: tensors (CPU) and parsed metadata."""

    tensors: dict[str, Tensor]
    model: dict[str, Any]
    fingerprint: str
    dtype: str
    stream_config: dict[str, Any]
    session: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None

    @property
    def chunk_index(self) -> int:
        return int(self.session["chunk_index"])

    @property
    def frames_done(self) -> int:
        return int(self.session["frame_offset"]) + self.chunk_index * int(self.stream_config["frames_per_block"])

    @property
    def extra_tensors(self) -> dict[str, Tensor]:
        return {k[len("extra."):]: v for k, v in self.tensors.items() if k.startswith("extra.")}

    def config(self) -> StreamConfig:
        names = {f.name for f in dataclasses.fields(StreamConfig)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.stream_config.items() if k in names}
        return StreamConfig(**kw)


def session_state(session) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a session, tensors on CPU."""
    if session._skipped_context_pass:
        raise ValueError("the last chunk skipped its clean cache pass (skip_last_context_pass): this stream cannot "
                         "be continued; generate with skip_last_context_pass off to save its state")
    tensors: dict[str, Tensor] = {f"cache.{k}": v for k, v in session.cache.state_dict().items()}
    tensors["context"] = session.context
    tensors["rng"] = session.generator.get_state()
    if session._recent is not None:
        tensors["recent_latents"] = session._recent
    if session._sink_latents is not None:
        tensors["sink_latents"] = session._sink_latents
    if session.noise is not None:
        tensors["noise"] = session.noise
    has_decoder = session.decoder is not None and hasattr(session.decoder, "state_dict")
    if session.decoder is not None and not has_decoder:
        log.warning("the decoder has no state_dict(): the state holds no decode cache")
    if has_decoder:
        tensors.update({f"decoder.{k}": v for k, v in session.decoder.state_dict().items()})
    info = dict(height=session.height, width=session.width, batch=session.batch, chunk_index=session.chunk_index,
                frame_offset=session.frame_offset, seed=session.seed, prompt=session.prompt,
                pieces=[list(p) for p in session._pieces], sink_pieces=[list(p) for p in session._sink_pieces],
                decoder=type(session.decoder).__name__ if has_decoder else None,
                rng_device=session.generator.device.type, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    meta = {"format": FORMAT, "version": str(VERSION), "model": session.model.cfg.to_json(),
            "fingerprint": model_fingerprint(session.model), "dtype": _dtype_name(session.dtype),
            "stream_config": json.dumps(session.cfg.to_dict(), sort_keys=True), "session": json.dumps(info)}
    return {k: _cpu(v) for k, v in tensors.items()}, meta


def save_stream_state(session, path: "str | os.PathLike", *, extra_tensors: Optional[dict[str, Tensor]] = None,
                      extra_meta: Optional[dict[str, Any]] = None) -> Path:
    """Write the session's state to `path` atomically (temporary file, fsync, rename). Returns the path."""
    from safetensors.torch import save_file

    tensors, meta = session_state(session)
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = _cpu(v)
    meta["extra"] = json.dumps(extra_meta or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("stream state (chunk %d) -> %s", session.chunk_index, path)
    return path


def load_stream_state(path: "str | os.PathLike") -> SavedStream:
    """Read and check a state file (format, version, completeness). Tensors stay on the CPU."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stream state {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a Stream-R1 stream state (metadata format "
                                 f"{meta.get('format')!r}, expected {FORMAT!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except ValueError:
        raise
    except Exception as e:                          # SafetensorError, OSError, ...: a damaged file
        raise ValueError(f"{path} is not a readable stream state (truncated or damaged file?): {e}") from None
    version = int(meta.get("version", "0"))
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{path} is stream state version {version}; this code reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}: update the node pack to resume it")
    need = {"cache.k", "cache.v", "cache.index", "context", "rng"}
    if not need <= set(tensors):
        raise ValueError(f"{path} is incomplete: missing {sorted(need - set(tensors))}")
    try:
        return SavedStream(tensors, json.loads(meta["model"]), meta["fingerprint"], meta["dtype"],
                           json.loads(meta["stream_config"]), json.loads(meta["session"]),
                           json.loads(meta.get("extra", "{}")), str(path))
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} has damaged metadata ({e})") from None


def _check_compatible(session, saved: SavedStream, strict_config: bool) -> None:
    where = saved.path or "the state"
    mine = session.model.cfg.to_dict()
    if WanConfig.from_dict(saved.model).to_dict() != mine:
        diff = {k: (saved.model.get(k), v) for k, v in mine.items() if saved.model.get(k) != v}
        raise ValueError(f"{where} was saved with another model architecture: {diff} (saved, this model)")
    if saved.dtype != _dtype_name(session.dtype):
        raise ValueError(f"{where} was saved in {saved.dtype}; this stream runs in {_dtype_name(session.dtype)}: "
                         f"load the model in {saved.dtype} to continue it")
    fp = model_fingerprint(session.model)
    if saved.fingerprint != fp:
        raise ValueError(f"{where} was saved with other weights (fingerprint {saved.fingerprint}, this model "
                         f"{fp}): continue it with the checkpoint that produced it")
    s = saved.session
    if (s["height"], s["width"], s["batch"]) != (session.height, session.width, session.batch):
        raise ValueError(f"{where} is a {s['width']}x{s['height']} stream of batch {s['batch']}; this session is "
                         f"{session.width}x{session.height}, batch {session.batch}")
    cfg = session.cfg.to_dict()
    layout = {k: (saved.stream_config.get(k), cfg[k]) for k in LAYOUT_FIELDS if saved.stream_config.get(k) != cfg[k]}
    if layout:
        raise ValueError(f"{where} was saved with another cache layout {layout} (saved, this session): resume "
                         "with the stream settings it was saved with")
    others = {k: (saved.stream_config.get(k), v) for k, v in cfg.items()
              if k not in LAYOUT_FIELDS and k not in SPEED_FIELDS and k != "full_cache_frames"
              and saved.stream_config.get(k) != v}
    if others:
        if strict_config:
            raise ValueError(f"{where} was saved with other stream settings {others} (saved, this session)")
        log.warning("continuing with changed stream settings %s: not the uninterrupted stream", others)


def restore_session(session, saved: SavedStream, *, strict_config: bool = True) -> None:
    """Load `saved` into `session` (checked). Extra tensors/metadata are left for the caller."""
    _check_compatible(session, saved, strict_config)
    t, s = saved.tensors, saved.session
    session.cache.load_state_dict({k[len("cache."):]: v for k, v in t.items() if k.startswith("cache.")})
    session.context = t["context"].to(session.device, session.dtype)
    if s.get("rng_device", "cpu") == session.generator.device.type:
        session.generator.set_state(t["rng"])
    else:
        seed = (int(s.get("seed") or 0) * 1_000_003 + int(s.get("chunk_index", 0))) % 2 ** 63
        log.warning("the state's random generator is a %s one; this session runs on %s: reseeded with %d "
                    "(the continuation is valid but not the uninterrupted stream)", s.get("rng_device"),
                    session.generator.device.type, seed)
        session.generator.manual_seed(seed)
    session.chunk_index = int(s["chunk_index"])
    session.frame_offset = int(s["frame_offset"])
    session.seed = s.get("seed")
    session.prompt = s.get("prompt")
    session._recent = t["recent_latents"].to(session.device, session.dtype) if "recent_latents" in t else None
    session._sink_latents = t["sink_latents"].to(session.device, session.dtype) if "sink_latents" in t else None
    session._pieces = [tuple(p) for p in s.get("pieces", [])]
    session._sink_pieces = [tuple(p) for p in s.get("sink_pieces", [])]
    session.noise = t["noise"].to(session.device, session.dtype) if "noise" in t else None
    session._skipped_context_pass = False
    dec = {k[len("decoder."):]: v for k, v in t.items() if k.startswith("decoder.")}
    if session.decoder is not None:
        if not dec:
            raise ValueError(f"{saved.path or 'the state'} holds no decoder state (it was saved without a VAE): "
                             "continue it without a decoder (--no-decode) and decode the latents afterwards")
        if not hasattr(session.decoder, "load_state_dict"):
            raise ValueError(f"the decoder {type(session.decoder).__name__} cannot load a decode state")
        if s.get("decoder") not in (None, type(session.decoder).__name__):
            raise ValueError(f"{saved.path or 'the state'} holds a {s['decoder']} decode cache; this stream decodes "
                             f"with {type(session.decoder).__name__}: continue it without a decoder and decode the "
                             "latents afterwards")
        session.decoder.load_state_dict(dec)
    elif dec:
        log.info("the state holds a decode cache; this session has no decoder (latents only)")


def session_from_state(model, state, *, decoder=None, device=None, dtype=None,
                       config: Optional[StreamConfig] = None):
    """A new StreamSession continuing `state` (a path or a SavedStream)."""
    from .stream import StreamSession

    saved = state if isinstance(state, SavedStream) else load_stream_state(state)
    cfg = saved.config()
    if config is not None:
        layout = {k: (getattr(cfg, k), getattr(config, k)) for k in LAYOUT_FIELDS
                  if getattr(cfg, k) != getattr(config, k)}
        if layout:
            raise ValueError(f"{saved.path or 'the state'} was saved with another cache layout {layout} (saved, "
                             "requested)")
        cfg = config
    s = saved.session
    p = next(model.parameters())
    want = dtype or getattr(torch, saved.dtype, p.dtype)
    session = StreamSession(model, cfg, saved.tensors["context"], height=int(s["height"]), width=int(s["width"]),
                            seed=int(s.get("seed") or 0), decoder=decoder, device=device, dtype=want)
    restore_session(session, saved, strict_config=config is None)
    return session

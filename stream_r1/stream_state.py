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

Loading checks the file before anything uses it (`validate_state`), each problem one ValueError line naming the key
and what to do: format and version, a complete readable file (a truncated one is refused), the types of every
metadata field (JSON objects where objects belong, integers not strings, no NaN, no negative positions), a valid
WanConfig and StreamConfig, and every tensor's shape and dtype against what the metadata says (the table above).
Resuming then checks, each a ValueError naming what differs: the model architecture (before any cache is
allocated), the dtype, the weights fingerprint, size and batch, the cache layout
(cache_policy, frames_per_block, window_frames, sink_frames; `full` may grow full_cache_frames), the other
sampling fields (unless a `config` is given on purpose: then a warning, and the continuation is a variant), and
the decoder (a state saved without one cannot feed a decoder). A generator state from another device type is
replaced by a reseed (warning), since CPU and CUDA generators are not interchangeable.

Writes go to a temporary file in the same folder (`.NAME.PID-RANDOM.tmp`, unique per writer), are flushed to disk,
then renamed over the target, so a failed or interrupted save never damages the previous state file. A writer
killed mid-save (SIGKILL, power loss) leaves its temporary behind; the next save to the same target removes
such leftovers (`sweep_stale_temporaries`: only names of that exact pattern for that target, whose process is gone
or which nobody wrote to for an hour).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Optional

import torch
from torch import Tensor

from .config import StreamConfig, WanConfig

log = logging.getLogger(__name__)

FORMAT = "stream_r1.stream_state"
VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 2 added cache.rotated, window_sink keys stored rotated (`rotate_keys_once`, since retired: such a file is
refused with a message); version 1 and 2 files without it hold un-rotated keys."""
LAYOUT_FIELDS = ("cache_policy", "frames_per_block", "window_frames", "sink_frames", "num_train_timesteps")
"""StreamConfig fields a saved cache depends on: they must match to resume."""
SPEED_FIELDS = ("skip_last_context_pass",)
"""StreamConfig fields that change how fast a stream runs, never what it generates: free to differ on resume."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
"""Compute dtypes a stream can run in: the metadata's `dtype`, which the cache, context and latents are stored in."""
MODEL_FIELDS_REQUIRED = ("dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "text_len", "in_dim", "patch_size",
                         "vae_stride")
"""WanConfig fields a state's shapes depend on: a `model` without one is refused (others default)."""
STALE_TMP_SECONDS = 3600
"""A temporary state file nobody wrote to for this long is a leftover even if a process of its pid is running (pid
reuse, or a writer on another machine of a shared folder)."""
MAX_SIZE = 16384
"""Largest height / width a state may describe (ComfyUI's MAX_RESOLUTION): the caches are sized from the file's
numbers before its tensors say anything, so absurd ones are refused rather than allocated."""
MAX_CACHE_FRAMES = 100_000
MAX_TRAIN_TIMESTEPS = 100_000
"""Bounds of the cache length (latent frames) and the flow-matching grid (1000 in every released model)."""
_WRITING: set[str] = set()
"""Names of the temporaries this process is writing now (never swept)."""


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

    def model_config(self) -> WanConfig:
        """The architecture of the model that made the stream."""
        return WanConfig.from_dict(self.model)


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
    """Write the session's state to `path` atomically (temporary file, fsync, rename). Returns the path.
    Temporaries of `path` left by a killed writer are removed first (`sweep_stale_temporaries`)."""
    from safetensors.torch import save_file

    tensors, meta = session_state(session)
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = _cpu(v)
    meta["extra"] = json.dumps(extra_meta or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")   # unique per writer
    _WRITING.add(tmp.name)
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        _WRITING.discard(tmp.name)
        if tmp.exists():
            tmp.unlink()
    log.info("stream state (chunk %d) -> %s", session.chunk_index, path)
    return path


def _temporary_pattern(path: Path) -> "re.Pattern[str]":
    """Names `save_stream_state` gives the temporaries of `path`: `.NAME.PID-HEX8.tmp` (and `.NAME.PID.tmp`, the
    name before 2026-12); group 1 is the writer's pid."""
    return re.compile(rf"\.{re.escape(path.name)}\.(\d{{1,10}})(?:-[0-9a-f]{{8}})?\.tmp")


def _pid_running(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (True when that cannot be told: on Windows os.kill(pid, 0)
    would terminate it, so the age rule alone applies there)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):     # another user's process, or an impossible pid
        return True
    return True


def sweep_stale_temporaries(path: "str | os.PathLike") -> list[Path]:
    """Remove the temporaries of state file `path` that a killed writer left: plain files next to it named exactly as
    `save_stream_state` names them for this target, whose writer is gone (its pid runs no process here, or it is
    this process, which is not writing it now) or which nobody wrote to for STALE_TMP_SECONDS. Anything else in the
    folder is never touched. Returns the removed paths."""
    path = Path(path)
    pattern, removed, now = _temporary_pattern(path), [], time.time()
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or entry.name in _WRITING:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        pid = int(m.group(1))
        writer_alive = pid != os.getpid() and _pid_running(pid)
        if writer_alive and age < STALE_TMP_SECONDS:
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
        log.info("removed %s, a temporary state file left by an interrupted save", entry.path)
    return removed


def load_stream_state(path: "str | os.PathLike") -> SavedStream:
    """Read a state file and check it completely (`validate_state`) before anything uses it. Tensors stay on the
    CPU."""
    from safetensors import safe_open

    from .weights_io import read_safetensors_header

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stream state {path} does not exist")
    try:
        read_safetensors_header(path)               # a regular file with a sound header, before safetensors reads it
    except ValueError as e:
        raise ValueError(f"not a readable stream state (damaged, or not a state file): {e}") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a Stream-R1 stream state (metadata format "
                                 f"{_show(meta.get('format'))}, expected {FORMAT!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except ValueError:
        raise
    except Exception as e:                          # SafetensorError, OSError, ...: a damaged file
        raise ValueError(f"{path} is not a readable stream state (truncated or damaged file?): "
                         f"{_clip(str(e), 200)}") from None
    return validate_state(meta, tensors, str(path))


# ---- checking a state before use ---------------------------------------------------------------------------------
_DAMAGED = "the file was edited or damaged: save the stream again"


def _show(value: Any, limit: int = 60) -> str:
    """A short one-line repr for messages (metadata can hold anything)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _clip(text: str, limit: int) -> str:
    """An exception's text on one line, cut to `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _fail(where: str, what: str) -> NoReturn:
    raise ValueError(f"{where}: {what}; {_DAMAGED}")


def _json_object(where: str, meta: dict, key: str, required: bool = True) -> dict[str, Any]:
    """Metadata `key` parsed as a JSON object."""
    raw = meta.get(key)
    if raw is None:
        if required:
            _fail(where, f"metadata {key!r} is missing")
        return {}
    if not isinstance(raw, str):
        _fail(where, f"metadata {key!r} is a {type(raw).__name__}, expected JSON text")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as e:       # JSONDecodeError, over-long integers, deep nesting
        _fail(where, f"metadata {key!r} is not valid JSON ({_clip(str(e), 80)})")
    if not isinstance(value, dict):
        _fail(where, f"metadata {key!r} must be a JSON object, got a {type(value).__name__}")
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _like(where: str, key: str, v: Any, like: Any, lo: int, fixed_length: bool) -> Any:
    """`v` (JSON) checked to have the type of the dataclass default `like`: integers (not bools, not strings) >= lo,
    finite numbers, strings, booleans, lists for tuples (of the default's length when `fixed_length`)."""
    if isinstance(like, tuple):
        if not isinstance(v, list) or not v or (fixed_length and len(v) != len(like)):
            count = len(like) if fixed_length else "one or more"
            _fail(where, f"{key} must be a list of {count} numbers, got {_show(v)}")
        return tuple(_like(where, f"{key}[{i}]", x, like[0], lo, True) for i, x in enumerate(v))
    if isinstance(like, bool):
        ok, kind = isinstance(v, bool), "true or false"
    elif isinstance(like, int):
        ok, kind = _is_int(v) and v >= lo, f"an integer >= {lo}"
    elif isinstance(like, float):
        ok, kind = (_is_int(v) or isinstance(v, float)) and math.isfinite(v), "a finite number"
    elif isinstance(like, str):
        ok, kind = isinstance(v, str), "a string"
    else:                                           # a field type this check does not know: the class checks it
        return v
    if not ok:
        _fail(where, f"{key} must be {kind}, got {_show(v)}")
    return v


def _config(where: str, section: str, raw: dict[str, Any], cls: type, required: tuple[str, ...], lo: int,
            fixed_length: bool) -> Any:
    """A WanConfig / StreamConfig from its JSON object, every present field type-checked (unknown keys ignored,
    missing ones default unless `required`)."""
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            if f.name in required:
                _fail(where, f"{section}.{f.name} is missing")
            continue
        kw[f.name] = _like(where, f"{section}.{f.name}", raw[f.name], f.default, lo, fixed_length)
    try:
        return cls(**kw)
    except (ValueError, TypeError, ZeroDivisionError) as e:
        _fail(where, f"{section} is not a valid {cls.__name__} ({_clip(str(e), 120)})")


def _session_info(where: str, s: dict[str, Any], mc: WanConfig) -> None:
    """Check the `session` object: sizes, positions, pieces and the optional fields' types."""
    def need_int(key: str, lo: int) -> int:
        if key not in s:
            _fail(where, f"session.{key} is missing")
        if not _is_int(s[key]) or s[key] < lo:
            _fail(where, f"session.{key} must be an integer >= {lo}, got {_show(s[key])}")
        return s[key]

    height, width = need_int("height", 1), need_int("width", 1)
    if max(height, width) > MAX_SIZE:
        _fail(where, f"session size {width}x{height} is larger than {MAX_SIZE} pixels a side")
    need_int("batch", 1), need_int("chunk_index", 0), need_int("frame_offset", 0)
    m = mc.pixel_multiple
    if height % m or width % m:
        _fail(where, f"session size {width}x{height} is not a multiple of {m} (this model's pixel grid)")
    seed = s.get("seed")
    if seed is not None and not (_is_int(seed) and -2 ** 63 <= seed < 2 ** 64):
        _fail(where, f"session.seed must be a 64-bit integer or null, got {_show(seed)}")
    for key in ("prompt", "decoder"):
        if s.get(key) is not None and not isinstance(s[key], str):
            _fail(where, f"session.{key} must be a string or null, got {_show(s[key])}")
    if not isinstance(s.get("rng_device", "cpu"), str):
        _fail(where, f"session.rng_device must be a device type such as 'cpu', got {_show(s['rng_device'])}")
    for key in ("pieces", "sink_pieces"):
        pieces = s.get(key, [])
        if not isinstance(pieces, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(_is_int(x) for x in p) and 0 <= p[0] < p[1]
                for p in pieces):
            _fail(where, f"session.{key} must be a list of [start, end] latent frames with 0 <= start < end, "
                         f"got {_show(pieces)}")


class _Tensors:
    """Shape / dtype checks of a state's tensors against its metadata (`validate_state`)."""

    def __init__(self, where: str, tensors: dict[str, Tensor]):
        self.where, self.tensors = where, tensors

    def get(self, key: str, shape: tuple, dtype: torch.dtype, meaning: str, required: bool = True,
            ) -> Optional[Tensor]:
        """tensors[key] with `shape` (an int: that size; a (lo, hi) pair: a size in that range) and `dtype`."""
        t = self.tensors.get(key)
        if t is None:
            if required:
                _fail(self.where, f"tensor {key!r} ({meaning}) is missing")
            return None
        if t.dtype != dtype:
            _fail(self.where, f"tensor {key!r} is {_dtype_name(t.dtype)}, expected {_dtype_name(dtype)} ({meaning})")
        ok = t.dim() == len(shape) and all(
            (w[0] <= n <= w[1]) if isinstance(w, tuple) else n == w for n, w in zip(t.shape, shape))
        if not ok:
            want = ", ".join("*" if w == _ANY else f"{w[0]}..{w[1]}" if isinstance(w, tuple) else str(w)
                             for w in shape)
            _fail(self.where, f"tensor {key!r} has shape {list(t.shape)}, expected [{want}] ({meaning})")
        return t


_DECODER_COUNTER = re.compile(r"decoder\.(latent_frames|slots)")
_DECODER_SLOT = re.compile(r"decoder\.(?:cache|rep|memory)\.(\d+)")
_CPU_RNG_BYTES = torch.Generator().get_state().numel()           # 5056 in every PyTorch 2.x
_ANY = (1, 2 ** 62)                                               # a size of at least 1


def validate_state(meta: dict[str, Any], tensors: dict[str, Tensor], where: str = "the state") -> SavedStream:
    """Check a state's metadata and tensors completely, before anything uses them; returns the parsed state.

    Every problem is one ValueError line naming the field and what to do. Metadata: format, version, JSON objects
    `model` / `stream_config` / `session` / `extra` with fields of the right types (integers, not strings; no
    NaN; no negative positions), a valid WanConfig and StreamConfig, a known `dtype`. Tensors (no unknown names):
    each one's shape and dtype against what the metadata says (module docstring), the cache indices against the
    frame size and cache layout, the generator state's size, the decoder's counters.
    """
    if meta.get("format") != FORMAT:
        raise ValueError(f"{where} is not a Stream-R1 stream state (metadata format {_show(meta.get('format'))}, "
                         f"expected {FORMAT!r})")
    version = meta.get("version")
    if not isinstance(version, str) or not re.fullmatch(r"[0-9]{1,6}", version) or \
            int(version) not in READABLE_VERSIONS:
        raise ValueError(f"{where} is stream state version {_show(version)}; this code reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}: update the node pack to resume it")
    model = _json_object(where, meta, "model")
    stream_config = _json_object(where, meta, "stream_config")
    session = _json_object(where, meta, "session")
    extra = _json_object(where, meta, "extra", required=False)
    fingerprint, dtype_name = meta.get("fingerprint"), meta.get("dtype")
    if not isinstance(fingerprint, str) or not re.fullmatch(r"[0-9a-f]{1,64}", fingerprint):
        _fail(where, f"metadata 'fingerprint' must be a hex string, got {_show(fingerprint)}")
    if dtype_name not in DTYPES:
        _fail(where, f"metadata 'dtype' must be one of {', '.join(DTYPES)}, got {_show(dtype_name)}")
    mc = _config(where, "model", model, WanConfig, MODEL_FIELDS_REQUIRED, lo=1, fixed_length=True)
    sc = _config(where, "stream_config", stream_config, StreamConfig, LAYOUT_FIELDS, lo=0, fixed_length=False)
    if not 1 <= sc.cache_frames <= MAX_CACHE_FRAMES or sc.num_train_timesteps > MAX_TRAIN_TIMESTEPS:
        _fail(where, f"stream_config keeps {sc.cache_frames} frames in the cache over a {sc.num_train_timesteps}-step "
                     f"grid (a stream keeps 1..{MAX_CACHE_FRAMES} frames over at most {MAX_TRAIN_TIMESTEPS} steps)")
    _session_info(where, session, mc)
    _check_tensors(where, tensors, mc, sc, session, DTYPES[dtype_name])
    return SavedStream(tensors, model, fingerprint, dtype_name, stream_config, session, extra, where)


def _check_tensors(where: str, tensors: dict[str, Tensor], mc: WanConfig, sc: StreamConfig, s: dict[str, Any],
                   dtype: torch.dtype) -> None:
    known = {"cache.k", "cache.v", "cache.index", "cache.cross_k", "cache.cross_v", "cache.rotated", "context", "rng",
             "recent_latents", "sink_latents", "noise"}
    for key in tensors:
        if key not in known and not key.startswith(("extra.", "decoder.")):
            _fail(where, f"tensor {_show(key)} is not part of a stream state")
    t = _Tensors(where, tensors)
    b, height, width = s["batch"], s["height"], s["width"]
    fs = mc.tokens_per_frame(height, width)                                     # 480x832 -> 1560
    lat = (mc.in_dim, *mc.latent_hw(height, width))                             # (16, 60, 104)
    sink_frames = sc.sink_frames if sc.cache_policy != "full" else 0
    index = t.get("cache.index", (5,), torch.int64, "global_end, local_end, frame_seqlen, capacity, sink_tokens")
    global_end, local_end, frame_seqlen, capacity, sink_tokens = index.tolist()
    if frame_seqlen != fs:
        _fail(where, f"cache.index says {frame_seqlen} tokens per frame; a {width}x{height} stream of this model "
                     f"has {fs}")
    if sink_tokens != sink_frames * fs:
        _fail(where, f"cache.index says a {sink_tokens}-token sink; the stream settings make {sink_frames} frames x "
                     f"{fs} tokens")
    if not 0 <= local_end <= min(capacity, sc.cache_frames * fs) or local_end > global_end \
            or local_end % fs or global_end % fs:
        _fail(where, f"cache.index positions (global_end {global_end}, local_end {local_end}, capacity {capacity}) "
                     f"are not whole frames of {fs} tokens with 0 <= local_end <= global_end and local_end within "
                     f"the {sc.cache_frames}-frame cache")
    kv = (mc.num_layers, b, local_end, mc.num_heads, mc.head_dim)
    t.get("cache.k", kv, dtype, "cached keys [layers, B, local_end, heads, head_dim]")
    t.get("cache.v", kv, dtype, "cached values [layers, B, local_end, heads, head_dim]")
    if ("cache.cross_k" in tensors) != ("cache.cross_v" in tensors):
        _fail(where, "the state holds only one of cache.cross_k / cache.cross_v")
    for key in ("cache.cross_k", "cache.cross_v"):
        t.get(key, (mc.num_layers, b, mc.text_len, mc.num_heads, mc.head_dim), dtype,
              "text K/V [layers, B, text_len, heads, head_dim]", required=False)
    if "cache.rotated" in tensors:
        _fail(where, "its window keys are stored rotated (StreamConfig.rotate_keys_once, retired on 2026-12-07: it "
                     "measured no faster); this version cannot continue it: start a new stream")
    t.get("context", (b, _ANY, mc.text_dim), dtype, "prompt embedding [B, L, text_dim]")
    rng = t.get("rng", (_ANY,), torch.uint8, "the random generator's state")
    if s.get("rng_device", "cpu") == "cpu":
        if rng.numel() != _CPU_RNG_BYTES:
            _fail(where, f"tensor 'rng' holds {rng.numel()} bytes; a CPU generator's state is {_CPU_RNG_BYTES}")
        try:
            torch.Generator().set_state(rng)
        except RuntimeError as e:                   # "Invalid mt19937 state"
            _fail(where, f"tensor 'rng' is not a CPU generator state ({_clip(str(e), 60)})")
    t.get("recent_latents", (b, (1, sc.cache_frames), *lat), dtype, "clean latents of the cached frames",
          required=False)
    sink = t.get("sink_latents", (b, (1, max(sink_frames, 1)), *lat), dtype, "clean latents of the sink frames",
                 required=False)
    if sink is not None and not sink_frames:
        _fail(where, "tensor 'sink_latents' is present but the stream settings keep no sink")
    t.get("noise", (b, _ANY, *lat), dtype, "initial noise [B, F, 16, h, w]", required=False)
    frames = global_end // fs
    if any(e > frames for _, e in s.get("pieces", [])):
        _fail(where, f"session.pieces {_show(s['pieces'])} reach past the {frames} frames the cache has seen")
    stored = sink.shape[1] if sink is not None else 0
    if any(e > stored for _, e in s.get("sink_pieces", [])):
        _fail(where, f"session.sink_pieces {_show(s['sink_pieces'])} reach past the {stored} sink frames stored")
    _check_decoder(where, tensors)


def _check_decoder(where: str, tensors: dict[str, Tensor]) -> None:
    """The decode cache's counters are non-negative int64 scalars and its slots lie below `slots` (the tensors
    themselves belong to the VAE, which checks them when it loads them)."""
    slots = None
    for key, value in tensors.items():
        m = _DECODER_COUNTER.fullmatch(key)
        if m is None:
            continue
        if value.dtype != torch.int64 or value.dim() != 0 or int(value) < 0:
            _fail(where, f"tensor {key!r} must be a non-negative int64 scalar, got {_dtype_name(value.dtype)} "
                         f"{list(value.shape)}")
        if m.group(1) == "slots":
            slots = int(value)
    for key in tensors:
        m = _DECODER_SLOT.fullmatch(key)
        if m is not None and slots is not None and int(m.group(1)) >= slots:
            _fail(where, f"tensor {key!r} is past the decoder's {slots} cache slots")


def check_state_model(saved: SavedStream, cfg: WanConfig) -> None:
    """Refuse a state made by another model architecture (call it before anything is sized for the model)."""
    where, mine = saved.path or "the state", cfg.to_dict()
    theirs = saved.model_config().to_dict()
    if theirs == mine:
        return
    arch = f"dim {theirs['dim']} / {theirs['num_layers']} layers / {theirs['num_heads']} heads / text_dim " \
           f"{theirs['text_dim']}"
    diff = ", ".join(f"{k} {theirs[k]} vs {v}" for k, v in mine.items() if theirs[k] != v)
    raise ValueError(f"{where} was saved from a model with {arch} (another model architecture: {diff} in this "
                     "model): load the model it was made with")


def _check_compatible(session, saved: SavedStream, strict_config: bool) -> None:
    where = saved.path or "the state"
    check_state_model(saved, session.model.cfg)
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

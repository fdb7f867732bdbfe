"""Fuzz target for stream state files: bytes -> `load_stream_state` -> (when valid) a resumed session.

The property: whatever the bytes, loading ends in a one-line ValueError, or in a state whose accessors all work and
that resumes into a session of the tiny model (or is refused with a one-line ValueError); never another exception.
tests/test_state_fuzz.py feeds it structured inputs through hypothesis in CI. A long run with atheris:

    pip install atheris
    python tests/fuzz/fuzz_state_meta.py --seed-corpus corpus/     # real state files to start from
    python tests/fuzz/fuzz_state_meta.py corpus/ -max_total_time=600
"""
from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from stream_r1.config import StreamConfig, WanConfig  # noqa: E402
from stream_r1.stream import StreamSession  # noqa: E402
from stream_r1.stream_state import check_state_model, load_stream_state  # noqa: E402

HEIGHT, WIDTH = 32, 48
MAX_RESUME_PIXELS = 64 * 64 * 2
"""A valid state is resumed only up to this height x width x batch (and 64 cached frames, a 10,000-step grid): a
valid state may legitimately ask for caches larger than a fuzzing process should allocate."""
_cache: dict[str, Any] = {}


def tiny_model() -> torch.nn.Module:
    """WanConfig.tiny() with seed-0 weights (the model the seed states were made with)."""
    if "model" not in _cache:
        from stream_r1.wan.model import WanModel
        _cache["model"] = WanModel(WanConfig.tiny(), attention="sdpa").init_weights(seed=0).eval()
    return _cache["model"]


def seed_state(policy: str = "window_sink", chunks: int = 2) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a real state of the tiny model at 48x32: `chunks` chunks, part of the noise given."""
    from stream_r1.stream import StreamSession
    from stream_r1.stream_state import session_state

    g = torch.Generator().manual_seed(0)
    context, noise = torch.randn(1, 9, 32, generator=g), torch.randn(1, 2, 16, 4, 6, generator=g)
    session = StreamSession(tiny_model(), StreamConfig.for_policy(policy), context, height=HEIGHT, width=WIDTH,
                            seed=3, noise=noise)
    list(session.run(chunks))
    tensors, meta = session_state(session)
    meta["extra"] = "{}"
    return meta, tensors


def encode(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> bytes:
    """A safetensors file's bytes."""
    from safetensors.torch import save
    return save(tensors, metadata=meta)


def _scratch() -> Path:
    """The one file each input is written to (a folder removed when the process exits)."""
    if "dir" not in _cache:
        _cache["dir"] = Path(tempfile.mkdtemp(prefix="stream_r1_fuzz_"))
        atexit.register(shutil.rmtree, _cache["dir"], True)
    return _cache["dir"] / "state.safetensors"


def _one_line(e: Exception) -> None:
    assert "\n" not in str(e) and str(e), f"error message is not one line: {e!r}"


def test_one_input(data: bytes) -> None:
    path = _scratch()
    path.write_bytes(data)
    try:
        saved = load_stream_state(path)
    except ValueError as e:
        _one_line(e)
        return
    cfg = saved.config()                                    # a valid state: every accessor reads it
    assert saved.chunk_index >= 0 and saved.frames_done >= 0 and isinstance(saved.extra_tensors, dict)
    model = tiny_model()
    try:
        check_state_model(saved, model.cfg)
    except ValueError as e:
        _one_line(e)
        assert saved.model_config() != model.cfg
        return
    s = saved.session
    if s["height"] * s["width"] * s["batch"] > MAX_RESUME_PIXELS or cfg.cache_frames > 64 or \
            cfg.num_train_timesteps > 10_000:
        return
    try:
        with torch.inference_mode():
            session = StreamSession.from_state(model, saved)
    except ValueError as e:
        _one_line(e)
        return
    assert session.chunk_index == saved.chunk_index
    assert session.cache.local_end == int(saved.tensors["cache.index"][1])


def _write_seed_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for policy in ("window_sink", "full", "longlive"):
        (folder / f"{policy}.safetensors").write_bytes(encode(*seed_state(policy)))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--seed-corpus":
        _write_seed_corpus(Path(sys.argv[2]))
        sys.exit(0)
    import atheris

    tiny_model()                                            # built once, outside the timed runs
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()

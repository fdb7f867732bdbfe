"""Fuzz target: the safetensors header check (`stream_r1.weights_io.parse_safetensors_header`).

    pip install atheris && python tests/fuzz/fuzz_safetensors_header.py [corpus_dir] [-max_total_time=600]

tests/test_safetensors_header.py runs the same target on hypothesis-generated input in CI.
"""
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stream_r1.weights_io import WeightsFileError, parse_safetensors_header  # noqa: E402


def test_one_input(data: bytes) -> None:
    """Any bytes as a whole file: the check raises a one-line WeightsFileError, or accepts a header that the
    safetensors library loads with exactly the names, dtypes and shapes the check returned."""
    try:
        specs, meta = parse_safetensors_header(io.BytesIO(data), len(data), "fuzz input")
    except WeightsFileError as e:
        assert "\n" not in str(e), str(e)
        return
    from safetensors.torch import load

    loaded = load(data)
    assert {k: (t.dtype, tuple(t.shape)) for k, t in loaded.items()} == specs
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()

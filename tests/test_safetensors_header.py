"""Untrusted weight files: every safetensors header is checked in full before use, and nothing but a regular file
is ever opened (a FIFO would block forever)."""
from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import re
import threading
import time
from pathlib import Path

import pytest
import safetensors.torch  # noqa: F401  (imported once here, so the first hypothesis example is not slow)
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from stream_r1.checkpoint import inspect_checkpoint, load_dit_checkpoint, open_state_dict
from stream_r1.cli import main
from stream_r1.weights_io import (WeightsFileError, parse_safetensors_header, read_safetensors_header, read_tensors,
                                  torch_load)

_spec = importlib.util.spec_from_file_location("fuzz_safetensors_header",
                                               Path(__file__).parent / "fuzz" / "fuzz_safetensors_header.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)


def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def raw_file(path: Path, header: "dict | bytes", data: bytes = b"", length: int | None = None) -> Path:
    """A safetensors file written by hand: 8-byte little-endian header length, header, data."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes((len(body) if length is None else length).to_bytes(8, "little") + body + data)
    return path


A4 = entry("F32", [1], 0, 4)
MALFORMED = {  # id: (header, data bytes, what the message must say)
    "overlap": ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, 12,
                r"tensor 'b' data_offsets \[4, 12\] overlap tensor 'a', which ends at 8"),
    "same-offsets": ({"a": A4, "b": A4}, 4, r"tensor 'b' data_offsets \[0, 4\] overlap tensor 'a'"),
    "gap": ({"a": A4, "b": entry("F32", [1], 8, 12)}, 12, r"'b' data_offsets \[8, 12\] leave data bytes \[4, 8\)"),
    "gap-at-start": ({"a": entry("F32", [1], 4, 8)}, 8, r"leave data bytes \[0, 4\) unused"),
    "out-of-range": ({"a": A4, "b": entry("F32", [2], 4, 12)}, 4, r"incomplete.*header promises .* bytes"),
    "trailing-bytes": ({"a": A4}, 8, r"tensors cover 4 bytes but the data area holds 8"),
    "size-mismatch": ({"a": entry("F16", [3], 0, 8)}, 8, r"tensor 'a' is F16 \[3\] \(6 bytes\).*span 8 bytes"),
    "size-overflow": ({"a": entry("U8", [2**40, 2**40], 0, 0)}, 0, r"over 2\*\*64 bytes"),
    "duplicate-key": (b'{"a":' + json.dumps(A4).encode() + b',"a":' + json.dumps(A4).encode() + b"}", 4,
                      r"not valid JSON \(duplicate key 'a'\)"),
    "entry-not-dict": ({"a": [1, 2]}, 0, r"tensor 'a' is \[1, 2\], not an object with dtype, shape"),
    "entry-missing-key": ({"a": {"dtype": "F32", "shape": [1]}}, 4, r"not an object with dtype, shape and data_off"),
    "shape-string": ({"a": {**A4, "shape": "1"}}, 4, r"shape '1', not a list of non-negative integers"),
    "shape-negative": ({"a": {**A4, "shape": [-1]}}, 4, r"shape \[-1\], not a list"),
    "shape-float": ({"a": {**A4, "shape": [1.0]}}, 4, r"shape \[1.0\], not a list"),
    "shape-bool": ({"a": {**A4, "shape": [True]}}, 4, r"shape \[True\], not a list"),
    "offsets-reversed": ({"a": {**A4, "data_offsets": [4, 0]}}, 4, r"data_offsets \[4, 0\], not \[begin, end\]"),
    "offsets-three": ({"a": {**A4, "data_offsets": [0, 4, 8]}}, 4, r"not \[begin, end\]"),
    "offsets-string": ({"a": {**A4, "data_offsets": ["0", "4"]}}, 4, r"not \[begin, end\]"),
    "unknown-dtype": ({"a": {**A4, "dtype": "F99"}}, 4, r"dtype 'F99', which torch cannot hold"),
    "dtype-not-string": ({"a": {**A4, "dtype": 4}}, 4, r"dtype 4, which torch cannot hold"),
    "header-past-eof": (b"{}", 0, r"incomplete.*header of 1,000 bytes, file of 10 bytes"),
    "header-over-cap": (b"{}", 0, r"header length 1,000,000,000,000 exceeds 100,000,000 bytes"),
    "short-file": (b"", 0, r"incomplete.*only 3 bytes"),
    "not-utf8": (b'{"\xff":1}', 0, r"not valid JSON \('utf-8' codec can't decode"),
    "lone-surrogate": (b'{"\\ud800":' + json.dumps(A4).encode() + b"}", 4, r"not valid JSON.*surrogates"),
    "invalid-json": (b'{"a": }', 0, r"not valid JSON \(Expecting value"),
    "nan": (b'{"__metadata__": {"k": NaN}}', 0, r"not valid JSON \(NaN is not JSON\)"),
    "deep-nesting": (b'{"a":' + b"[" * 200_000, 0, r"not valid JSON"),
    "not-an-object": (b"[1]", 0, r"header does not start with '\{'"),
    "metadata-not-dict": ({"__metadata__": "x"}, 0, r"__metadata__ must map strings to strings, got 'x'"),
    "metadata-not-str": ({"__metadata__": {"k": 1}, "a": A4}, 4, r"__metadata__ must map strings to strings"),
}
LENGTHS = {"header-past-eof": 1000, "header-over-cap": 10**12}


def malformed(tmp_path: Path, case: str, suffix: str = ".safetensors") -> Path:
    header, data, _ = MALFORMED[case]
    f = tmp_path / f"{case}{suffix}"
    if case == "short-file":
        f.write_bytes(b"abc")
        return f
    return raw_file(f, header, bytes(data), LENGTHS.get(case))


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_header_is_named_before_any_use(tmp_path, case, capsys):
    f = malformed(tmp_path, case)
    want = MALFORMED[case][2]
    with pytest.raises(WeightsFileError, match=want) as e:
        read_safetensors_header(f)
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg
    assert "re-download or re-export the file" in msg or "download it again" in msg
    for use in (inspect_checkpoint, read_tensors, lambda p: load_dit_checkpoint(p, num_heads=2)):
        with pytest.raises(WeightsFileError, match=want):
            use(f)
    assert main(["inspect", str(f)]) == 2
    assert re.search(want, capsys.readouterr().err)


def test_valid_headers_are_accepted(tmp_path):
    sd = {"w": torch.ones(2, 3), "h": torch.zeros(4, dtype=torch.float16), "e": torch.zeros(0, 5),
          "s": torch.tensor(1.5), "f8": torch.zeros(3, dtype=torch.float8_e4m3fn), "b": torch.ones(2, dtype=torch.bool)}
    save_file(sd, tmp_path / "ok.safetensors", metadata={"format": "pt", "note": "ü"})
    specs, meta = read_safetensors_header(tmp_path / "ok.safetensors")
    assert specs == {k: (v.dtype, tuple(v.shape)) for k, v in sd.items()} and meta == {"format": "pt", "note": "ü"}
    save_file({}, tmp_path / "empty.safetensors")
    assert read_safetensors_header(tmp_path / "empty.safetensors") == ({}, {})
    # the spec allows trailing spaces after the JSON, and a null __metadata__
    raw_file(tmp_path / "pad.safetensors", json.dumps({"__metadata__": None, "a": A4}).encode() + b"   ", bytes(4))
    assert read_safetensors_header(tmp_path / "pad.safetensors") == ({"a": (torch.float32, (1,))}, {})


def test_shard_with_a_bad_header_is_named(tmp_path):
    save_file({"a": torch.zeros(1)}, tmp_path / "m-00001-of-00002.safetensors")
    bad = malformed(tmp_path, "overlap")
    bad.rename(tmp_path / "m-00002-of-00002.safetensors")
    index = {"weight_map": {"a": "m-00001-of-00002.safetensors", "b": "m-00002-of-00002.safetensors"}}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsFileError, match=r"m-00002-of-00002\.safetensors: tensor 'b'.*overlap"):
        open_state_dict(tmp_path)
    index["weight_map"]["b"] = "/etc/passwd"
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="shard file names in the same folder"):
        open_state_dict(tmp_path)


# ---- not a regular file ------------------------------------------------------------------------------------------
def finishes(fn, path: Path, timeout: float = 20.0) -> BaseException | None:
    """Run fn(path) in a thread; fail (instead of hanging) if it blocks, e.g. opening a FIFO nobody writes."""
    out: list[BaseException | None] = [None]

    def run():
        try:
            fn(path)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out[0] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        try:  # open the write end so the blocked reader sees EOF and the thread ends
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        pytest.fail(f"{getattr(fn, '__name__', fn)}({path.name}) blocked on a non-regular file")
    return out[0]


ENTRY_POINTS = {
    "inspect_checkpoint": inspect_checkpoint, "open_state_dict": open_state_dict, "read_tensors": read_tensors,
    "load_dit_checkpoint": lambda p: load_dit_checkpoint(p, num_heads=2), "torch_load": torch_load,
    "read_safetensors_header": read_safetensors_header, "cli inspect": lambda p: main(["inspect", str(p)]),
}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
@pytest.mark.parametrize("name", ["w.safetensors", "w.pt", "link.safetensors"])
@pytest.mark.parametrize("use", list(ENTRY_POINTS))
def test_fifo_is_refused_not_waited_on(tmp_path, name, use):
    fifo = tmp_path / ("fifo" if name.startswith("link") else name)
    os.mkfifo(fifo)
    path = tmp_path / name
    if path != fifo:
        path.symlink_to(fifo)
    err = finishes(ENTRY_POINTS[use], path)
    if use == "cli inspect":
        assert err is None    # main() printed the error and returned 2
        return
    assert isinstance(err, WeightsFileError) and "is a FIFO (named pipe), not a regular file" in str(err), err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_shard_or_index_is_refused(tmp_path):
    save_file({"a": torch.zeros(1)}, tmp_path / "m-00001-of-00002.safetensors")
    os.mkfifo(tmp_path / "m-00002-of-00002.safetensors")
    index = {"weight_map": {"a": "m-00001-of-00002.safetensors", "b": "m-00002-of-00002.safetensors"}}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(index))
    err = finishes(open_state_dict, tmp_path)
    assert isinstance(err, WeightsFileError) and "m-00002-of-00002.safetensors is a FIFO" in str(err), err
    (tmp_path / "m.safetensors.index.json").unlink()
    os.mkfifo(tmp_path / "m.safetensors.index.json")
    err = finishes(open_state_dict, tmp_path)
    assert isinstance(err, WeightsFileError) and "index.json is a FIFO" in str(err), err


def test_directory_and_device_are_refused(tmp_path):
    (tmp_path / "d.safetensors").mkdir()
    for fn in (read_tensors, torch_load, read_safetensors_header):
        with pytest.raises(WeightsFileError, match=r"d\.safetensors is a directory, not a regular file"):
            fn(tmp_path / "d.safetensors")
    if Path("/dev/null").exists():
        for fn in ENTRY_POINTS.values():
            err = finishes(fn, Path("/dev/null"))
            assert err is None or "is a character device, not a regular file" in str(err), err


# ---- property tests: any input ends in a header or a WeightsFileError, quickly ----------------------------------
FAST = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "I64": 8, "U8": 1, "BOOL": 1}
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.text(max_size=4),
                 st.lists(st.integers(-2, 2**64), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(0, 9)))


@FAST
@given(st.binary(max_size=1024))
def test_any_bytes(data):
    fuzz.test_one_input(data)


@FAST
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=12), st.binary(max_size=32))
def test_any_json_with_a_correct_length(value, data):
    body = json.dumps(value).encode()
    fuzz.test_one_input(len(body).to_bytes(8, "little") + body + data)


@st.composite
def near_valid(draw) -> tuple[str | None, bytes]:
    """A valid safetensors file, then (unless the mutation is None) one thing broken."""
    pairs, pos = [], 0
    for name in draw(st.lists(st.text(min_size=1, max_size=6), unique=True, max_size=4)):
        dtype, shape = draw(st.sampled_from(sorted(DTYPE_SIZES))), draw(st.lists(st.integers(0, 3), max_size=3))
        n = math.prod(shape) * DTYPE_SIZES[dtype]
        pairs.append((name, entry(dtype, shape, pos, pos + n)))
        pos += n
    pairs = draw(st.permutations(pairs))            # header order need not be data order
    meta = draw(st.none() | st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2))
    if meta is not None:
        pairs.insert(draw(st.integers(0, len(pairs))), ("__metadata__", meta))
    mutation = draw(st.sampled_from([None, "field", "entry", "duplicate", "offset", "data", "metadata"]))
    tensors = [i for i, (k, _) in enumerate(pairs) if k != "__metadata__"]
    if mutation in ("field", "entry", "duplicate", "offset") and not tensors:
        mutation = None
    if mutation == "field":
        i, key = draw(st.sampled_from(tensors)), draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        pairs[i] = (pairs[i][0], {**pairs[i][1], key: draw(JUNK | st.sampled_from(["F8_E5M2", "I32", "X"]))})
    elif mutation == "entry":
        i = draw(st.sampled_from(tensors))
        pairs[i] = (pairs[i][0], draw(JUNK))
    elif mutation == "duplicate":
        pairs.append(pairs[draw(st.sampled_from(tensors))])
    elif mutation == "offset":
        i, j = draw(st.sampled_from(tensors)), draw(st.integers(0, 1))
        offsets = list(pairs[i][1]["data_offsets"])
        offsets[j] = max(0, offsets[j] + draw(st.integers(-8, 8).filter(bool)))
        mutation = None if offsets == pairs[i][1]["data_offsets"] else mutation   # clamped at 0: unchanged
        pairs[i] = (pairs[i][0], {**pairs[i][1], "data_offsets": offsets})
    elif mutation == "data":
        pos, old = max(0, pos + draw(st.integers(-8, 8).filter(bool))), pos
        mutation = None if pos == old else mutation
    elif mutation == "metadata":
        pairs.append(("__metadata__", draw(JUNK)))
    body = ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}").encode()
    body += b" " * draw(st.integers(0, 3))          # the spec allows trailing spaces
    return mutation, len(body).to_bytes(8, "little") + body + bytes(pos)


@FAST
@given(near_valid())
def test_near_valid_headers(case):
    mutation, data = case
    fuzz.test_one_input(data)       # accepted headers load identically in safetensors itself
    if mutation is None:
        specs, _ = parse_safetensors_header(io.BytesIO(data), len(data))
    elif mutation in ("duplicate", "offset", "data"):
        with pytest.raises(WeightsFileError):
            parse_safetensors_header(io.BytesIO(data), len(data))


def test_hostile_header_is_rejected_quickly():
    shape = [2**63] * 500_000
    body = json.dumps({"a": {"dtype": "U8", "shape": shape, "data_offsets": [0, 0]}}).encode()
    t0 = time.perf_counter()
    with pytest.raises(WeightsFileError, match="over 2\\*\\*64 bytes"):
        parse_safetensors_header(io.BytesIO(len(body).to_bytes(8, "little") + body), 8 + len(body))
    assert time.perf_counter() - t0 < 5

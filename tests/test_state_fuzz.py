"""Stream state files under arbitrary input (hypothesis): raw bytes, arbitrary metadata and tensors, and real states
with fields, JSON values and tensors swapped out all end in a one-line ValueError or in a valid state that resumes,
each within a time bound. The checks live in the atheris target tests/fuzz/fuzz_state_meta.py, called here."""
import importlib.util
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stream_r1.stream_state import FORMAT, validate_state

_spec = importlib.util.spec_from_file_location("fuzz_state_meta", Path(__file__).parent / "fuzz" / "fuzz_state_meta.py")
target = importlib.util.module_from_spec(_spec)           # by path: no name clash, and pytest collects nothing there
sys.modules.setdefault("fuzz_state_meta", target)
_spec.loader.exec_module(target)

BOUND_S = 2.0
"""Per input: reading, checking and (when valid) resuming a state of a few hundred kB takes milliseconds."""
BOUNDED = settings(max_examples=120, deadline=timedelta(seconds=BOUND_S),
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SEEDS = {policy: target.seed_state(policy) for policy in ("window_sink", "full", "longlive")}

# ---- strategies -------------------------------------------------------------------------------------------------
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                         st.integers(min_value=-40, max_value=40).map(str))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4)), max_leaves=10)
SECTIONS = ("model", "stream_config", "session", "extra")
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32, torch.uint8,
          torch.bool]


@st.composite
def tensors(draw, like: torch.Tensor = None) -> torch.Tensor:
    """A small tensor of any dtype; with `like`, often the same shape or one size off."""
    if like is not None and draw(st.booleans()):
        shape = list(like.shape)
        if shape and draw(st.booleans()):
            i = draw(st.integers(0, len(shape) - 1))
            shape[i] = max(0, shape[i] + draw(st.sampled_from([-1, 1])))
    else:
        shape = draw(st.lists(st.integers(0, 4), max_size=5))
    dtype = draw(st.sampled_from(DTYPES if like is None or draw(st.booleans()) else [like.dtype]))
    values = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))) * 10
    return values.to(dtype)


@st.composite
def mutated_states(draw) -> bytes:
    """A real state with 1-3 edits: a JSON field set, deleted or given a random value; a metadata entry replaced;
    a tensor replaced, dropped or added."""
    meta, tens = SEEDS[draw(st.sampled_from(list(SEEDS)))]
    meta, tens = dict(meta), dict(tens)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["json", "json", "json", "meta", "tensor", "drop", "add"]))
        if kind == "json":
            section = draw(st.sampled_from(SECTIONS))
            try:
                obj = json.loads(meta[section])
            except ValueError:                          # an earlier edit replaced the whole entry
                continue
            if not isinstance(obj, dict):
                continue
            key = draw(st.one_of(st.sampled_from(sorted(obj) or ["x"]), st.text(max_size=8)))
            if draw(st.integers(0, 4)) == 0:
                obj.pop(key, None)
            else:
                obj[key] = draw(JSON_VALUES)
            meta[section] = json.dumps(obj)
        elif kind == "meta":
            key = draw(st.sampled_from(sorted(meta)))
            meta[key] = draw(st.one_of(st.text(max_size=30), JSON_VALUES.map(json.dumps)))
        elif kind == "tensor":
            key = draw(st.sampled_from(sorted(tens)))
            tens[key] = draw(tensors(tens[key]))
        elif kind == "drop":
            tens.pop(draw(st.sampled_from(sorted(tens))))
        else:
            name = draw(st.one_of(st.sampled_from(["sink_latents", "noise", "cache.rotated", "cache.cross_k",
                                                   "decoder.latent_frames", "decoder.slots", "decoder.cache.3",
                                                   "extra.tail_latents", "recent_latents"]), st.text(max_size=10)))
            tens[name] = draw(tensors())
    return target.encode(meta, tens)


def _timed(data: bytes) -> None:
    t0 = time.perf_counter()
    target.test_one_input(data)
    assert time.perf_counter() - t0 < BOUND_S


# ---- properties -----------------------------------------------------------------------------------------------------
def test_seed_states_are_valid_and_resume():
    for meta, tens in SEEDS.values():
        _timed(target.encode(meta, tens))


@BOUNDED
@given(data=mutated_states())
def test_edited_states_end_in_a_clean_error_or_a_valid_state(data):
    _timed(data)


@BOUNDED
@given(meta=st.dictionaries(st.sampled_from(["format", "version", "model", "fingerprint", "dtype", "stream_config",
                                             "session", "extra"]) | st.text(max_size=8),
                            st.text(max_size=40) | JSON_VALUES.map(json.dumps), max_size=9),
       tens=st.dictionaries(st.sampled_from(["cache.k", "cache.v", "cache.index", "context", "rng"]) |
                            st.text(min_size=1, max_size=10), tensors(), max_size=6),
       stamp=st.booleans())
def test_arbitrary_metadata_and_tensors_end_in_a_clean_error(meta, tens, stamp):
    if stamp:
        meta = {**meta, "format": FORMAT, "version": "2"}
    _timed(target.encode(meta, tens))


@BOUNDED
@given(data=st.binary(max_size=512))
@example(data=b"")
@example(data=(2 ** 63).to_bytes(8, "little") + b"{}")
@example(data=(20).to_bytes(8, "little") + b'{"__metadata__":{}}x')
def test_arbitrary_bytes_end_in_a_clean_error(data):
    _timed(data)


@BOUNDED
@given(meta=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=8),
       section=st.sampled_from(SECTIONS), value=JSON_VALUES)
def test_validate_state_takes_any_python_metadata(meta, section, value):
    """`validate_state` is public: metadata values that are not even strings are a clean error too."""
    meta = {**meta, "format": FORMAT, "version": "2", section: value}
    with pytest.raises(ValueError) as e:
        validate_state(meta, dict(SEEDS["window_sink"][1]))
    assert "\n" not in str(e.value)

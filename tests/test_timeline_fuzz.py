"""Property tests of the prompt timeline parser (stream_r1/timeline.py): whatever comes in (arbitrary text, JSON-like
structures of any shape, near-valid timelines, raw bytes through the atheris target tests/fuzz/fuzz_timeline.py),
the result is a valid Timeline or the parser's ValueError with a one-line message, within a time bound. Valid
timelines round-trip through to_text and to_json. Bounded for CI: 300 examples a test, 500 ms each at most.
"""
import importlib.util
import json
import string
import sys
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_r1.timeline import MAX_SECONDS, TRANSITIONS, Timeline, TimelineEntry

_spec = importlib.util.spec_from_file_location("fuzz_timeline", Path(__file__).parent / "fuzz" / "fuzz_timeline.py")
target = importlib.util.module_from_spec(_spec)           # by path: no name clash, and pytest collects nothing there
sys.modules.setdefault("fuzz_timeline", target)
_spec.loader.exec_module(target)

BOUNDED = settings(max_examples=300, deadline=timedelta(milliseconds=500),
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DEFAULTS = st.sampled_from(target.DEFAULTS)

# ---- strategies -------------------------------------------------------------------------------------------------
NUMBERS = st.one_of(st.integers(), st.integers(min_value=-10 ** 400, max_value=10 ** 400),
                    st.floats(allow_nan=True, allow_infinity=True), st.booleans())
NUMBER_TEXT = st.one_of(
    st.integers(min_value=0, max_value=10 ** 320).map(str), st.floats(min_value=0).map(repr),
    st.sampled_from(["1e308", "1e400", "-1", "nan", "NaN", "inf", "Infinity", "-0", "4_0", " 12 ", "٣.٥", "12.",
                     "10000000", "10000000.5", "10000001", "9007199254740993", "1" + "0" * 308, "9" * 400]))
SCALARS = st.one_of(st.none(), NUMBERS, NUMBER_TEXT, st.text(max_size=20))
KEYS = st.one_of(st.sampled_from(["seconds", "time", "chunk", "prompt", "transition", "format", "version",
                                  "default_transition", "base_prompt", "entries"]), st.text(max_size=8))
JSON_LIKE = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                         st.dictionaries(KEYS, inner, max_size=6)), max_leaves=40)
ENTRY = st.fixed_dictionaries({}, optional={"seconds": SCALARS, "time": SCALARS, "chunk": SCALARS,
                                            "prompt": st.one_of(st.text(max_size=12), SCALARS),
                                            "transition": st.one_of(st.sampled_from([*TRANSITIONS, "fade"]), SCALARS)})
DOCUMENT = st.one_of(
    st.lists(ENTRY, max_size=6),
    st.fixed_dictionaries({"entries": st.one_of(st.lists(ENTRY, max_size=6), JSON_LIKE)},
                          optional={"format": st.one_of(st.just("stream_r1.timeline"), SCALARS),
                                    "version": st.one_of(st.just(1), SCALARS, JSON_LIKE),
                                    "default_transition": st.one_of(st.sampled_from(TRANSITIONS), SCALARS),
                                    "base_prompt": st.one_of(st.text(max_size=12), SCALARS, JSON_LIKE)}))

SPACE = st.sampled_from([" ", "\t", "\xa0", "\u3000", "\u2003", "\x1f", "  " * 50])
BREAK = st.sampled_from(["\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028"])
TIME = st.one_of(NUMBER_TEXT, st.builds(lambda m, s: f"{m}:{s}", NUMBER_TEXT, NUMBER_TEXT),
                 st.builds(lambda n: f"@{n}", NUMBER_TEXT), st.text(alphabet="0123456789:.@s-e+", max_size=12))
TRANSITION = st.one_of(st.just(""), st.sampled_from([f" [{t}]" for t in (*TRANSITIONS, "FLUSH", "fade", " flush")]))
LINE = st.one_of(
    st.builds(lambda t, tr, sp, p: f"{t}{tr}{sp}:{sp}{p}", TIME, TRANSITION, SPACE, st.text(max_size=16)),
    st.builds(lambda sp, p: f"{sp}{p}", SPACE, st.text(max_size=16)),               # a continuation
    st.builds(lambda p: f"# {p}", st.text(max_size=8)), st.text(max_size=24))
NEAR_VALID = st.builds(lambda lines, breaks: "".join(line + b for line, b in zip(lines, breaks)),
                       st.lists(LINE, min_size=1, max_size=8), st.lists(BREAK, min_size=8, max_size=8))
BRACKETS = st.text(alphabet='[]{}",:\\0 ', max_size=200)                             # nesting and string scanning

PROMPT = st.text(alphabet=string.ascii_letters + string.digits + " ,.'!?:#[]@é😀\u3000", min_size=1, max_size=30) \
    .filter(lambda p: p.strip())


@st.composite
def valid_timelines(draw):
    """A timeline the text format can hold: strictly later times (or chunks), one-line prompts."""
    entries, t, chunk = [], 0.0, 0
    for i in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            t = draw(st.floats(min_value=t, max_value=min(t * 2 + 1, MAX_SECONDS)))
            entries.append(TimelineEntry(draw(PROMPT).strip(), seconds=t, transition=draw(
                st.sampled_from([None, *TRANSITIONS]))))
        else:
            chunk = draw(st.integers(chunk, chunk + 10 ** draw(st.integers(0, 6))))
            entries.append(TimelineEntry(draw(PROMPT).strip(), chunk=chunk))
    return Timeline(tuple(entries), draw(st.sampled_from(TRANSITIONS)))


# ---- properties -------------------------------------------------------------------------------------------------
@BOUNDED
@given(st.text(), DEFAULTS)
def test_any_text_is_a_timeline_or_a_clean_error(text, default):
    target.run(lambda: Timeline.parse(text, default))


@BOUNDED
@given(NEAR_VALID, DEFAULTS)
def test_near_valid_text_is_a_timeline_or_a_clean_error(text, default):
    target.run(lambda: Timeline.parse(text, default))


@BOUNDED
@given(BRACKETS)
def test_any_bracket_soup_is_a_timeline_or_a_clean_error(text):
    target.run(lambda: Timeline.parse("[" + text))


@BOUNDED
@given(st.one_of(JSON_LIKE, DOCUMENT), DEFAULTS)
def test_any_json_like_value_is_a_timeline_or_a_clean_error(value, default):
    target.run(lambda: Timeline.from_json(value, default))
    try:
        text = json.dumps(value)                     # NaN / Infinity / big ints as Python writes them
    except (ValueError, TypeError):
        return
    target.run(lambda: Timeline.parse(text, default))


@BOUNDED
@given(st.lists(st.one_of(st.text(max_size=20), LINE, SCALARS), max_size=4), DEFAULTS)
def test_any_cli_prompts_are_a_timeline_or_a_clean_error(prompts, default):
    target.run(lambda: Timeline.from_prompts(prompts, default))


@BOUNDED
@given(st.binary(max_size=400))
def test_the_atheris_target_passes_on_any_bytes(data):
    target.test_one_input(data)


@BOUNDED
@given(valid_timelines())
def test_valid_timelines_round_trip_through_text_and_json(tl):
    again = Timeline.parse(tl.to_text(), tl.default_transition)
    assert again.entries == tl.entries
    assert Timeline.parse(json.dumps(tl.to_json())) == tl
    target.check_timeline(tl)

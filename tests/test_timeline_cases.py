"""The timeline parser's shared cases: tests/fixtures/timeline_cases.json holds (text -> canonical JSON and events,
or the exact error) and is checked here against stream_r1/timeline.py and in web/tests/timeline.test.mjs against
web/lib/timeline.js, so the Python parser and the web widget's parser cannot drift apart.

The expected values are the Python parser's. After a deliberate change to it, or to add cases (inputs: name, text,
and optionally default_transition, frames_per_block, num_chunks, match="prefix" for messages whose tail is the
JSON library's own wording), rewrite them with

    python tests/test_timeline_cases.py --write

The fixture also records the parser's limits (MAX_TEXT_CHARS, ...): web/lib/timeline.js must export the same.
"""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "timeline_cases.json"
INPUTS = ("name", "text", "default_transition", "frames_per_block", "num_chunks", "match")
PREFIX = "timeline JSON is not valid: "

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from stream_r1 import timeline  # noqa: E402
from stream_r1.timeline import Timeline  # noqa: E402

LIMITS = ("MAX_TEXT_CHARS", "MAX_ENTRIES", "MAX_SECONDS", "MAX_CHUNK", "MAX_JSON_DEPTH")


def outcome(case: dict) -> dict:
    """What the Python parser makes of a case: {"timeline": to_json(), "events": [...]} or {"error": message}."""
    try:
        tl = Timeline.parse(case["text"], case.get("default_transition", "recache"))
        events = tl.events(case.get("frames_per_block", 3), case.get("num_chunks"))
    except ValueError as e:
        message = str(e)
        if case.get("match") == "prefix":
            assert message.startswith(PREFIX), message
            message = PREFIX
        return {"error": message}
    return {"timeline": tl.to_json(),
            "events": [{"chunk": e.chunk, "prompt": e.prompt, "transition": e.transition, "seconds": e.seconds}
                       for e in events]}


def load_cases() -> list[dict]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]


def format_values() -> list[float]:
    """Numbers whose f"{x:g}" and repr() the JS side must reproduce (times in messages): frame-aligned times,
    exact ties of the 6-digit rounding, and seeded random values over many magnitudes."""
    import random

    rng = random.Random(0)
    values = [k / 16 for k in (0, 1, 9, 201, 2877, 16002, 160002, 1600002, 16000002)]
    values += [x / 8 for x in (8001, 8003, 8005, 8007, 80001)] + [999999.5, 1234565.0, 0.1, 1e-5, 1e16, 2.5e-7]
    values += [rng.uniform(0, 10 ** rng.randint(-6, 9)) for _ in range(60)]
    return values


CASES = load_cases()
FORMATS = json.loads(FIXTURE.read_text(encoding="utf-8"))["formats"]
RECORDED_LIMITS = json.loads(FIXTURE.read_text(encoding="utf-8")).get("limits")


def test_cases_cover_both_outcomes_and_have_unique_names():
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))
    errors = [c for c in CASES if "error" in c]
    assert 20 <= len(errors) < len(CASES)
    assert all(("error" in c) != ("timeline" in c) for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_python_parser_gives_the_recorded_outcome(case):
    got = outcome(case)
    want = {k: case[k] for k in ("timeline", "events", "error") if k in case}
    assert got == want


def test_recorded_number_formats_are_pythons():
    assert FORMATS and all(f"{x:g}" == g and repr(x) == r for x, g, r in FORMATS)


def test_recorded_limits_are_the_parsers():
    assert RECORDED_LIMITS == {k: getattr(timeline, k) for k in LIMITS}


def test_every_error_is_one_line():
    for case in CASES:
        if "error" in case:
            assert len(case["error"].splitlines()) == 1, case["name"]


def write() -> None:
    cases = []
    for case in load_cases():
        inputs = {k: case[k] for k in INPUTS if k in case}
        cases.append({**inputs, **outcome(inputs)})
    data = {"about": "Shared cases of the prompt timeline parsers: stream_r1/timeline.py (tests/test_timeline_cases.py) "
                     "and web/lib/timeline.js (web/tests/timeline.test.mjs). Expected values are the Python "
                     "parser's; rewrite them with `python tests/test_timeline_cases.py --write`.",
            "cases": cases, "formats": [[x, f"{x:g}", repr(x)] for x in format_values()],
            "limits": {k: getattr(timeline, k) for k in LIMITS}}
    FIXTURE.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {FIXTURE.relative_to(ROOT)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    write()

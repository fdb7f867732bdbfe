"""Fuzz target for the prompt timeline parser (stream_r1/timeline.py): any input ends in a valid Timeline or in the
parser's ValueError with a one-line message, never another exception, a hang or a quadratic blow-up.

    pip install atheris
    python tests/fuzz/fuzz_timeline.py -max_total_time=600 [corpus_dir]

tests/test_timeline_fuzz.py runs the same checks under hypothesis (bounded examples and deadline) in CI.
The first byte picks the entry point: Timeline.parse, Timeline.from_text, Timeline.from_prompts (values split at
NUL) or Timeline.from_json of whatever Python's permissive json makes of the rest (NaN, inf, big ints included).
Undecodable bytes become lone surrogates (surrogateescape), so odd code points are covered too.
"""
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from stream_r1.timeline import (MAX_CHUNK, MAX_ENTRIES, MAX_SECONDS, MAX_TEXT_CHARS, TRANSITIONS,  # noqa: E402
                                Timeline)

MAX_MESSAGE_CHARS = 1000
"""A message quotes at most a few short cuts of the input (60-200 characters each)."""
DEFAULTS = (*TRANSITIONS, "fade")                 # the node's default_transition widget, plus one bad value


def check_error(err: ValueError) -> None:
    msg = str(err)
    assert msg and len(msg.splitlines()) == 1 and msg == msg.strip(), repr(msg[:200])
    assert len(msg) <= MAX_MESSAGE_CHARS, (len(msg), msg[:200])


def check_timeline(tl: Timeline) -> None:
    """Invariants of a parsed timeline, its JSON round trip and its chunk events."""
    assert isinstance(tl, Timeline) and (tl.entries or tl.base_prompt) and len(tl.entries) <= MAX_ENTRIES
    assert tl.default_transition in TRANSITIONS
    assert tl.base_prompt is None or (isinstance(tl.base_prompt, str) and tl.base_prompt.strip())
    for e in tl.entries:
        assert isinstance(e.prompt, str) and e.prompt.strip() and e.transition in (None, *TRANSITIONS)
        if e.chunk is None:
            assert isinstance(e.seconds, float) and 0 <= e.seconds <= MAX_SECONDS
        else:
            assert type(e.chunk) is int and 0 <= e.chunk <= MAX_CHUNK and e.seconds is None
    dumped = json.dumps(tl.to_json())
    if len(dumped) <= MAX_TEXT_CHARS:
        assert Timeline.parse(dumped) == tl
    for fpb, num_chunks in ((3, None), (1, 240), (4, 7)):
        try:
            events = tl.events(fpb, num_chunks)
        except ValueError as err:
            check_error(err)
            continue
        assert events[0].chunk == 0 and all(a.chunk < b.chunk for a, b in zip(events, events[1:]))
        assert all(math.isfinite(ev.seconds) and ev.transition in TRANSITIONS for ev in events)
        assert num_chunks is None or events[-1].chunk < num_chunks


def run(parse: Callable[[], Timeline]) -> None:
    """parse() must return a valid Timeline or raise a clean ValueError; anything else propagates (a finding)."""
    try:
        tl = parse()
    except ValueError as err:
        check_error(err)
        return
    check_timeline(tl)


def _loose_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):              # not the parser's business: nothing to test
        return None


def test_one_input(data: bytes) -> None:
    mode, pick = (data[0] % 4, data[0] // 4 % len(DEFAULTS)) if data else (0, 0)
    text = data[1:].decode("utf-8", "surrogateescape")
    default = DEFAULTS[pick]
    if mode == 0:
        run(lambda: Timeline.parse(text, default))
    elif mode == 1:
        run(lambda: Timeline.from_text(text, default))
    elif mode == 2:
        run(lambda: Timeline.from_prompts(text.split("\0"), default))
    else:
        value = _loose_json(text)
        run(lambda: Timeline.from_json(value, default))


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()

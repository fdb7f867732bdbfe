"""Prompt timelines: which prompt is in force from which chunk on, and how the stream switches to it.

A timeline is a list of entries (time, prompt, transition). Times are seconds of video at 16 fps, or a chunk
index; each entry is applied at the chunk boundary nearest to its time (chunk k starts at video frame 0 for
k = 0, else 4*fpb*k - 3: 0, 0.5625 s, 1.3125 s, 2.0625 s, ... for 3 latent frames per chunk), so switches happen
at exact chunk boundaries and never inside a chunk. Transitions (what happens to the KV cache at the switch):

* ``recache`` (LongLive-style, the default): the cached window frames are re-encoded under the new prompt
  (one clean pass per cached piece at t = context_noise, in order, at their own positions); the sink keeps
  its K/V; positions and indices are not rolled back.
* ``flush``: the cache keeps only the sink and the most recent latent frame; the rest of the window is dropped.
* ``none``: only the text (cross-attention) K/V change; the frame cache is kept as it is.

Data formats (both round-trip through `Timeline.parse` / `to_json` / `to_text`):

Text, one entry per line (the node's multiline editor)::

    # comments start with '#'
    0: a red fox walks through fresh snow
    12.5 [flush]: the fox starts to run
    1:30 [none]: close-up of the fox's face        (m:ss)
    @40: the fox rests                              (chunk index 40)
        indented lines continue the previous prompt

JSON (files for ``--timeline``, the web widget)::

    {"format": "stream_r1.timeline", "version": 1, "default_transition": "recache",
     "entries": [{"seconds": 0, "prompt": "a red fox ..."},
                 {"seconds": 12.5, "prompt": "the fox starts to run", "transition": "flush"},
                 {"chunk": 40, "prompt": "the fox rests", "transition": "none"}]}

A bare JSON list of entries is accepted too. Entries must be in time order, at least one chunk apart, and
inside the stream; the first must be at 0 unless a base prompt is given (CLI: a ``--prompt`` without a time).

Limits (the same in web/lib/timeline.js; any input past them is a ValueError that says what to write instead, so
a pasted or generated timeline can neither overflow a number nor make the parser or the widget's layout slow):
`MAX_TEXT_CHARS` characters of text, `MAX_ENTRIES` entries, times up to `MAX_SECONDS` seconds, chunk indices up to
`MAX_CHUNK`, JSON nested at most `MAX_JSON_DEPTH` deep, finite numbers only (JSON NaN / Infinity are refused).
Every parser entry point (`parse`, `from_text`, `from_json`, `from_prompts`, `load`) raises only ValueError
(`load` also FileNotFoundError), with a one-line message.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from torch import Tensor

TRANSITIONS: tuple[str, ...] = ("recache", "flush", "none")
FORMAT = "stream_r1.timeline"
VERSION = 1
FPS = 16

MAX_TEXT_CHARS = 1_000_000
"""Longest timeline text (characters): ~250x a 3-minute, five-prompt timeline, and still parsed in well under a
second, so the widget can re-parse on every keystroke."""
MAX_ENTRIES = 10_000
"""Most entries in one timeline (one switch per chunk for 2 hours of video at 3 latent frames per chunk)."""
MAX_SECONDS = 10_000_000.0
"""Latest switch time, seconds (about 115 days of video); keeps every derived frame and chunk number exact."""
MAX_CHUNK = 10_000_000
"""Largest chunk index an entry may name (`@N`)."""
MAX_JSON_DEPTH = 32
"""Deepest JSON nesting (a timeline needs 3: document, entries list, entry)."""

# One '\s*' before the optional transition and one after it inside the group: `\s*(?:[..])?\s*:` reads the same
# lines but backtracks quadratically on a long run of spaces that does not end in ':'.
_LINE = re.compile(r"^(?P<time>@\d+|(?:\d+:)?\d+(?:\.\d*)?s?)\s*(?:\[(?P<tr>[A-Za-z_]+)\]\s*)?:(?P<prompt>.*)$")
_INT = re.compile(r"[+-]?\d(?:_?\d)*")                # what int(str) accepts (after strip)
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|([][{}])', re.S)  # a string (maybe unclosed) | a bracket
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_EXACT = 2 ** 53                                      # floats above this are no longer whole-number exact


def chunk_start_frame(chunk: int, frames_per_block: int = 3) -> int:
    """First video frame of chunk `chunk` (the stream's first chunk has 1 + 4(fpb-1) frames, later ones 4*fpb)."""
    return 0 if chunk <= 0 else 4 * frames_per_block * chunk - 3


def chunk_start_seconds(chunk: int, frames_per_block: int = 3, fps: float = FPS) -> float:
    return chunk_start_frame(chunk, frames_per_block) / fps


def chunk_at_seconds(seconds: float, frames_per_block: int = 3, fps: float = FPS) -> int:
    """The chunk whose start is nearest to `seconds` (ties go to the later chunk)."""
    if seconds <= 0:
        return 0
    if not math.isfinite(seconds):
        raise ValueError(f"time {seconds!r} is not a finite number of seconds")
    frame = seconds * fps
    guess = max(0, math.floor((frame + 3) / (4 * frames_per_block)))
    best = min((abs(chunk_start_frame(k, frames_per_block) - frame), -k) for k in (guess - 1, guess, guess + 1)
               if k >= 0)
    return -best[1]


# ---- reading numbers and quoting values (mirrored in web/lib/timeline.js) ------------------------------------------
def _chunk_index(v: float) -> int:
    """A chunk index read as a float, as an int (truncated, as int() does); only exact values (|v| <= 2**53) pass."""
    if v != v:
        raise ValueError("chunk nan is not a whole number: write a chunk index, e.g. @40 or \"chunk\": 40")
    if v > _EXACT:
        raise ValueError(f"chunk {v!r} is too large: chunk indices go up to {MAX_CHUNK}")
    if v < -_EXACT:
        raise ValueError(f"chunk {v!r} must be >= 0")
    return int(v)


def _float(v: Any, whole: bool = False) -> Optional[float]:
    """float(v) of a JSON value (bool, int, float or numeric string; huge ints -> +-inf), or None when v is not a
    number; `whole`: strings must be integer literals, as int() takes them."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:                               # an int past the float range
            return math.inf if v > 0 else -math.inf
    if isinstance(v, str):
        s = v.strip()
        if whole and _INT.fullmatch(s) is None:
            return None
        try:
            return float(s)
        except ValueError:
            return None
    return None


def _num(x: Any) -> str:
    """str() of an int or float for a message (ints past 2**53 as their float, so no 4300-digit conversions)."""
    if isinstance(x, int) and not isinstance(x, bool) and abs(x) > _EXACT:
        x = float(x) if x.bit_length() <= 1024 else math.inf if x > 0 else -math.inf
    return repr(x) if isinstance(x, float) else str(x)


def _repr_pieces(v: Any) -> Iterable[str]:
    if isinstance(v, (list, tuple)):
        yield "[" if isinstance(v, list) else "("
        for i, x in enumerate(v):
            if i:
                yield ", "
            yield from _repr_pieces(x)
        yield "]" if isinstance(v, list) else ",)" if len(v) == 1 else ")"
    elif isinstance(v, dict):
        yield "{"
        for i, (k, x) in enumerate(v.items()):
            if i:
                yield ", "
            yield from _repr_pieces(k)
            yield ": "
            yield from _repr_pieces(x)
        yield "}"
    else:
        try:
            yield repr(v)
        except Exception:                                   # e.g. an int past sys.get_int_max_str_digits()
            yield f"<{type(v).__name__}>"


def _show(v: Any, limit: int = 60) -> str:
    """repr(v) cut to `limit` characters (then '...'): time and stack bounded, whatever the nesting depth."""
    out, n = [], 0
    for piece in _repr_pieces(v):                 # every nesting level opens with '[' / '{': depth <= limit
        out.append(piece)
        n += len(piece)
        if n > limit:
            break
    text = "".join(out)
    return text if len(text) <= limit else text[:limit] + "..."


def _parse_time(text: str) -> tuple[Optional[float], Optional[int]]:
    """'12.5' / '12.5s' / '1:30' -> (seconds, None); '@40' -> (None, 40). Huge values read as inf, never raise
    OverflowError; the entry's checks refuse them."""
    if text.startswith("@"):
        return None, _chunk_index(float(text[1:]))
    text = text.rstrip("s")
    if ":" in text:
        minutes, sec = text.split(":")
        return float(minutes) * 60 + float(sec), None
    return float(text), None


def _check_text(text: Any) -> None:
    if not isinstance(text, str):
        raise ValueError(f"a timeline is text (str), not {type(text).__name__}: write lines like '0: a red fox', "
                         "or JSON")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"the timeline text is longer than {MAX_TEXT_CHARS} characters: shorten it (fewer or "
                         "shorter prompts)")


def _check_json_depth(text: str) -> None:
    """Refuse nesting past MAX_JSON_DEPTH before json.loads (which would recurse) sees it: brackets outside strings."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return
    brackets = "".join(_JSON_TOKEN.findall(text))                   # strings match with an empty group
    if max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > MAX_JSON_DEPTH:   # all C loops
        raise ValueError(f"timeline JSON is nested more than {MAX_JSON_DEPTH} levels deep: a timeline "
                         "needs 3, {\"entries\": [{\"seconds\": 0, \"prompt\": \"...\"}]}")


class _NotANumber(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    """json.loads' hook for NaN, Infinity and -Infinity (not JSON, and refused by the browser's JSON.parse too)."""
    raise _NotANumber(f"{name} is not a number a timeline can use: write a finite number, e.g. \"seconds\": 12.5")


def _json_int(digits: str) -> "int | float":
    """JSON integers as the browser reads them: exact below 2**53, else the nearest float (no 4300-digit limit)."""
    v = int(digits) if len(digits) <= 17 else None
    return v if v is not None and abs(v) < _EXACT else float(digits)


def _fmt_seconds(s: float) -> str:
    return f"{s:g}"


def _text_seconds(s: float) -> str:
    """Seconds as the text format reads them back exactly: repr's shortest digits, never an exponent (1e-05 ->
    '0.00001', 1234567.5 -> '1234567.5'; f"{s:g}" would give '1e-05' and '1.23457e+06', which it cannot read)."""
    if s == 0:
        return "0"
    d = format(Decimal(repr(float(s))), "f")
    return d[:-2] if d.endswith(".0") else d


@dataclass(frozen=True)
class TimelineEntry:
    """One entry: a prompt from `seconds` (or from chunk `chunk`) on, reached with `transition`."""

    prompt: str
    seconds: Optional[float] = None
    chunk: Optional[int] = None
    transition: Optional[str] = None
    """None: the timeline's default transition."""

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ValueError(f"a timeline entry's prompt must be text (str), not {type(self.prompt).__name__}: write "
                             "the prompt in quotes")
        name = repr(self.prompt[:40])
        if (self.seconds is None) == (self.chunk is None):
            raise ValueError(f"timeline entry {name} needs exactly one of seconds or chunk")
        s, c = self.seconds, self.chunk
        if s is not None:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or s != s:
                raise ValueError(f"timeline entry {name}: time {_show(s)} is not a number of seconds: write e.g. 12.5")
            if s < 0:
                raise ValueError(f"timeline entry {name}: time {_num(s)} must be >= 0 seconds")
            if s > MAX_SECONDS:
                raise ValueError(f"timeline entry {name}: time {_num(s)} is too large: switch times go up to "
                                 f"{MAX_SECONDS:.0f} s (about 115 days)")
        if c is not None:
            if isinstance(c, bool) or not isinstance(c, int):
                raise ValueError(f"timeline entry {name}: chunk {_show(c)} is not a whole number: write e.g. 40")
            if c < 0:
                raise ValueError(f"timeline entry {name}: chunk {_num(c)} must be >= 0")
            if c > MAX_CHUNK:
                raise ValueError(f"timeline entry {name}: chunk {_num(c)} is too large: chunk indices go up to "
                                 f"{MAX_CHUNK}")
        if self.transition is not None and self.transition not in TRANSITIONS:
            raise ValueError(f"timeline entry {name}: transition {_show(self.transition)} is not one of "
                             f"{', '.join(TRANSITIONS)}")
        if not self.prompt.strip():
            raise ValueError(f"timeline entry at {self.where()} has an empty prompt")

    def where(self) -> str:
        return f"chunk {self.chunk}" if self.chunk is not None else f"{_fmt_seconds(self.seconds)} s"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"chunk": self.chunk} if self.chunk is not None else {"seconds": self.seconds}
        d["prompt"] = self.prompt
        if self.transition is not None:
            d["transition"] = self.transition
        return d


@dataclass(frozen=True)
class PromptEvent:
    """A resolved entry: from chunk `chunk` on, `prompt`, switched in with `transition`."""

    chunk: int
    prompt: str
    transition: str
    seconds: float
    """Stream time of the chunk boundary where it applies (the requested time rounded to a boundary)."""


_ENTRY_KEYS = frozenset({"seconds", "time", "chunk", "prompt", "transition"})


@dataclass(frozen=True)
class Timeline:
    entries: tuple[TimelineEntry, ...]
    default_transition: str = "recache"
    base_prompt: Optional[str] = None
    """Prompt in force before the first entry (only needed when the first entry is not at 0)."""

    def __post_init__(self) -> None:
        if self.default_transition not in TRANSITIONS:
            raise ValueError(f"transition {_show(self.default_transition)} is not one of {', '.join(TRANSITIONS)}")
        if self.base_prompt == "":
            object.__setattr__(self, "base_prompt", None)         # no base prompt, as to_json writes it
        if self.base_prompt is not None:
            if not isinstance(self.base_prompt, str):
                raise ValueError(f"the base prompt {_show(self.base_prompt)} is not text: write \"base_prompt\": "
                                 "\"a prompt\", or leave it out")
            if self.base_prompt and not self.base_prompt.strip():
                raise ValueError("the base prompt is blank: write a prompt, or leave it out")
        if len(self.entries) > MAX_ENTRIES:
            raise ValueError(f"the timeline has {len(self.entries)} entries; at most {MAX_ENTRIES} are allowed: "
                             "merge or drop some")
        if not self.entries and not self.base_prompt:
            raise ValueError("the timeline is empty: give at least one 'seconds: prompt' entry")

    # ---- parsing --------------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, default_transition: str = "recache") -> "Timeline":
        """Text format or JSON (detected by a leading '{' or '['). Any bad input raises ValueError (one line)."""
        _check_text(text)
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")):
            _check_json_depth(stripped)
            try:
                data = json.loads(stripped, parse_constant=_refuse_constant, parse_int=_json_int)
            except _NotANumber as e:
                raise ValueError(f"timeline JSON is not valid: {e}") from None
            except (ValueError, RecursionError) as e:       # JSONDecodeError is a ValueError
                raise ValueError(f"timeline JSON is not valid: {e}; fix the JSON, or write one 'seconds: prompt' "
                                 "per line") from None
            return cls.from_json(data, default_transition)
        return cls.from_text(text, default_transition)

    @classmethod
    def from_text(cls, text: str, default_transition: str = "recache") -> "Timeline":
        _check_text(text)
        entries: list[dict[str, Any]] = []
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.rstrip()
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace():
                if not entries:
                    raise ValueError(f"timeline line {n}: an indented line continues a prompt, but no entry "
                                     "came before it")
                entries[-1]["prompt"].append(line.strip())          # joined once below: linear, not quadratic
                continue
            m = _LINE.match(line.strip())
            if m is None:
                raise ValueError(f"timeline line {n}: {line.strip()[:60]!r} is not 'seconds: prompt' (e.g. "
                                 "'12.5: a fox runs', '12.5 [flush]: ...', '1:30: ...', '@40: ...')")
            if len(entries) == MAX_ENTRIES:
                raise ValueError(f"timeline line {n}: more than {MAX_ENTRIES} entries: merge or drop some")
            try:
                seconds, chunk = _parse_time(m["time"])
            except ValueError as err:
                raise ValueError(f"timeline line {n}: {err}") from None
            tr = m["tr"].lower() if m["tr"] else None
            entries.append(dict(seconds=seconds, chunk=chunk, transition=tr, prompt=[m["prompt"].strip()], line=n))
        out = []
        for e in entries:
            try:
                out.append(TimelineEntry(" ".join(e["prompt"]), e["seconds"], e["chunk"], e["transition"]))
            except ValueError as err:
                raise ValueError(f"timeline line {e['line']}: {err}") from None
        return cls(tuple(out), default_transition)

    @classmethod
    def from_json(cls, data: Any, default_transition: str = "recache") -> "Timeline":
        """A parsed JSON document (dict) or bare list of entries; any other value raises ValueError."""
        if isinstance(data, dict):
            fmt = data.get("format", FORMAT)
            if fmt != FORMAT:
                raise ValueError(f"not a timeline: format {_show(fmt)} (expected {FORMAT!r})")
            version = data.get("version", VERSION)
            v = _float(version, whole=True)
            if v is None or v != v:
                raise ValueError(f"timeline version {_show(version)} is not a whole number: write \"version\": "
                                 f"{VERSION}")
            if v >= VERSION + 1:
                raise ValueError(f"timeline version {_show(version)} is newer than this reader ({VERSION})")
            default_transition = data.get("default_transition", default_transition)
            base = data.get("base_prompt")
            items = data.get("entries")
        else:
            base, items = None, data
        if not isinstance(items, list):
            raise ValueError("timeline JSON needs a list of entries: {\"entries\": [{\"seconds\": 0, \"prompt\": "
                             "\"...\"}, ...]}")
        if len(items) > MAX_ENTRIES:
            raise ValueError(f"the timeline has {len(items)} entries; at most {MAX_ENTRIES} are allowed: merge or "
                             "drop some")
        out = []
        for i, item in enumerate(items, 1):
            try:
                out.append(cls._entry_from_json(item))
            except ValueError as err:
                raise ValueError(f"timeline entry {i}: {err}") from None
        return cls(tuple(out), default_transition, base)

    @staticmethod
    def _entry_from_json(item: Any) -> TimelineEntry:
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise ValueError(f"expected {{\"seconds\": ..., \"prompt\": \"...\"}}, got {_show(item)}")
        unknown = [k for k in item if not (isinstance(k, str) and k in _ENTRY_KEYS)]
        if unknown:
            unknown.sort(key=lambda k: (0, k, "") if isinstance(k, str) else (1, "", _show(k)))
            raise ValueError(f"unknown keys {_show(unknown, 200)}: use seconds (or time), chunk, prompt, transition")
        key = "seconds" if "seconds" in item else "time"
        raw_s, raw_c = item.get(key), item.get("chunk")
        seconds = None if raw_s is None else _float(raw_s)
        if raw_s is not None and seconds is None:
            raise ValueError(f"{key} {_show(raw_s)} is not a number: write the time in seconds, e.g. "
                             f"\"{key}\": 12.5")
        chunk = None
        if raw_c is not None:
            c = _float(raw_c, whole=True)
            if c is None:
                raise ValueError(f"chunk {_show(raw_c)} is not a whole number: write a chunk index, e.g. "
                                 "\"chunk\": 40")
            chunk = _chunk_index(c)
        return TimelineEntry(item["prompt"], seconds, chunk, item.get("transition"))

    @classmethod
    def load(cls, path: "str | Path", default_transition: str = "recache") -> "Timeline":
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"timeline file {p} does not exist")
        if p.stat().st_size > 4 * MAX_TEXT_CHARS:                 # UTF-8: at most 4 bytes a character
            raise ValueError(f"timeline file {p} is larger than {4 * MAX_TEXT_CHARS} bytes: a timeline is at most "
                             f"{MAX_TEXT_CHARS} characters")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"timeline file {p} is not UTF-8 text ({e.reason} at byte {e.start}): save it as "
                             "UTF-8") from None
        return cls.parse(text, default_transition)

    @classmethod
    def from_prompts(cls, prompts: Iterable[str], default_transition: str = "recache") -> "Timeline":
        """CLI `--prompt` values: 'seconds: prompt' entries; one value without a time is the base prompt."""
        entries, base = [], None
        for p in prompts:
            _check_text(p)
            m = _LINE.match(p.strip())
            if m is None:
                if base is not None:
                    raise ValueError(f"two prompts without a time ({base[:30]!r}, {p[:30]!r}): give times, "
                                     "e.g. --prompt '0: first' --prompt '12.5: second'")
                base = p
                continue
            seconds, chunk = _parse_time(m["time"])
            entries.append(TimelineEntry(m["prompt"].strip(), seconds, chunk, m["tr"].lower() if m["tr"] else None))
        return cls(tuple(entries), default_transition, base)

    # ---- output ---------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT, "version": VERSION, "default_transition": self.default_transition,
                             "entries": [e.to_dict() for e in self.entries]}
        if self.base_prompt:
            d["base_prompt"] = self.base_prompt
        return d

    def to_text(self) -> str:
        """The text format; parses back to the same entries when no prompt holds a line break."""
        lines = []
        for e in self.entries:
            t = f"@{e.chunk}" if e.chunk is not None else _text_seconds(e.seconds)
            lines.append(f"{t}{f' [{e.transition}]' if e.transition else ''}: {e.prompt}")
        return "\n".join(lines)

    @property
    def prompts(self) -> list[str]:
        """Distinct prompts in order of first use (what needs encoding)."""
        seen = dict.fromkeys([self.base_prompt] if self.base_prompt else [])
        seen.update(dict.fromkeys(e.prompt for e in self.entries))
        return list(seen)

    # ---- resolution -----------------------------------------------------------------------------------------
    def events(self, frames_per_block: int = 3, num_chunks: Optional[int] = None,
               fps: float = FPS) -> list[PromptEvent]:
        """Entries -> events at chunk boundaries, checked: in order, one chunk apart, inside the stream
        (`num_chunks` chunks, when given). The first event is at chunk 0."""
        events: list[PromptEvent] = []
        if self.base_prompt and (not self.entries or self._chunk(self.entries[0], frames_per_block, fps) > 0):
            events.append(PromptEvent(0, self.base_prompt, self.default_transition, 0.0))
        prev: Optional[TimelineEntry] = None
        for i, e in enumerate(self.entries, 1):
            k = self._chunk(e, frames_per_block, fps)
            if prev is not None:
                pk = self._chunk(prev, frames_per_block, fps)
                if (e.seconds is not None and prev.seconds is not None and e.seconds <= prev.seconds) or k < pk:
                    raise ValueError(f"timeline entry {i} ({e.where()}) does not come after entry {i - 1} "
                                     f"({prev.where()}): list entries in time order")
                if k == pk:
                    step = 4 * frames_per_block / fps
                    at = chunk_start_seconds(k, frames_per_block, fps)
                    raise ValueError(f"timeline entries {i - 1} ({prev.where()}) and {i} ({e.where()}) fall on the "
                                     f"same chunk boundary (chunk {k}, {at:g} s); entries must be at least one chunk "
                                     f"({step:g} s) apart")
            if num_chunks is not None and k >= num_chunks:
                end = (1 + 4 * (num_chunks * frames_per_block - 1)) / fps
                raise ValueError(f"timeline entry {i} ({e.where()}) is beyond the stream: it has {num_chunks} "
                                 f"chunks ({end:g} s); the last switch can be at "
                                 f"{chunk_start_seconds(num_chunks - 1, frames_per_block, fps):g} s")
            events.append(PromptEvent(k, e.prompt, e.transition or self.default_transition,
                                      chunk_start_seconds(k, frames_per_block, fps)))
            prev = e
        if events[0].chunk != 0:
            raise ValueError(f"the timeline starts at {self.entries[0].where()}, so no prompt covers the start: add "
                             "an entry at 0 (or a base prompt without a time)")
        return events

    @staticmethod
    def _chunk(e: TimelineEntry, fpb: int, fps: float) -> int:
        return e.chunk if e.chunk is not None else chunk_at_seconds(e.seconds, fpb, fps)


@dataclass
class PromptSchedule:
    """Resolved events plus their text embeddings, each distinct prompt encoded once (`encode` is called lazily,
    or `contexts` supplies them up front)."""

    events: list[PromptEvent]
    encode: Optional[Callable[[str], Tensor]] = None
    contexts: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.events or self.events[0].chunk != 0:
            raise ValueError("a prompt schedule needs an event at chunk 0")
        self._by_chunk = {e.chunk: e for e in self.events}

    @classmethod
    def build(cls, timeline: Timeline, frames_per_block: int, num_chunks: Optional[int] = None,
              encode: Optional[Callable[[str], Tensor]] = None,
              contexts: Optional[dict[str, Tensor]] = None) -> "PromptSchedule":
        return cls(timeline.events(frames_per_block, num_chunks), encode, dict(contexts or {}))

    def context(self, prompt: str) -> Tensor:
        if prompt not in self.contexts:
            if self.encode is None:
                raise ValueError(f"no text embedding for timeline prompt {prompt[:40]!r}")
            self.contexts[prompt] = self.encode(prompt)
        return self.contexts[prompt]

    def event_at(self, chunk: int) -> Optional[PromptEvent]:
        return self._by_chunk.get(chunk)

    def in_force(self, chunk: int) -> PromptEvent:
        """The latest event at or before `chunk`."""
        best = self.events[0]
        for e in self.events:
            if e.chunk <= chunk:
                best = e
        return best

    def to_json(self) -> list[dict[str, Any]]:
        return [dict(chunk=e.chunk, seconds=e.seconds, prompt=e.prompt, transition=e.transition) for e in self.events]

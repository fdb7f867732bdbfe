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
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from torch import Tensor

TRANSITIONS: tuple[str, ...] = ("recache", "flush", "none")
FORMAT = "stream_r1.timeline"
VERSION = 1
FPS = 16

_LINE = re.compile(r"^(?P<time>@\d+|(?:\d+:)?\d+(?:\.\d*)?s?)\s*(?:\[(?P<tr>[A-Za-z_]+)\])?\s*:(?P<prompt>.*)$")


def chunk_start_frame(chunk: int, frames_per_block: int = 3) -> int:
    """First video frame of chunk `chunk` (the stream's first chunk has 1 + 4(fpb-1) frames, later ones 4*fpb)."""
    return 0 if chunk <= 0 else 4 * frames_per_block * chunk - 3


def chunk_start_seconds(chunk: int, frames_per_block: int = 3, fps: float = FPS) -> float:
    return chunk_start_frame(chunk, frames_per_block) / fps


def chunk_at_seconds(seconds: float, frames_per_block: int = 3, fps: float = FPS) -> int:
    """The chunk whose start is nearest to `seconds` (ties go to the later chunk)."""
    if seconds <= 0:
        return 0
    frame = seconds * fps
    guess = max(0, math.floor((frame + 3) / (4 * frames_per_block)))
    best = min((abs(chunk_start_frame(k, frames_per_block) - frame), -k) for k in (guess - 1, guess, guess + 1)
               if k >= 0)
    return -best[1]


def _parse_time(text: str) -> tuple[Optional[float], Optional[int]]:
    """'12.5' / '12.5s' / '1:30' -> (seconds, None); '@40' -> (None, 40)."""
    if text.startswith("@"):
        return None, int(text[1:])
    text = text.rstrip("s")
    if ":" in text:
        minutes, sec = text.split(":")
        return int(minutes) * 60 + float(sec), None
    return float(text), None


def _fmt_seconds(s: float) -> str:
    return f"{s:g}"


@dataclass(frozen=True)
class TimelineEntry:
    """One entry: a prompt from `seconds` (or from chunk `chunk`) on, reached with `transition`."""

    prompt: str
    seconds: Optional[float] = None
    chunk: Optional[int] = None
    transition: Optional[str] = None
    """None: the timeline's default transition."""

    def __post_init__(self) -> None:
        if (self.seconds is None) == (self.chunk is None):
            raise ValueError(f"timeline entry {self.prompt[:40]!r} needs exactly one of seconds or chunk")
        if self.seconds is not None and (not math.isfinite(self.seconds) or self.seconds < 0):
            raise ValueError(f"timeline entry {self.prompt[:40]!r}: time {self.seconds} must be >= 0 seconds")
        if self.chunk is not None and self.chunk < 0:
            raise ValueError(f"timeline entry {self.prompt[:40]!r}: chunk {self.chunk} must be >= 0")
        if self.transition is not None and self.transition not in TRANSITIONS:
            raise ValueError(f"timeline entry {self.prompt[:40]!r}: transition {self.transition!r} is not one of "
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


@dataclass(frozen=True)
class Timeline:
    entries: tuple[TimelineEntry, ...]
    default_transition: str = "recache"
    base_prompt: Optional[str] = None
    """Prompt in force before the first entry (only needed when the first entry is not at 0)."""

    def __post_init__(self) -> None:
        if self.default_transition not in TRANSITIONS:
            raise ValueError(f"transition {self.default_transition!r} is not one of {', '.join(TRANSITIONS)}")
        if not self.entries and not self.base_prompt:
            raise ValueError("the timeline is empty: give at least one 'seconds: prompt' entry")

    # ---- parsing --------------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, default_transition: str = "recache") -> "Timeline":
        """Text format or JSON (detected by a leading '{' or '[')."""
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")):
            try:
                data = json.loads(stripped)
            except json.JSONDecodeError as e:
                raise ValueError(f"timeline JSON is not valid: {e}") from None
            return cls.from_json(data, default_transition)
        return cls.from_text(text, default_transition)

    @classmethod
    def from_text(cls, text: str, default_transition: str = "recache") -> "Timeline":
        entries: list[dict[str, Any]] = []
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.rstrip()
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace():
                if not entries:
                    raise ValueError(f"timeline line {n}: an indented line continues a prompt, but no entry "
                                     "came before it")
                entries[-1]["prompt"] += " " + line.strip()
                continue
            m = _LINE.match(line.strip())
            if m is None:
                raise ValueError(f"timeline line {n}: {line.strip()[:60]!r} is not 'seconds: prompt' (e.g. "
                                 "'12.5: a fox runs', '12.5 [flush]: ...', '1:30: ...', '@40: ...')")
            seconds, chunk = _parse_time(m["time"])
            tr = m["tr"].lower() if m["tr"] else None
            entries.append(dict(seconds=seconds, chunk=chunk, transition=tr, prompt=m["prompt"].strip(), line=n))
        out = []
        for e in entries:
            try:
                out.append(TimelineEntry(e["prompt"], e["seconds"], e["chunk"], e["transition"]))
            except ValueError as err:
                raise ValueError(f"timeline line {e['line']}: {err}") from None
        return cls(tuple(out), default_transition)

    @classmethod
    def from_json(cls, data: Any, default_transition: str = "recache") -> "Timeline":
        if isinstance(data, dict):
            if data.get("format", FORMAT) != FORMAT:
                raise ValueError(f"not a timeline: format {data.get('format')!r} (expected {FORMAT!r})")
            if int(data.get("version", VERSION)) > VERSION:
                raise ValueError(f"timeline version {data['version']} is newer than this reader ({VERSION})")
            default_transition = data.get("default_transition", default_transition)
            base = data.get("base_prompt")
            items = data.get("entries")
        else:
            base, items = None, data
        if not isinstance(items, list):
            raise ValueError("timeline JSON needs a list of entries: {\"entries\": [{\"seconds\": 0, \"prompt\": "
                             "\"...\"}, ...]}")
        out = []
        for i, item in enumerate(items, 1):
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                raise ValueError(f"timeline entry {i}: expected {{\"seconds\": ..., \"prompt\": \"...\"}}, got "
                                 f"{str(item)[:60]}")
            unknown = set(item) - {"seconds", "time", "chunk", "prompt", "transition"}
            if unknown:
                raise ValueError(f"timeline entry {i}: unknown keys {sorted(unknown)}")
            seconds = item.get("seconds", item.get("time"))
            try:
                out.append(TimelineEntry(item["prompt"], None if seconds is None else float(seconds),
                                         None if item.get("chunk") is None else int(item["chunk"]),
                                         item.get("transition")))
            except (TypeError, ValueError) as err:
                raise ValueError(f"timeline entry {i}: {err}") from None
        return cls(tuple(out), default_transition, base)

    @classmethod
    def load(cls, path: "str | Path", default_transition: str = "recache") -> "Timeline":
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"timeline file {p} does not exist")
        return cls.parse(p.read_text(encoding="utf-8"), default_transition)

    @classmethod
    def from_prompts(cls, prompts: Iterable[str], default_transition: str = "recache") -> "Timeline":
        """CLI `--prompt` values: 'seconds: prompt' entries; one value without a time is the base prompt."""
        entries, base = [], None
        for p in prompts:
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
        lines = []
        for e in self.entries:
            t = f"@{e.chunk}" if e.chunk is not None else _fmt_seconds(e.seconds)
            lines.append(f"{t}{f' [{e.transition}]' if e.transition else ''}: {e.prompt}")
        return "\n".join(lines)

    @property
    def prompts(self) -> list[str]:
        """Distinct prompts in order of first use (what needs encoding)."""
        seen = [self.base_prompt] if self.base_prompt else []
        for e in self.entries:
            if e.prompt not in seen:
                seen.append(e.prompt)
        return seen

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

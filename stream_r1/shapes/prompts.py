"""Vocabulary of the shapes world, prompt grammar and its parser.

Grammar (what :meth:`SceneAttrs.to_prompt` writes and :func:`parse_prompt` reads)::

    prompt  := shapes " on a " BACKGROUND [" gradient"] " background"
    shapes  := "a C S and a C S M"            (both shapes share motion M)
             | "a C S M" [" and a C S M"]
"""
from __future__ import annotations

import re
from dataclasses import dataclass

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.3, 1.0),
    "yellow": (1.0, 0.9, 0.1), "white": (1.0, 1.0, 1.0), "orange": (1.0, 0.55, 0.05),
    "purple": (0.6, 0.2, 0.85), "cyan": (0.1, 0.9, 0.9),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0), "dark blue": (0.05, 0.08, 0.3), "grey": (0.5, 0.5, 0.5),
    "white": (1.0, 1.0, 1.0), "dark green": (0.04, 0.22, 0.08),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond")
MOTIONS: dict[str, tuple[float, float]] = {  # unit direction (x right, y down); zero = in place
    "moving left": (-1.0, 0.0), "moving right": (1.0, 0.0), "moving up": (0.0, -1.0),
    "moving down": (0.0, 1.0), "bouncing": (0.0, 0.0), "rotating": (0.0, 0.0), "growing": (0.0, 0.0),
}


def gradient_bottom(name: str) -> tuple[float, float, float]:
    c = BACKGROUNDS[name]
    lum = 0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2]
    return tuple(x + 0.25 * (1 - x) for x in c) if lum < 0.35 else tuple(0.55 * x for x in c)


def background_rows(name: str, gradient: bool, height: int) -> list[tuple[float, float, float]]:
    """RGB of every row (vertical gradient from the named colour at the top)."""
    top = BACKGROUNDS[name]
    if not gradient:
        return [top] * height
    bot = gradient_bottom(name)
    out = []
    for i in range(height):
        t = (i + 0.5) / height
        out.append(tuple(a * (1 - t) + b * t for a, b in zip(top, bot)))
    return out


@dataclass(frozen=True)
class ShapeAttrs:
    color: str
    shape: str
    motion: str


@dataclass(frozen=True)
class SceneAttrs:
    shapes: tuple[ShapeAttrs, ...]
    background: str
    gradient: bool = False

    def to_prompt(self) -> str:
        bg = f"on a {self.background}{' gradient' if self.gradient else ''} background"
        motions = {s.motion for s in self.shapes}
        if len(motions) == 1:
            body = " and ".join(f"a {s.color} {s.shape}" for s in self.shapes) + f" {self.shapes[0].motion}"
        else:
            body = " and ".join(f"a {s.color} {s.shape} {s.motion}" for s in self.shapes)
        return f"{body} {bg}"


_C = "|".join(sorted(COLORS, key=len, reverse=True))
_S = "|".join(SHAPES)
_M = r"moving (?:to the )?(?:left|right|up|down)|bouncing(?: around)?|rotating|spinning|growing"
_B = "|".join(sorted(BACKGROUNDS, key=len, reverse=True))
_SHAPE_RE = re.compile(rf"^an? ({_C}) ({_S})(?: ({_M}))?$")
_BG_RE = re.compile(rf"^(.*) on an? ({_B})( gradient)? background$")


GRAMMAR_WORDS = ("a", "an", "and", "on", "background", "gradient", "to", "the", "around", "spinning", "gray")
"""Words of the prompt grammar besides the colours, shapes, motions and backgrounds."""


def vocabulary() -> set[str]:
    """Every word the shapes-world model was trained on."""
    words = set(GRAMMAR_WORDS) | set(SHAPES)
    for phrase in (*COLORS, *BACKGROUNDS, *MOTIONS):
        words.update(phrase.split())
    return words


def unknown_words(text: str) -> list[str]:
    """The words of `text` outside the shapes world's vocabulary, in order, each once (a plural 's' is forgiven):
    the model renders those prompts from the words it knows and ignores the rest."""
    known, out = vocabulary(), []
    for w in re.findall(r"[a-z]+", text.lower()):
        if w not in known and w.rstrip("s") not in known and w not in out:
            out.append(w)
    return out


def _norm_motion(m: str) -> str:
    m = m.replace("to the ", "").replace(" around", "")
    return "rotating" if m == "spinning" else m


def parse_prompt(text: str) -> SceneAttrs:
    """Inverse of :meth:`SceneAttrs.to_prompt` (tolerates case, 'gray', 'an', a final '.')."""
    t = " ".join(text.lower().replace("gray", "grey").strip().rstrip(".").split())
    m = _BG_RE.match(t)
    if not m:
        raise ValueError(f"cannot parse background in {text!r}")
    body, bg, grad = m.group(1), m.group(2), bool(m.group(3))
    parts = []
    for p in body.split(" and "):
        pm = _SHAPE_RE.match(p.strip())
        if not pm:
            raise ValueError(f"cannot parse shape phrase {p!r} in {text!r}")
        parts.append(list(pm.groups()))
    # a shape without its own motion takes the next one given (shared motion at the end)
    nxt = None
    for p in reversed(parts):
        if p[2] is None:
            p[2] = nxt
        nxt = p[2]
    if any(p[2] is None for p in parts):
        raise ValueError(f"no motion in {text!r}")
    return SceneAttrs(tuple(ShapeAttrs(c, s, _norm_motion(mo)) for c, s, mo in parts), bg, grad)

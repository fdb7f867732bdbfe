"""Deterministic "shapes world" renderer: pure torch, anti-aliased by supersampling.

A :class:`Scene` holds one or two shapes (colour, kind, motion, size, start position, velocity), a
background (plain or vertical gradient) and optional mid-video attribute changes (``events``).
``Scene.simulate()`` gives the per-frame state of every shape (:class:`Track`); :func:`render` turns a
scene into frames ``[T, 3, H, W]`` in [0, 1]. :func:`generate` = :func:`sample_scene` + :func:`render`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .prompts import COLORS, MOTIONS, SceneAttrs, ShapeAttrs, background_rows

__all__ = ["ShapeSpec", "Change", "Scene", "Track", "render", "generate"]


@dataclass
class ShapeSpec:
    shape: str                      # circle | square | triangle | star | diamond
    color: str                      # key of COLORS
    motion: str                     # key of MOTIONS
    size: float                     # radius in pixels (circumradius-ish)
    position: tuple[float, float]   # start centre (x, y), pixels; y grows downwards
    speed: float = 2.0              # px/frame for moving / bouncing
    bounce_dir: tuple[float, float] = (0.8, 0.6)  # unit direction of bouncing
    angle: float = 0.0              # start orientation, radians
    spin: float = 0.12              # rad/frame when rotating
    growth: float = 0.05            # log-size per frame when growing
    min_size: float = 8.0           # growing restarts from here after reaching max_size
    max_size: float = 28.0


@dataclass
class Change:
    frame: int        # first frame with the new value
    shape: int        # index into Scene.shapes
    attribute: str    # "color" | "motion" | "shape"
    value: str


@dataclass
class Track:
    """Per-frame state of one shape (lists of length num_frames)."""
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    vx: list[float] = field(default_factory=list)
    vy: list[float] = field(default_factory=list)
    angle: list[float] = field(default_factory=list)
    size: list[float] = field(default_factory=list)
    color: list[str] = field(default_factory=list)
    shape: list[str] = field(default_factory=list)
    motion: list[str] = field(default_factory=list)


@dataclass
class Scene:
    shapes: list[ShapeSpec]
    background: str = "black"
    gradient: bool = False
    num_frames: int = 16
    width: int = 128
    height: int = 128
    fps: int = 16
    events: list[Change] = field(default_factory=list)
    seed: int | None = None

    # ---- attributes / prompts -------------------------------------------------------------------
    def attributes_at(self, frame: int) -> SceneAttrs:
        cur = [dict(color=s.color, shape=s.shape, motion=s.motion) for s in self.shapes]
        for ev in sorted(self.events, key=lambda e: e.frame):
            if ev.frame <= frame:
                cur[ev.shape][ev.attribute] = ev.value
        return SceneAttrs(tuple(ShapeAttrs(**c) for c in cur), self.background, self.gradient)

    def prompt_at(self, frame: int) -> str:
        return self.attributes_at(frame).to_prompt()

    @property
    def prompt(self) -> str:
        return self.prompt_at(0)

    def segments(self) -> list[tuple[int, int, str]]:
        """[(start, end_exclusive, prompt)] : the prompt timeline of the clip."""
        cuts = sorted({0, *[e.frame for e in self.events if 0 < e.frame < self.num_frames]})
        bounds = cuts + [self.num_frames]
        return [(a, b, self.prompt_at(a)) for a, b in zip(bounds[:-1], bounds[1:])]

    # ---- dynamics -------------------------------------------------------------------------------
    def simulate(self) -> list[Track]:
        W, H = self.width, self.height
        tracks = []
        for i, spec in enumerate(self.shapes):
            evs = sorted([e for e in self.events if e.shape == i], key=lambda e: e.frame)
            tr = Track()
            x, y = spec.position
            size, angle = spec.size, spec.angle
            color, kind, motion = spec.color, spec.shape, spec.motion
            vx, vy = _velocity(motion, spec)
            if motion == "growing":
                size = max(spec.min_size, min(size, spec.max_size))
            for t in range(self.num_frames):
                changed = False
                for e in evs:
                    if e.frame == t:
                        if e.attribute == "color":
                            color = e.value
                        elif e.attribute == "shape":
                            kind = e.value
                        elif e.attribute == "motion":
                            motion, changed = e.value, True
                        else:
                            raise ValueError(f"unknown attribute {e.attribute!r}")
                if changed:
                    vx, vy = _velocity(motion, spec)
                if t > 0:  # advance from the previous frame's state
                    if motion == "rotating":
                        angle += spec.spin
                    elif motion == "growing":
                        size *= math.exp(spec.growth)
                        if size > spec.max_size:
                            size = spec.min_size
                    elif motion == "bouncing":
                        x, y = x + vx, y + vy
                        if (x - size < 0 and vx < 0) or (x + size > W and vx > 0):
                            vx = -vx
                        if (y - size < 0 and vy < 0) or (y + size > H and vy > 0):
                            vy = -vy
                    else:  # moving: wraps around (rendering is periodic)
                        x, y = (x + vx) % W, (y + vy) % H
                for name, val in (("x", x), ("y", y), ("vx", vx), ("vy", vy), ("angle", angle),
                                  ("size", size), ("color", color), ("shape", kind), ("motion", motion)):
                    getattr(tr, name).append(val)
            tracks.append(tr)
        return tracks


def _velocity(motion: str, spec: ShapeSpec) -> tuple[float, float]:
    if motion.startswith("moving "):
        dx, dy = MOTIONS[motion]
        return dx * spec.speed, dy * spec.speed
    if motion == "bouncing":
        return spec.bounce_dir[0] * spec.speed, spec.bounce_dir[1] * spec.speed
    return 0.0, 0.0


# ---- rasterisation ------------------------------------------------------------------------------
_STAR_INNER = 0.45
_C36, _S36 = math.cos(math.pi / 5), math.sin(math.pi / 5)


def _inside(kind: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """u, v: shape-local coordinates normalised by size (v points down). Returns a float mask."""
    if kind == "circle":
        m = u * u + v * v <= 1.0
    elif kind == "square":
        m = torch.maximum(u.abs(), v.abs()) <= 0.78
    elif kind == "diamond":
        m = u.abs() + v.abs() <= 1.05
    elif kind == "triangle":  # equilateral, apex up, circumradius 1, centroid at the origin
        m = (v <= 0.5) & (0.8660254 * u - 0.5 * v <= 0.5) & (-0.8660254 * u - 0.5 * v <= 0.5)
    elif kind == "star":  # five points, one up, outer radius 1, inner _STAR_INNER
        theta = torch.atan2(u, -v) % (2 * math.pi / 5)
        phi = torch.minimum(theta, 2 * math.pi / 5 - theta)
        rho = torch.sqrt(u * u + v * v)
        px, py = rho * torch.cos(phi), rho * torch.sin(phi)
        bx, by = _STAR_INNER * _C36, _STAR_INNER * _S36
        m = (bx - 1.0) * py - by * (px - 1.0) >= 0
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return m.to(u.dtype)


def render(scene: Scene, supersample: int = 4, chunk: int = 32, device="cpu",
           dtype=torch.float32) -> torch.Tensor:
    """Frames [T, 3, H, W] in [0, 1] for ``scene`` (deterministic: no randomness here)."""
    W, H, T, ss = scene.width, scene.height, scene.num_frames, int(supersample)
    tracks = scene.simulate()
    bg = torch.tensor(background_rows(scene.background, scene.gradient, H), dtype=dtype, device=device)
    frames = bg.t()[None, :, :, None].expand(T, 3, H, W).clone()  # [T, 3, H, W]
    xs = (torch.arange(W * ss, device=device, dtype=dtype) + 0.5) / ss
    ys = (torch.arange(H * ss, device=device, dtype=dtype) + 0.5) / ss
    for tr in tracks:
        for t0 in range(0, T, chunk):
            for kind in sorted(set(tr.shape[t0:t0 + chunk])):
                idx = [t for t in range(t0, min(T, t0 + chunk)) if tr.shape[t] == kind]
                par = torch.tensor([[tr.x[t], tr.y[t], tr.angle[t], tr.size[t]] for t in idx],
                                   dtype=dtype, device=device)
                cx, cy, a, s = (par[:, k, None, None] for k in range(4))
                dx = torch.remainder(xs[None, None, :] - cx + W / 2, W) - W / 2   # periodic
                dy = torch.remainder(ys[None, :, None] - cy + H / 2, H) - H / 2
                ca, sa = torch.cos(a), torch.sin(a)
                u = (ca * dx + sa * dy) / s
                v = (-sa * dx + ca * dy) / s
                cov = torch.nn.functional.avg_pool2d(_inside(kind, u, v)[:, None], ss)  # [n,1,H,W]
                col = torch.tensor([COLORS[tr.color[t]] for t in idx], dtype=dtype, device=device)
                sel = torch.tensor(idx, device=device)
                frames[sel] = frames[sel] * (1 - cov) + col[:, :, None, None] * cov
    return frames.clamp_(0, 1)


def generate(seed: int, num_frames: int = 16, **kwargs) -> tuple[torch.Tensor, Scene]:
    """(frames [T, 3, H, W], scene) for a seed; kwargs go to :func:`sample_scene`."""
    from .sample import sample_scene
    scene = sample_scene(seed, num_frames, **kwargs)
    return render(scene), scene

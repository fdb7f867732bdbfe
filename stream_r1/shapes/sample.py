"""Random scenes from a seed (python ``random.Random``: identical on every platform)."""
from __future__ import annotations

import math
import random

from .prompts import BACKGROUNDS, COLORS, MOTIONS, SHAPES, background_rows
from .render import Change, Scene, ShapeSpec


def _dist(a, b) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def allowed_colors(background: str, gradient: bool, min_dist: float = 0.4) -> list[str]:
    rows = background_rows(background, gradient, 3)
    return [c for c, v in COLORS.items() if min(_dist(v, r) for r in rows) >= min_dist]


def sample_scene(seed: int, num_frames: int = 16, width: int = 128, height: int = 128, fps: int = 16,
                 num_shapes: int | None = None, shapes=None, colors=None, motions=None,
                 backgrounds=None, gradient: bool | None = None, num_changes: int = 0,
                 change_attributes=("color", "motion")) -> Scene:
    """A random scene; every argument left as None is drawn from the seed. ``shapes``/``colors``/
    ``motions``/``backgrounds`` restrict the choices; ``num_changes`` adds mid-video events."""
    rng = random.Random(seed)
    scale = min(width, height) / 128
    n = num_shapes if num_shapes is not None else (2 if rng.random() < 0.3 else 1)
    bg = rng.choice(list(backgrounds or BACKGROUNDS))
    grad = gradient if gradient is not None else rng.random() < 0.4
    palette = [c for c in allowed_colors(bg, grad) if colors is None or c in colors]
    motion = rng.choice(list(motions or MOTIONS))
    cols = rng.sample(palette, n)
    kinds_ok = [s for s in (shapes or SHAPES) if not (motion == "rotating" and s == "circle")] or ["square"]
    specs = []
    lo, hi = (12, 20) if n == 1 else (10, 15)
    shared_speed = rng.uniform(1.5, 3.0) * scale
    for i in range(n):
        kind = rng.choice(kinds_ok)
        size = rng.uniform(lo, hi) * scale
        # region: the whole frame, or one half (split across the motion for two shapes)
        x0, x1, y0, y1 = 0.0, float(width), 0.0, float(height)
        if n == 2:
            if motion in ("moving left", "moving right"):
                y0, y1 = (0.0, height / 2) if i == 0 else (height / 2, float(height))
            else:
                x0, x1 = (0.0, width / 2) if i == 0 else (width / 2, float(width))
        m = size + 4 * scale
        x, y = rng.uniform(x0 + m, x1 - m), rng.uniform(y0 + m, y1 - m)
        spec = ShapeSpec(kind, cols[i], motion, size, (x, y), speed=shared_speed,
                         angle=0.0, spin=rng.choice([-1, 1]) * rng.uniform(0.08, 0.2))
        if motion.startswith("moving"):
            dx, dy = MOTIONS[motion]  # start on the side it leaves from
            if dx:
                x = (x0 + m + (x1 - x0 - 2 * m) * 0.3 * rng.random()) if dx > 0 else \
                    (x1 - m - (x1 - x0 - 2 * m) * 0.3 * rng.random())
            else:
                y = (y0 + m + (y1 - y0 - 2 * m) * 0.3 * rng.random()) if dy > 0 else \
                    (y1 - m - (y1 - y0 - 2 * m) * 0.3 * rng.random())
        elif motion == "bouncing":
            spec.speed = rng.uniform(3.5, 5.5) * scale
            ang = rng.uniform(0.25, 0.6) * rng.choice([-1, 1])
            sx = rng.choice([-1, 1])
            spec.bounce_dir = (sx * math.cos(ang), math.sin(ang))
            # place it so the first wall hit (x) comes about a third into the clip
            k = max(2, num_frames // 3)
            travel = abs(spec.bounce_dir[0]) * spec.speed * k
            x = (width - size - travel) if sx > 0 else (size + travel)
            x = min(max(x, size + 1), width - size - 1)
        elif motion == "growing":
            spec.max_size = (28 if n == 1 else 15) * scale
            spec.min_size = 8 * scale
            cycle = max(num_frames, 24)
            spec.growth = math.log(spec.max_size / spec.min_size) / cycle
            spec.size = spec.min_size * math.exp(rng.uniform(0, 0.2) * spec.growth * cycle)
            mm = spec.max_size + 4 * scale
            x, y = rng.uniform(x0 + mm, x1 - mm), rng.uniform(y0 + mm, y1 - mm)
        spec.position = (x, y)
        specs.append(spec)
    scene = Scene(specs, bg, grad, num_frames, width, height, fps, [], seed)
    for _ in range(num_changes):
        frame = rng.randint(max(1, num_frames // 4), max(1, 3 * num_frames // 4))
        i = rng.randrange(n)
        cur = scene.attributes_at(frame).shapes
        attr = rng.choice(list(change_attributes))
        if attr == "color":
            used = {s.color for s in cur}
            val = rng.choice([c for c in palette if c not in used])
        elif attr == "motion":
            opts = [mo for mo in (motions or MOTIONS) if mo != cur[i].motion
                    and not (mo == "rotating" and cur[i].shape == "circle")
                    and mo not in ("growing", "bouncing")]  # keep positions/sizes valid
            val = rng.choice(opts or ["moving right"])
        else:
            val = rng.choice([s for s in SHAPES if s != cur[i].shape
                              and not (s == "circle" and cur[i].motion == "rotating")])
        scene.events.append(Change(frame, i, attr, val))
    scene.events.sort(key=lambda e: e.frame)
    return scene

"""Drift telemetry: cheap per-chunk metrics from decoded frames, as callbacks, a JSON file and a plot image.

Every metric is computed on the chunk's frames scaled down (area) so the longest side is at most
`analysis_size` (128 px), in luma (Rec.601) unless said otherwise; frames are in [0, 1]. Per chunk:

| metric          | definition                                                                           | flags        |
|-----------------|--------------------------------------------------------------------------------------|--------------|
| color_drift     | L2 distance of the chunk's mean RGB from the first chunk's (0 .. 1.73)              | colour creep |
| exposure_drift  | mean luma minus the first chunk's (signed)                                           | exposure     |
| sharpness       | variance of the 3x3 Laplacian of luma, mean over the chunk's frames                  |              |
| sharpness_ratio | sharpness / the first chunk's                                                        | blur (< 1)   |
| flicker         | mean 1 - SSIM(f_t, f_t+1) of consecutive frames in the chunk (11x11 Gaussian window) | flicker      |
| motion          | mean |f_t+1 - f_t| inside the chunk (a flow-free motion magnitude)                   | freezing (0) |
| seam            | |first frame - previous chunk's last frame| / median in-chunk difference (this and   | visible join |
|                 | the previous chunk; floor 1/255); ~1 for smooth motion, > 1.5 a visible join         | (> 1.5)      |
| seam_diff       | the numerator above                                                                  |              |
| repetition      | max normalised cross-correlation of the chunk's 18x32 mean-luma thumbnail with those | loops (~1)   |
|                 | of earlier chunks, the last `repetition_gap` excluded; `repeat_of` names that chunk  |              |

The first chunk has no seam (null) and no repetition; a 1-frame chunk has no flicker/motion. Memory per chunk is
one small record plus one thumbnail (capped at `history` chunks), so telemetry of an unbounded stream stays flat.

`DriftPolicy` is an optional mitigation: when a metric crosses a threshold it asks the session to refresh its
sink (or re-cache / flush), at most once per `cooldown` chunks.

JSON (`DriftTelemetry.to_json`)::

    {"format": "stream_r1.telemetry", "version": 1, "fps": 16, "analysis_size": [h, w],
     "metrics": {name: description}, "chunks": [{"chunk": 0, "start_frame": 0, "frames": 9, "seconds": 0.0,
     "color_drift": 0.0, ...}, ...], "events": [{"chunk": 40, "action": "refresh_sink", ...}], "summary": {...}}
"""
from __future__ import annotations

import json
import math
import os
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FORMAT = "stream_r1.telemetry"
VERSION = 1
LUMA = (0.299, 0.587, 0.114)
LEVEL = 1.0 / 255.0
METRICS = {
    "color_drift": "L2 distance of the chunk's mean RGB from the first chunk's (0..1.73)",
    "exposure_drift": "mean luma minus the first chunk's",
    "sharpness": "variance of the 3x3 Laplacian of luma (analysis resolution)",
    "sharpness_ratio": "sharpness / the first chunk's (< 1: blurrier)",
    "flicker": "mean 1 - SSIM (11x11 Gaussian window, sigma 1.5) of consecutive frames inside the chunk",
    "motion": "mean absolute difference of consecutive frames inside the chunk",
    "seam": "difference across the chunk boundary / median in-chunk difference (> 1.5: visible join)",
    "seam_diff": "mean absolute difference across the chunk boundary",
    "repetition": "max normalised correlation of the chunk's thumbnail with earlier chunks' (~1: a loop)",
}
PLOT_PANELS = (("color_drift", "colour drift (L2 mean RGB vs first chunk)", None),
               ("sharpness_ratio", "sharpness vs first chunk", 1.0),
               ("flicker", "flicker (1 - SSIM)", None),
               ("seam", "seam score", 1.5),
               ("motion", "motion (mean |frame diff|)", None),
               ("repetition", "repetition (thumbnail correlation)", None))


def _frames(frames: Tensor) -> Tensor:
    """[B, T, 3, H, W] (first batch item) or [T, 3, H, W] in [0, 1] -> float32 [T, 3, H, W]."""
    if frames.dim() == 5:
        frames = frames[0]
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"telemetry takes frames [T, 3, H, W] or [B, T, 3, H, W], got {list(frames.shape)}")
    return frames.float()


def _ssim(a: Tensor, b: Tensor, win: int = 11) -> Tensor:
    """Mean SSIM per pair of luma images [N, 1, h, w]: Wang et al.'s Gaussian window (sigma 1.5, 11x11, valid
    region; C1 = 0.01^2, C2 = 0.03^2), shrunk to the largest odd size that fits a smaller image."""
    from kornia.metrics import ssim                                    # here, not at import: the pack imports this

    k = min(win, a.shape[-1], a.shape[-2])
    k -= 1 - k % 2                                                     # odd: 48x64 -> 11, 6x9 -> 5
    return ssim(a, b, k, padding="valid").mean(dim=(1, 2, 3))


_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


class DriftTelemetry:
    """Per-chunk drift metrics. Feed it decoded chunks (`update`, or `on_chunk` as a StreamSession callback);
    `callbacks` get each chunk's record (dict) as it is computed. With `session`, its prompt switches and cache
    operations are marked as events."""

    def __init__(self, *, analysis_size: int = 128, repetition_gap: int = 3, history: int = 1024, fps: float = 16,
                 callbacks: Iterable[Callable[[dict], Any]] = (), session: Any = None):
        self.analysis_size, self.repetition_gap, self.history, self.fps = analysis_size, repetition_gap, history, fps
        self.callbacks = list(callbacks)
        self.records: list[dict] = []
        self.events: list[dict] = []
        self._ref: Optional[dict] = None
        self._prev_last: Optional[Tensor] = None
        self._prev_diffs: list[float] = []
        self._thumbs: deque = deque(maxlen=history)
        self._next_chunk, self._next_frame = 0, 0
        self.size: Optional[tuple[int, int]] = None
        self.session, self._switches_seen = session, 0

    # ---- feeding ------------------------------------------------------------------------------------------
    def on_chunk(self, chunk) -> Optional[dict]:
        """StreamSession `on_chunk` callback (chunks without frames are skipped)."""
        switches = getattr(self.session, "switches", [])
        for sw in switches[self._switches_seen:]:
            if sw["chunk"] > 0 or sw["action"] == "prefill":
                self.mark(**sw)
        self._switches_seen = len(switches)
        return self.update(chunk.frames, chunk=chunk.index) if chunk.frames is not None else None

    @torch.no_grad()
    def update(self, frames: Tensor, chunk: Optional[int] = None) -> dict:
        """Metrics of one chunk's frames ([T, 3, H, W] or [B, T, 3, H, W] in [0, 1]); returns its record."""
        x = _frames(frames)
        t = x.shape[0]
        if t == 0:
            raise ValueError("telemetry got a chunk without frames")
        x = self._downsample(x)
        y = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)          # [T, 1, h, w]
        rgb = x.mean(dim=(0, 2, 3))
        luma = float(y.mean())
        lap = F.conv2d(y, _LAPLACE.to(y), padding=0) if min(y.shape[-2:]) >= 3 else torch.zeros_like(y)
        sharp = float(lap.flatten(1).var(dim=1, unbiased=False).mean())
        if self._ref is None:
            self._ref = dict(rgb=rgb.cpu(), luma=luma, sharpness=sharp)
        ref = self._ref
        rec: dict[str, Any] = dict(chunk=self._next_chunk if chunk is None else chunk, start_frame=self._next_frame,
                                   frames=t, seconds=self._next_frame / self.fps)
        rec["color_drift"] = float((rgb.cpu() - ref["rgb"]).norm())
        rec["exposure_drift"] = luma - ref["luma"]
        rec["sharpness"] = sharp
        rec["sharpness_ratio"] = sharp / ref["sharpness"] if ref["sharpness"] > 0 else None
        diffs: list[float] = []
        if t > 1:
            d = (y[1:] - y[:-1]).abs().mean(dim=(1, 2, 3))
            diffs = [float(v) for v in d]
            rec["flicker"] = float((1 - _ssim(y[:-1], y[1:])).mean())
            rec["motion"] = float(d.mean())
        else:
            rec["flicker"] = rec["motion"] = None
        if self._prev_last is not None and self._prev_last.shape == y[0].shape:
            seam = float((y[0] - self._prev_last.to(y)).abs().mean())
            within = sorted(diffs + self._prev_diffs)
            median = within[len(within) // 2] if within else 0.0
            rec["seam_diff"] = seam
            rec["seam"] = seam / max(median, LEVEL)
        else:
            rec["seam_diff"] = rec["seam"] = None
        thumb = F.adaptive_avg_pool2d(y.mean(0, keepdim=True), (min(18, y.shape[-2]), min(32, y.shape[-1])))
        thumb = thumb.flatten().cpu()
        thumb = thumb - thumb.mean()
        rep, rep_of = None, None
        candidates = [(c, th) for c, th in self._thumbs if c <= rec["chunk"] - self.repetition_gap]
        if candidates:
            bank = torch.stack([th for _, th in candidates]).double()               # fresh memory: reproducible
            norms = bank.norm(dim=1) * thumb.double().norm()
            sims = torch.where(norms > 1e-8, (bank @ thumb.double()) / norms.clamp_min(1e-8), torch.zeros_like(norms))
            best = int(sims.argmax())
            rep, rep_of = float(sims[best]), candidates[best][0]
        rec["repetition"], rec["repeat_of"] = rep, rep_of
        self._thumbs.append((rec["chunk"], thumb))
        self._prev_last, self._prev_diffs = y[-1].clone(), diffs
        self._next_chunk, self._next_frame = rec["chunk"] + 1, self._next_frame + t
        self.records.append(rec)
        for cb in self.callbacks:
            cb(rec)
        return rec

    def _downsample(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        s = min(1.0, self.analysis_size / max(h, w))
        size = (max(1, round(h * s)), max(1, round(w * s)))
        if self.size is None:
            self.size = size
        return x if size == (h, w) else F.interpolate(x, size=size, mode="area")

    def mark(self, chunk: int, action: str, **info: Any) -> None:
        """Note an event (a prompt switch, a policy action) shown in the JSON and the plot."""
        self.events.append(dict(chunk=chunk, action=action, **info))

    # ---- results ------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        out: dict[str, Any] = {"chunks": len(self.records),
                               "frames": sum(r["frames"] for r in self.records)}
        for name in METRICS:
            vals = [r[name] for r in self.records if r.get(name) is not None]
            if vals:
                out[name] = dict(first=vals[0], last=vals[-1], max=max(vals), mean=sum(vals) / len(vals))
        seams = [r["seam"] for r in self.records if r.get("seam") is not None]
        out["visible_seams"] = sum(s > 1.5 for s in seams)
        return out

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "fps": self.fps,
                "analysis_size": list(self.size) if self.size else None, "metrics": METRICS,
                "chunks": self.records, "events": self.events, "summary": self.summary()}

    def save(self, path: "str | os.PathLike", plot: "str | os.PathLike | None | bool" = True) -> Path:
        """Write the JSON (atomically) and, unless `plot` is False, the plot image (default: same name, .png)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)
        if plot is not False:
            from PIL import Image

            target = path.with_suffix(".png") if plot is True or plot is None else Path(plot)
            Image.fromarray(self.plot()).save(target)
        return path

    def plot(self, width: int = 960, panel_height: int = 110) -> np.ndarray:
        """The metrics over stream time as an RGB image [H, W, 3] uint8 (PIL only)."""
        return plot_records(self.records, self.events, width=width, panel_height=panel_height, fps=self.fps)

    # ---- resume -------------------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Tensor], dict]:
        """(tensors, JSON-able dict) to carry the references across a saved stream state."""
        tensors: dict[str, Tensor] = {}
        if self._ref is not None:
            tensors["ref_rgb"] = self._ref["rgb"]
        if self._prev_last is not None:
            tensors["prev_last"] = self._prev_last.cpu()
        if self._thumbs:
            tensors["thumbs"] = torch.stack([th for _, th in self._thumbs])
        meta = dict(records=self.records, events=self.events, next_chunk=self._next_chunk,
                    next_frame=self._next_frame, prev_diffs=self._prev_diffs,
                    thumb_chunks=[c for c, _ in self._thumbs], size=self.size,
                    ref=None if self._ref is None else dict(luma=self._ref["luma"], sharpness=self._ref["sharpness"]))
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict) -> None:
        self.records, self.events = list(meta.get("records", [])), list(meta.get("events", []))
        self._next_chunk, self._next_frame = int(meta.get("next_chunk", 0)), int(meta.get("next_frame", 0))
        self._prev_diffs = list(meta.get("prev_diffs", []))
        self.size = tuple(meta["size"]) if meta.get("size") else None
        self._ref = None if meta.get("ref") is None else dict(rgb=tensors["ref_rgb"].float(), **meta["ref"])
        self._prev_last = tensors.get("prev_last")
        self._thumbs = deque(zip(meta.get("thumb_chunks", []), tensors["thumbs"].unbind(0)) if "thumbs" in tensors
                             else [], maxlen=self.history)


def analyze(frames: Tensor, *, first_chunk_frames: int = 9, chunk_frames: int = 12, **kw: Any) -> DriftTelemetry:
    """Telemetry of a finished video [T, 3, H, W] in [0, 1], cut into chunks the way a stream makes them
    (Stream-R1: 9 frames, then 12)."""
    if first_chunk_frames < 1 or chunk_frames < 1:
        raise ValueError("chunk sizes must be >= 1 frame")
    x = _frames(frames)
    tel = DriftTelemetry(**kw)
    start, size = 0, first_chunk_frames
    while start < x.shape[0]:
        tel.update(x[start:start + size])
        start, size = start + size, chunk_frames
    return tel


class DriftPolicy:
    """Mitigation: when `metric` exceeds `threshold`, call `session.<action>()` (refresh_sink, recache or flush)
    before the next chunk, at most once every `cooldown` chunks. Use as a DriftTelemetry callback."""

    ACTIONS = ("refresh_sink", "recache", "flush")

    def __init__(self, session, *, metric: str = "color_drift", threshold: float = 0.08,
                 action: str = "refresh_sink", cooldown: int = 4, telemetry: Optional[DriftTelemetry] = None):
        if action not in self.ACTIONS:
            raise ValueError(f"drift action {action!r} is not one of {', '.join(self.ACTIONS)}")
        if metric not in METRICS:
            raise ValueError(f"drift metric {metric!r} is not one of {', '.join(METRICS)}")
        self.session, self.metric, self.threshold, self.action = session, metric, threshold, action
        self.cooldown, self.telemetry = cooldown, telemetry
        self._last = -math.inf
        self.fired: list[int] = []

    def __call__(self, record: dict) -> Optional[str]:
        value = record.get(self.metric)
        if value is None or abs(value) <= self.threshold or record["chunk"] - self._last < self.cooldown:
            return None
        done = getattr(self.session, self.action)()
        if done is False:
            return None
        self._last = record["chunk"]
        self.fired.append(record["chunk"])
        log = getattr(self.session, "switches", None)
        if log and log[-1].get("action") == self.action:
            log[-1].update(metric=self.metric, value=value)           # marked by telemetry following the session
        if self.telemetry is not None and getattr(self.telemetry, "session", None) is not self.session:
            self.telemetry.mark(record["chunk"] + 1, self.action, metric=self.metric, value=value)
        return self.action


# ---- plotting (Pillow only) ----------------------------------------------------------------------------------------
def plot_records(records: list[dict], events: list[dict] = (), *, width: int = 960, panel_height: int = 110,
                 fps: float = 16) -> np.ndarray:
    from PIL import Image, ImageDraw

    left, right, top_pad, bottom_pad = 56, 12, 18, 14
    panels = PLOT_PANELS
    img = Image.new("RGB", (width, panel_height * len(panels) + 22), (255, 255, 255))
    d = ImageDraw.Draw(img)
    xs = [r["seconds"] for r in records]
    t_max = max(xs[-1] if xs else 0.0, 1e-6)
    pw = width - left - right

    def px(t: float) -> float:
        return left + pw * (t / t_max)

    for i, (name, title, ref_line) in enumerate(panels):
        y0 = i * panel_height
        top, bottom = y0 + top_pad, y0 + panel_height - bottom_pad
        vals = [(r["seconds"], r.get(name)) for r in records]
        got = [v for _, v in vals if v is not None and math.isfinite(v)]
        lo = min(got + ([ref_line] if ref_line is not None else []), default=0.0)
        hi = max(got + ([ref_line] if ref_line is not None else []), default=1.0)
        lo = min(lo, 0.0)
        if hi - lo < 1e-9:
            hi = lo + 1.0

        def py(v: float) -> float:
            return bottom - (bottom - top) * (v - lo) / (hi - lo)

        d.rectangle([left, top, width - right, bottom], outline=(180, 180, 180))
        last = f"  last {got[-1]:.4g}  max {max(got):.4g}" if got else "  (no data)"
        d.text((left, y0 + 3), title + last, fill=(0, 0, 0))
        d.text((4, top - 4), f"{hi:.3g}", fill=(90, 90, 90))
        d.text((4, bottom - 8), f"{lo:.3g}", fill=(90, 90, 90))
        if ref_line is not None:
            d.line([left, py(ref_line), width - right, py(ref_line)], fill=(230, 150, 150))
        for ev in events:
            match = [r["seconds"] for r in records if r["chunk"] == ev["chunk"]]
            if match:
                d.line([px(match[0]), top, px(match[0]), bottom], fill=(140, 170, 230))
        pts = [(px(t), py(v)) for t, v in vals if v is not None and math.isfinite(v)]
        if len(pts) > 1:
            d.line(pts, fill=(20, 90, 200), width=2)
        for p in pts if len(pts) <= 64 else []:
            d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=(20, 90, 200))
    d.text((left, img.height - 16), f"stream time (s), 0 .. {t_max:.1f}", fill=(0, 0, 0))
    return np.asarray(img, dtype=np.uint8).copy()

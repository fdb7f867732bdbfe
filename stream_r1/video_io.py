"""Incremental video files: encode frames as they arrive, so a long stream has flat memory and a killed
job still leaves a playable file.

`VideoWriter` writes straight to the final path through PyAV. `.mp4`/`.mov` are fragmented MP4
(`frag_keyframe+empty_moov+default_base_moof`) with a keyframe, and so a fragment, every
`keyframe_interval` frames; `.mkv`/`.webm` close a Matroska cluster at the same interval. The encoder is
set to zero frame delay (x264 `tune=zerolatency`, VP9 `lag-in-frames=0`) and the muxer flushes every
packet, so after a SIGKILL the file on disk holds every frame up to the last completed fragment: at
most `keyframe_interval` frames (1 s at 16 fps) are lost.

Size: fixed by the first `write`. yuv420p needs even sizes, so an odd height or width is padded by one
row / column repeating the last (the file is then 1 px larger than the frames; `probe` reports the
padded size).
"""
from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
import torch

logger = logging.getLogger(__name__)

Layout = Literal["thwc", "tchw"]
_CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
_FRAGMENTED_MP4 = "frag_keyframe+empty_moov+default_base_moof"
_INSTALL_HINT = "install PyAV's binary wheels, which bundle libx264: `pip install --force-reinstall av`"


def _has_encoder(name: str) -> bool:
    try:
        av.Codec(name, "w")
    except Exception:  # av raises UnknownCodecError / ValueError depending on version
        return False
    return True


def _pick_codec(codec: str, suffix: str) -> str:
    if codec != "auto":
        if not _has_encoder(codec):
            raise ValueError(f"video encoder {codec!r} is not available in this PyAV build; "
                             f"use codec='auto' or {_INSTALL_HINT}")
        return codec
    candidates = ("libvpx-vp9",) if suffix == ".webm" else ("libx264", "mpeg4")
    for name in candidates:
        if _has_encoder(name):
            return name
    raise RuntimeError(f"no video encoder for {suffix} (tried {', '.join(candidates)}); {_INSTALL_HINT}")


def _codec_options(codec: str, crf: int) -> dict[str, str]:
    """Constant-quality, zero-delay settings: every frame sent to the encoder comes out as a packet at once."""
    if codec == "libx264":
        return {"crf": str(crf), "tune": "zerolatency"}
    if codec == "libvpx-vp9":
        return {"crf": str(crf), "b": "0", "deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    if codec == "mpeg4":  # no CRF; fixed quantiser, crf 18 -> q 3 (ffmpeg's -q:v 3)
        return {"flags": "+qscale", "global_quality": str(118 * min(31, max(2, round(crf / 6))))}
    return {}


def _to_uint8_thwc(frames: Any, layout: Layout) -> np.ndarray:
    """frames: [T, H, W, 3] (thwc) or [T, 3, H, W] (tchw), float in [0, 1] or uint8. Returns [T, H, W, 3] uint8."""
    if layout not in ("thwc", "tchw"):
        raise ValueError(f"layout must be 'thwc' or 'tchw', got {layout!r}")
    if not isinstance(frames, (torch.Tensor, np.ndarray)):
        raise ValueError(f"frames must be a torch.Tensor or np.ndarray, got {type(frames).__name__}")
    shape = tuple(frames.shape)
    channel_dim = 3 if layout == "thwc" else 1
    if frames.ndim != 4 or shape[channel_dim] != 3:
        want = "[T, H, W, 3]" if layout == "thwc" else "[T, 3, H, W]"
        hint = "; add a time axis with frames[None]" if frames.ndim == 3 else ""
        if frames.ndim == 4 and shape[4 - channel_dim] == 3:
            hint = f"; this looks like layout={'tchw' if layout == 'thwc' else 'thwc'!r}"
        raise ValueError(f"frames must be {want} RGB for layout={layout!r}, got shape {list(shape)}{hint}")
    if layout == "tchw":
        frames = frames.permute(0, 2, 3, 1) if isinstance(frames, torch.Tensor) else frames.transpose(0, 2, 3, 1)
    if isinstance(frames, torch.Tensor):
        if frames.dtype.is_floating_point:
            # Quantise on the tensor's own device: moves 1/4 of the bytes to the CPU.
            frames = (frames.float().nan_to_num(0.0).clamp(0, 1) * 255).round().to(torch.uint8)
        frames = frames.detach().cpu().numpy()
    elif np.issubdtype(frames.dtype, np.floating):
        frames = np.round(np.clip(np.nan_to_num(frames.astype(np.float32), nan=0.0), 0, 1) * 255).astype(np.uint8)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be float in [0, 1] or uint8, got dtype {frames.dtype}")
    return np.ascontiguousarray(frames)  # [T, H, W, 3]


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] -> [T, H + H%2, W + W%2, 3], repeating the last row / column."""
    _, h, w, _ = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class VideoWriter:
    """Encode RGB frames to `path` as they are written; use as a context manager.

    path: .mp4 / .mov (fragmented MP4), .mkv or .webm. Written in place (no temp file), so an interrupted
        run leaves the partial, playable file at `path`; an existing file is overwritten.
    fps: frames per second (int, float or Fraction).
    width, height: optional expected frame size; by default the first `write` fixes it.
    codec: "auto" = libx264 (libvpx-vp9 for .webm), else mpeg4; or any PyAV encoder name.
    crf: constant-quality factor (lower = better; x264 and VP9 read it directly, mpeg4 maps it to a q-scale).
    keyframe_interval: frames per keyframe, and per MP4 fragment / Matroska cluster: the most a kill loses.

    The container is opened by the first `write`; a writer closed before any write leaves no file.
    """

    def __init__(self, path: str | os.PathLike, fps: float | Fraction = 16, width: int | None = None,
                 height: int | None = None, codec: str = "auto", crf: int = 18, keyframe_interval: int = 16):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in _CONTAINERS:
            raise ValueError(f"unsupported video extension {suffix!r} in {self.path}; use one of {sorted(_CONTAINERS)}")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"output directory {self.path.parent} does not exist; create it first")
        if fps <= 0 or keyframe_interval < 1:
            raise ValueError(f"fps must be > 0 and keyframe_interval >= 1, got fps={fps}, "
                             f"keyframe_interval={keyframe_interval}")
        self.fps = Fraction(fps).limit_denominator(1001)
        self.codec = _pick_codec(codec, suffix)
        if suffix == ".webm" and self.codec not in ("libvpx-vp9", "libvpx", "libaom-av1", "libsvtav1"):
            raise ValueError(f"WebM only holds VP8/VP9/AV1, not {self.codec!r}; use .mp4/.mkv or codec='auto'")
        self.crf = crf
        self.keyframe_interval = keyframe_interval
        self.width, self.height = width, height
        self.frames_written = 0
        """Frames handed to the encoder; those in the last, unfinished fragment reach disk on `close`."""
        self._container: Any = None
        self._stream: Any = None
        self._closed = False

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()  # also on an exception: finish the file so every frame so far is kept

    def write(self, frames: torch.Tensor | np.ndarray, layout: Layout = "thwc") -> None:
        """frames: [T, H, W, 3] (layout="thwc") or [T, 3, H, W] ("tchw"); float in [0, 1] or uint8."""
        if self._closed:
            raise ValueError(f"VideoWriter for {self.path} is closed")
        frames = _to_uint8_thwc(frames, layout)  # [T, H, W, 3] uint8
        _, h, w, _ = frames.shape
        if self._container is None:
            if (self.height or h, self.width or w) != (h, w):
                raise ValueError(f"frames are {h}x{w} (HxW) but the writer was given height={self.height}, "
                                 f"width={self.width}")
            self.height, self.width = h, w
            self._open()
        elif (h, w) != (self.height, self.width):
            raise ValueError(f"frame size is fixed by the first write to {self.height}x{self.width} (HxW), "
                             f"got {h}x{w}")
        for image in _pad_to_even(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = self.frames_written
            frame.time_base = 1 / self.fps
            self._container.mux(self._stream.encode(frame))
            self.frames_written += 1

    def close(self) -> None:
        """Drain the encoder and finish the file; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._container is not None:
            self._container.mux(self._stream.encode(None))
            self._container.close()

    def _open(self) -> None:
        suffix = self.path.suffix.lower()
        options = {"flush_packets": "1"}  # write each packet through to the file, no muxer-side buffering
        if suffix in (".mp4", ".mov"):
            options["movflags"] = _FRAGMENTED_MP4
        else:  # Matroska / WebM: one cluster per keyframe interval, in ms
            options["cluster_time_limit"] = str(int(1000 * self.keyframe_interval / self.fps))
        self._container = av.open(str(self.path), mode="w", format=_CONTAINERS[suffix], options=options)
        stream = self._container.add_stream(self.codec, rate=self.fps, options=_codec_options(self.codec, self.crf))
        stream.width, stream.height = self.width + self.width % 2, self.height + self.height % 2
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = self.keyframe_interval
        stream.codec_context.time_base = 1 / self.fps
        self._stream = stream


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode a whole file (also a truncated one from a killed writer) to [T, H, W, 3] uint8 RGB."""
    frames = []
    with av.open(str(path)) as container:
        try:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
        except (av.error.InvalidDataError, EOFError) as e:
            if not frames:
                raise
            logger.warning("%s: stopped at a damaged tail after %d frames (%s)", path, len(frames), e)
    if not frames:
        raise ValueError(f"{path} holds no decodable video frames")
    return np.stack(frames)  # [T, H, W, 3]


def probe(path: str | os.PathLike) -> dict[str, Any]:
    """Returns dict(frames, fps, width, height, codec) of the first video stream; frames counts packets when
    the container has no frame count (fragmented MP4, Matroska)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = stream.frames or sum(1 for p in container.demux(stream) if p.size > 0)
        rate = stream.average_rate or stream.guessed_rate
        return dict(frames=frames, fps=float(rate) if rate else None, width=stream.codec_context.width,
                    height=stream.codec_context.height, codec=stream.codec_context.name)

"""Frames from the GPU to the host without stopping the stream loop.

A device-to-host copy blocks the calling thread until the GPU has produced the frames. In the stream loop that wait
falls while the next chunk's DiT runs, so the host enqueues that DiT's successor late and the GPU idles (measured in
ComfyUI on an H100, 2026-12-07: 110 ms of node host time per chunk, the node at 0.89x the CLI; bench/RESULTS.md
"ComfyUI at engine speed"). `HostCopier` moves the wait to a worker thread: `put` records an event on the
caller's stream and returns at once; the worker waits for the event, copies on a stream of its own and hands the
host tensor to `consume` (e.g. a slice of the output IMAGE, or the video encoder), in order. It keeps the newest
frame as a small preview for the caller's progress display.

On the CPU there is nothing to wait for: `put` consumes at once, in the caller's thread (unless `threaded`). The
worker runs in the caller's inference / grad mode (ComfyUI runs nodes under `torch.inference_mode()`, which is
per thread: an inference tensor written outside it fails).
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def uint8_thwc(frames: Tensor) -> Tensor:
    """[B, T, 3, H, W] in [0, 1] -> [B, T, H, W, 3] uint8 on the frames' device: a video encoder's input, 1/4 of the
    bytes to copy."""
    return (rearrange(frames, "b t c h w -> b t h w c").float().clamp(0, 1) * 255).round().to(torch.uint8)


class HostCopier:
    """`put(frames [B, T, 3, H, W] in [0, 1] on any device, *extras)` -> `consume(host frames, start, *host extras)`
    in a worker thread, in order; `start` counts frames (the T axis) put before.

    `convert(frames) -> frames` runs on the device before the copy (e.g. the output's layout and dtype; uint8 for an
    encoder: 1/4 of the bytes). `extras` (e.g. the chunk's latents) are copied as they are. At most `depth` chunks
    wait (their GPU memory is held). `close()` waits for all and re-raises an error of the worker; use as a context
    manager. `preview`: the newest frame of batch row 0, [h, w, 3] float in [0, 1] on the host with its longest side
    at most `preview_size`, or None before the first copy (and always with `preview_size=0`).
    """

    def __init__(self, consume: Callable[..., None], convert: Callable[[Tensor], Tensor] = lambda f: f,
                 depth: int = 3, preview_size: int = 512, threaded: bool = False):
        self.consume, self.convert, self.preview_size, self.threaded = consume, convert, preview_size, threaded
        self._modes = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())       # the caller's
        self.preview: Optional[Tensor] = None
        self.frames = 0
        self._queue: "queue.Queue" = queue.Queue(maxsize=depth)
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self._stream: Optional[torch.cuda.Stream] = None

    def __enter__(self) -> "HostCopier":
        return self

    def __exit__(self, *exc) -> None:
        self.close(raise_errors=exc[0] is None)

    def put(self, frames: Tensor, *extras: Tensor) -> None:
        self._raise()
        start, self.frames = self.frames, self.frames + frames.shape[1]
        if not frames.is_cuda and not self.threaded:
            self._copy(frames, start, extras)
            return
        if self._thread is None:
            self._stream = torch.cuda.Stream(frames.device) if frames.is_cuda else None
            self._thread = threading.Thread(target=self._work, name="stream_r1-host-copy", daemon=True)
            self._thread.start()
        ready = None
        if frames.is_cuda:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(frames.device))
        self._queue.put((frames, extras, ready, start))      # blocks only when `depth` chunks are still waiting

    def close(self, raise_errors: bool = True) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if raise_errors:
            self._raise()

    # ---- worker ------------------------------------------------------------------------------------------------
    def _work(self) -> None:
        inference, grad = self._modes
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if self._error is not None:
                    continue                                  # drain: the caller sees the error on its next call
                frames, extras, ready, start = item
                try:
                    if ready is None:
                        self._copy(frames, start, extras)
                        continue
                    with torch.cuda.stream(self._stream):
                        self._stream.wait_event(ready)
                        for t in (frames, *extras):
                            t.record_stream(self._stream)
                        self._copy(frames, start, extras)
                except BaseException as e:                    # noqa: BLE001 (handed to the caller's thread)
                    self._error = e

    def _copy(self, frames: Tensor, start: int, extras: tuple) -> None:
        """On the device: convert and shrink the preview; then the (blocking) copies and `consume`."""
        preview = None
        if self.preview_size:
            newest = frames[0, -1:].float()                                              # [1, 3, H, W]
            scale = self.preview_size / max(newest.shape[-2:])
            if scale < 1:
                newest = F.interpolate(newest, scale_factor=scale, mode="area")
            preview = newest[0].permute(1, 2, 0).clamp(0, 1).cpu()                       # [h, w, 3]
        self.consume(self.convert(frames).cpu(), start, *(t.cpu() for t in extras))
        self.preview = preview

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

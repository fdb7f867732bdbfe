"""StreamR1Telemetry: drift metrics of a video (IMAGE batch) per stream chunk -> a plot IMAGE and the JSON."""
from __future__ import annotations

import json

import torch

from ..stream_r1.telemetry import analyze
from . import host, layout


class StreamR1Telemetry:
    DESCRIPTION = ("Cheap drift metrics per stream chunk, from the decoded frames: colour/exposure drift against the "
                   "first chunk, sharpness, flicker (1 - SSIM), seam score at chunk boundaries (> 1.5 = a visible "
                   "join), motion and repetition (loops). Returns a plot and the numbers as JSON. Works on any "
                   "video; the chunk sizes default to Stream-R1's (9 frames, then 12).")
    CATEGORY = "Stream-R1/analysis"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("plot", "json")
    OUTPUT_TOOLTIPS = ("The metrics over stream time (connect Preview Image or Save Image).",
                       "Per-chunk metrics as JSON (format stream_r1.telemetry, version 1).")
    FUNCTION = "measure"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": ("IMAGE", {"tooltip": "The video frames (an IMAGE batch), e.g. Stream-R1 Generate's frames."}),
            "first_chunk_frames": ("INT", {"default": 9, "min": 1, "max": 4096, "tooltip": "Frames of the stream's "
                                   "first chunk (Stream-R1: 9 = 1 + 4 x 2)."}),
            "chunk_frames": ("INT", {"default": 12, "min": 1, "max": 4096, "tooltip": "Frames of every later chunk "
                             "(Stream-R1: 12 = 4 x 3 latent frames)."}),
            "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 1.0, "tooltip": "Frame rate, for "
                    "the time axis."}),
        }}

    def measure(self, frames: torch.Tensor, first_chunk_frames: int, chunk_frames: int, fps: float):
        video = layout.frames_from_image(frames)[0]                   # [T, 3, H, W]
        tel = analyze(video, first_chunk_frames=first_chunk_frames, chunk_frames=chunk_frames, fps=fps)
        plot = torch.from_numpy(tel.plot()).float().div(255.0)[None]   # [1, H, W, 3]
        return plot.to(host.intermediate_device()), json.dumps(tel.to_json())

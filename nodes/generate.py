"""Generate, Continue and Generate-to-file: widgets -> StreamConfig -> the core's stream loop -> ComfyUI layouts."""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..stream_r1.config import check_resolution, latent_frames_for
from ..stream_r1.stream import chunks_for_frames, latent_frames_for_seconds
from . import host, layout
from .loader import StreamR1Model
from .options import StreamOptions, stream_config
from .state import StreamState, video_frames
from .timeline import timeline_schedule

CATEGORY = "Stream-R1/generate"
SEED_MAX = 0xFFFFFFFFFFFFFFFF


def _inputs(*, vae_required: bool = False) -> dict:
    """Widgets shared by Generate and Generate to File (same names, same order)."""
    vae = ("VAE", {"tooltip": "The Wan 2.1 VAE (Load VAE: wan_2.1_vae.safetensors); each chunk is decoded as soon "
                              "as it is denoised, with a persistent causal cache."})
    required = {
        "model": ("STREAM_R1_MODEL", {"tooltip": "The causal student from Stream-R1 Load Model."}),
        "positive": ("CONDITIONING", {"tooltip": "The prompt: CLIPTextEncode with CLIPLoader type wan (umT5-XXL)."}),
        **({"vae": vae} if vae_required else {}),
        "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16, "tooltip": "Video width in pixels "
                          "(a multiple of 16; the released students were trained at 832x480)."}),
        "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16, "tooltip": "Video height in pixels "
                           "(a multiple of 16)."}),
        "seconds": ("FLOAT", {"default": 5.0, "min": 0.25, "max": 3600.0, "step": 0.25, "tooltip": "Length at "
                              "16 fps, rounded to whole chunks of 12 frames (5 s = 81 frames). Ignored when frames "
                              "is set."}),
        "frames": ("INT", {"default": 0, "min": 0, "max": 1_000_001, "tooltip": "Exact length in video frames, "
                           "4k+1 (81 = 5 s); 0 = use seconds."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True, "tooltip":
                         "Random seed of the noise; the same seed, prompt and settings give the same video."}),
    }
    optional = {} if vae_required else {"vae": vae}
    optional["options"] = ("STREAM_R1_OPTIONS", {"tooltip": "Stream settings (Stream-R1 Options); default: the "
                                                            "checkpoint family's."})
    optional["tts"] = ("STREAM_R1_TTS", {"tooltip": "Test-time scaling (Stream-R1 Test-Time Scaling): search "
                                                    "several candidates per chunk with a reward model. Needs a VAE."})
    return {"required": required, "optional": optional, "hidden": {"unique_id": "UNIQUE_ID"}}


def _start(model: StreamR1Model, positive: list, width: int, height: int, seconds: float, frames: int, seed: int,
           vae: Any, options: Optional[StreamOptions], keep_state: bool) -> tuple[StreamState, int]:
    """Check the request, build the run's StreamConfig and start a stream. Returns (state, latent frames)."""
    check_resolution(height, width, model.module.cfg.pixel_multiple)
    fpb = (options.resolve(model.stream_config) if options else model.stream_config).frames_per_block
    latent_frames = latent_frames_for(frames) if frames else latent_frames_for_seconds(seconds, frames_per_block=fpb)
    cfg = stream_config(model.stream_config, options, latent_frames, keep_state)
    context = layout.context_from_conditioning(positive, model.text_dim)
    timeline = timeline_schedule(positive, cfg.frames_per_block, chunks_for_frames(latent_frames, cfg.frames_per_block),
                                 model.text_dim)                 # a Stream-R1 Timeline: checked before any allocation
    state = StreamState.start(model, cfg, context, height=height, width=width, seed=seed, vae=vae)
    state.session.set_timeline(timeline)
    return state, latent_frames


def _stream(state: StreamState, latent_frames: int, node_id: Optional[str],
            sink: Callable[[Tensor, Optional[Tensor]], None], tts: Any = None) -> None:
    """Run the next `latent_frames` of `state`, handing each piece to `sink(latents [B,f,16,h,w], frames
    [B,T,3,H,W] or None)`. Per computed chunk: a progress update with the newest frame as preview, a
    `stream_r1.chunk` websocket event, and the interrupt check before the next chunk. `tts`: a STREAM_R1_TTS
    (the chunks then come from a Stream-T1 search)."""
    total, start = state.chunks_for(latent_frames), state.latents_emitted
    progress, t0, chunks = host.Progress(total, node_id), time.perf_counter(), 0
    try:
        for latents, frames, computed in state.take(latent_frames, should_stop=host.interrupted, tts=tts):
            sink(latents, frames)
            frames_out = video_frames(state.latents_emitted) - video_frames(start)   # also without a VAE
            if not computed:
                continue
            chunks, seconds = chunks + 1, time.perf_counter() - t0
            fps = frames_out / seconds if seconds > 0 else 0.0
            newest = frames[0, -1].permute(1, 2, 0) if frames is not None and frames.shape[1] else \
                host.latent_preview(latents[0, -1])
            progress.update(chunks, newest, f"chunk {chunks}/{total}, {frames_out} frames, {fps:.1f} fps")
            host.send_event(host.CHUNK_EVENT, {
                "node": node_id, "chunk": state.session.chunk_index - 1, "chunks_done": chunks, "chunks": total,
                "frames": frames_out, "latent_frames": state.latents_emitted, "fps": fps, "seconds": seconds})
    finally:
        progress.close()


def _collect(state: StreamState, latent_frames: int, node_id: Optional[str],
             tts: Any = None) -> tuple[Tensor, dict]:
    """Run and gather: (IMAGE, LATENT) of the new frames, on ComfyUI's intermediate device."""
    out, latents, frames = host.intermediate_device(), [], []

    def sink(z: Tensor, f: Optional[Tensor]) -> None:
        latents.append(z.to(out))
        if f is not None:
            frames.append(f.to(out))

    _stream(state, latent_frames, node_id, sink, tts)
    host.throw_if_interrupted()
    image = layout.image_from_frames(torch.cat(frames, 1), out) if frames else \
        layout.placeholder_image(*state.size, out)
    return image, layout.latent_from_core(torch.cat(latents, 1), out)


_STATE_TIP = ("The stream (KV cache, noise generator, VAE cache) for Stream-R1 Continue; empty unless keep_state "
              "is on.")
_KEEP_TIP = ("Keep the stream's caches after this node so Stream-R1 Continue can extend it. They stay in GPU "
             "memory while ComfyUI caches this node's output (1.3B at 832x480: ~2.7 GB KV cache + ~1.9 GB VAE "
             "cache). Off: freed as soon as the node finishes.")


class StreamR1Generate:
    DESCRIPTION = ("Stream a video chunk by chunk (3 latent frames = 12 video frames each) with the causal student "
                   "and its rolling KV cache. Each chunk is decoded as soon as it is denoised when a VAE is "
                   "connected; the node shows the newest frame, and Cancel stops between chunks. For long videos "
                   "use Stream-R1 Generate to File (frames go to disk, not RAM).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "LATENT", "STREAM_R1_STATE")
    RETURN_NAMES = ("frames", "latent", "state")
    OUTPUT_TOOLTIPS = ("Decoded frames (an IMAGE batch, 16 fps; feed CreateVideo). Without a VAE: one black frame.",
                       "Wan2.1 latent [1, 16, T, H/8, W/8] (raw VAE space, like stock Wan latents).", _STATE_TIP)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        types = _inputs()
        types["required"]["keep_state"] = ("BOOLEAN", {"default": False, "tooltip": _KEEP_TIP})
        return types

    def generate(self, model: StreamR1Model, positive: list, width: int, height: int, seconds: float, frames: int,
                 seed: int, keep_state: bool, vae: Any = None, options: Optional[StreamOptions] = None,
                 tts: Any = None, unique_id: Optional[str] = None):
        if tts is not None and vae is None:
            raise ValueError("test-time scaling scores decoded frames: connect a VAE")
        state, latent_frames = _start(model, positive, width, height, seconds, frames, seed, vae, options, keep_state)
        with state.running(keep=keep_state):
            image, latent = _collect(state, latent_frames, unique_id, tts)
        return image, latent, state


class StreamR1Continue:
    DESCRIPTION = ("Extend a kept stream (Stream-R1 Generate with keep_state on) by more seconds, optionally with a "
                   "new prompt: the KV cache carries the motion on, so there is no seam and no VAE re-encode. "
                   "Returns only the new frames. Works on a copy of the state, so re-running gives the same frames.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "LATENT", "STREAM_R1_STATE")
    RETURN_NAMES = ("frames", "latent", "state")
    OUTPUT_TOOLTIPS = ("The new frames (continue the frame count of the input stream; batch them after its frames).",
                       "The new latent frames (raw VAE space).", _STATE_TIP)
    FUNCTION = "extend"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "state": ("STREAM_R1_STATE", {"tooltip": "A stream kept by Stream-R1 Generate or Continue."}),
            "positive": ("CONDITIONING", {"tooltip": "The prompt from here on (the same one to simply go on)."}),
            "seconds": ("FLOAT", {"default": 5.0, "min": 0.25, "max": 3600.0, "step": 0.25, "tooltip": "Seconds "
                                  "to add at 16 fps, rounded to whole chunks of 12 frames."}),
            "keep_state": ("BOOLEAN", {"default": False, "tooltip": _KEEP_TIP}),
        }, "optional": {
            "tts": ("STREAM_R1_TTS", {"tooltip": "Test-time scaling (Stream-R1 Test-Time Scaling) for the new "
                                                 "chunks: search several candidates per chunk with a reward model. "
                                                 "Needs a stream generated with a VAE."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def extend(self, state: StreamState, positive: list, seconds: float, keep_state: bool, tts: Any = None,
               unique_id: Optional[str] = None):
        if tts is not None and state.vae_stream is None:
            raise ValueError("test-time scaling scores decoded frames, but this stream has no VAE: connect a VAE to "
                             "the Generate node that started it")
        state = state.fork()                         # the input stays as it is: re-runs give the same frames
        if not keep_state:
            state.ends_here()
        with state.running(keep=keep_state):
            latent_frames = latent_frames_for_seconds(seconds, frames_per_block=state.cfg.frames_per_block)
            chunks = state.session.chunk_index + state.chunks_for(latent_frames)       # of the whole stream
            timeline = timeline_schedule(positive, state.cfg.frames_per_block, chunks, state.model.text_dim)
            state.session.set_timeline(timeline)         # times count from the start of the whole stream
            if timeline is None:
                state.set_context(layout.context_from_conditioning(positive, state.model.text_dim))
            state.prepare()
            image, latent = _collect(state, latent_frames, unique_id, tts)
        return image, latent, state


class StreamR1GenerateToFile:
    DESCRIPTION = ("Stream a video straight into an MP4 in ComfyUI's output folder: each chunk is decoded and "
                   "written as it is produced, so memory stays flat for any length, and a cancelled or crashed run "
                   "leaves a playable file. Shows the video on the node; the VIDEO output feeds stock nodes.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "VIDEO")
    RETURN_NAMES = ("path", "video")
    OUTPUT_TOOLTIPS = ("Full path of the written MP4.", "The file as a VIDEO (for GetVideoComponents, SaveVideo).")
    OUTPUT_NODE = True
    FUNCTION = "write"

    @classmethod
    def INPUT_TYPES(cls):
        types = _inputs(vae_required=True)
        types["required"]["filename_prefix"] = ("STRING", {"default": "stream_r1/video", "tooltip": "File name "
                                                "prefix in the output folder; a subfolder may be given."})
        types["required"]["fps"] = ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 1.0, "tooltip":
                                    "Playback rate of the file (the model generates at 16 fps)."})
        return types

    def write(self, model: StreamR1Model, positive: list, vae: Any, width: int, height: int, seconds: float,
              frames: int, seed: int, filename_prefix: str, fps: float, options: Optional[StreamOptions] = None,
              tts: Any = None, unique_id: Optional[str] = None):
        from ..stream_r1.video_io import VideoWriter

        path, entry = host.save_path(filename_prefix, "mp4", width, height)
        state, latent_frames = _start(model, positive, width, height, seconds, frames, seed, vae, options, False)
        with state.running(keep=False), VideoWriter(path, fps=fps) as writer:
            _stream(state, latent_frames, unique_id,
                    lambda z, f: writer.write(f[0], layout="tchw") if f is not None and f.shape[1] else None, tts)
            host.throw_if_interrupted()
        return {"ui": {"images": [entry], "animated": (True,)}, "result": (path, host.video_output(path))}

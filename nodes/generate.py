"""Generate, Continue and Generate-to-file: widgets -> StreamConfig -> the core's stream loop -> ComfyUI layouts."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Callable, Optional

import torch
from einops import rearrange
from torch import Tensor

from ..stream_r1.config import check_resolution, latent_frames_for
from ..stream_r1.host_copy import HostCopier, uint8_thwc
from ..stream_r1.stream import chunks_for_frames, latent_frames_for_seconds
from . import host, layout, live
from .loader import StreamR1Model
from .options import StreamOptions, stream_config
from .state import StreamState, video_frames
from .timeline import timeline_schedule

log = logging.getLogger(__name__)
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
    optional["clip"] = _CLIP
    return {"required": required, "optional": optional, "hidden": _HIDDEN}


_CLIP = ("CLIP", {"tooltip": "Optional: the workflow's text encoder (CLIPLoader type wan). Connected, the node's live "
                             "panel can change the prompt while the stream runs (applied at the next chunk "
                             "boundary, recorded in the timeline output)."})
_HIDDEN = {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}
_TIMELINE_TIP = ("The run's prompt timeline (Stream-R1 Prompt Timeline's text format): the first prompt and every "
                 "live change at its chunk boundary. Feed it to Prompt Timeline to replay the same switches.")


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


def _overlap(state: StreamState, tts: Any) -> bool:
    """Decode chunk k on a side CUDA stream during chunk k+1's DiT, as `generate` does (same frames). Nothing in the
    node reads the session between chunks (the chunk events count chunks themselves), so it is on wherever the
    session can (a GPU and a VAE), except under test-time scaling, which decodes its candidates itself."""
    if tts is not None:
        state.session.overlap_decode = False
        return False
    return state.session.enable_overlap(priority=True)                  # off by itself without CUDA or a VAE


def _stream(state: StreamState, latent_frames: int, node_id: Optional[str],
            sink: Callable[[Tensor, Optional[Tensor]], None], tts: Any,
            steer: live.LiveRun, preview: Callable[[], Optional[Tensor]] = lambda: None) -> None:
    """Run the next `latent_frames` of `state`, handing each piece to `sink(latents [B,f,16,h,w], frames
    [B,T,3,H,W] or None)` (on the stream's device: the sink must not wait for the GPU, see `HostCopier`). Per
    computed chunk: a progress update with `preview()` (the newest frame on the host, [h, w, 3]; without a VAE a
    latent preview), a `stream_r1.chunk` websocket event, and the interrupt check before the next chunk. `tts`: a
    STREAM_R1_TTS (the chunks then come from a Stream-T1 search). `steer`: the run's live side (pause / stop between
    chunks; its prompt changes come through the session's `before_chunk` hook).

    Logged per chunk (logger `...nodes.generate`, DEBUG; a summary line at INFO): the wait for the engine (DiT and
    decode, overlapped) and the node's own host time (sink, preview, event), so the gap to the CLI can be seen."""
    total, start, first_chunk = state.chunks_for(latent_frames), state.latents_emitted, state.session.chunk_index
    note = getattr(state.vae_stream, "note", None)
    overlapped = _overlap(state, tts)
    device = state.session.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    progress, t0, chunks, first = host.Progress(total, node_id), time.perf_counter(), 0, None
    engine = node_host = 0.0                                  # running sums: nothing grows with the stream
    try:
        with _conv_search(device):
            pieces = state.take(latent_frames, should_stop=steer.should_stop, tts=tts)
            t_ready = time.perf_counter()
            for latents, frames, computed in pieces:
                t_got = time.perf_counter()
                sink(latents, frames)
                frames_out = video_frames(state.latents_emitted) - video_frames(start)   # also without a VAE
                steer.delivered(frames_out)
                if not computed:
                    t_ready = time.perf_counter()
                    continue
                chunks, seconds = chunks + 1, t_got - t0
                first = seconds if first is None else first
                fps = frames_out / seconds if seconds > 0 else 0.0
                newest = preview() if frames is not None else host.latent_preview(latents[0, -1])
                text = f"chunk {chunks}/{total}, {frames_out} frames, {fps:.1f} fps" + (f" ({note})" if note else "")
                progress.update(chunks, newest, text)
                host.send_event(host.CHUNK_EVENT, {
                    "node": node_id, "chunk": first_chunk + chunks - 1, "chunks_done": chunks, "chunks": total,
                    "frames": frames_out, "latent_frames": state.latents_emitted, "fps": fps, "seconds": seconds})
                t_ready, wait = time.perf_counter(), t_got - t_ready
                engine, node_host = engine + wait, node_host + (t_ready - t_got)
                log.debug("chunk %d: engine %.1f ms, node host %.1f ms", chunks, 1e3 * wait, 1e3 * (t_ready - t_got))
    finally:
        progress.close()
    if chunks:
        peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else ""
        log.info("streamed %d chunks in %.2f s (first frames after %.3f s; engine %.2f s, node host %.2f s%s%s)",
                 chunks, time.perf_counter() - t0, first, engine, node_host,
                 ", decode overlapped" if overlapped else "", peak)


@contextmanager
def _conv_search(device: torch.device):
    """On CUDA, cuDNN times its engines once per conv shape and keeps the fastest (as `generate --compile`), for
    this stream only: ComfyUI's global setting is restored after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _collect(state: StreamState, latent_frames: int, node_id: Optional[str],
             tts: Any, steer: live.LiveRun) -> tuple[Tensor, dict]:
    """Run and gather: (IMAGE, LATENT) of the new frames, on ComfyUI's intermediate device. Frames are copied to the
    host by a worker thread straight into the IMAGE's final layout (no host wait in the stream loop, no final
    concatenation); the live panel's previews are made from that copy."""
    out, latents = host.intermediate_device(), []
    (height, width), batch = state.size, state.session.batch
    done = state.latents_emitted
    image = torch.empty(batch, video_frames(done + latent_frames) - video_frames(done), height, width, 3,
                        device=out) if state.vae_stream is not None else None              # [B, T, H, W, 3]

    def consume(f: Tensor, start: int, z: Tensor) -> None:                    # worker thread: host tensors, in order
        image[:, start:start + f.shape[1]] = f
        latents.append(z)
        steer.frames(image[0, start:start + f.shape[1]], start)

    def sink(z: Tensor, f: Optional[Tensor]) -> None:
        if f is None:
            latents.append(z.to(out))                                         # no VAE: nothing to overlap
        else:
            copier.put(f, z)

    with HostCopier(consume, convert=lambda f: rearrange(f, "b t c h w -> b t h w c").float()) as copier:
        _stream(state, latent_frames, node_id, sink, tts, steer, preview=lambda: copier.preview)
    host.throw_if_interrupted()
    images = image[:, :copier.frames].flatten(0, 1) if image is not None and copier.frames else \
        layout.placeholder_image(*state.size, out)                            # [B*T, H, W, 3], b-major
    return images, layout.latent_from_core(torch.cat(latents, 1), out)


_STATE_TIP = ("The stream (KV cache, noise generator, VAE cache) for Stream-R1 Continue; empty unless keep_state "
              "is on.")
_KEEP_TIP = ("Keep the stream's caches after this node so Stream-R1 Continue can extend it. They stay in GPU "
             "memory while ComfyUI caches this node's output (1.3B at 832x480: ~2.7 GB KV cache + ~1.9 GB VAE "
             "cache). Off: freed as soon as the node finishes.")


class StreamR1Generate:
    DESCRIPTION = ("Stream a video chunk by chunk (3 latent frames = 12 video frames each) with the causal student "
                   "and its rolling KV cache. Each chunk is decoded as soon as it is denoised when a VAE is "
                   "connected; the node shows the newest frame, and Cancel stops between chunks. For long videos "
                   "use Stream-R1 Generate to File (frames go to disk, not RAM). Live: the node's panel pauses, stops "
                   "or (with clip connected) re-prompts the running stream between chunks.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "LATENT", "STREAM_R1_STATE", "STRING")
    RETURN_NAMES = ("frames", "latent", "state", "timeline")
    OUTPUT_TOOLTIPS = ("Decoded frames (an IMAGE batch, 16 fps; feed CreateVideo). Without a VAE: one black frame.",
                       "Wan2.1 latent [1, 16, T, H/8, W/8] (raw VAE space, like stock Wan latents).", _STATE_TIP,
                       _TIMELINE_TIP)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        types = _inputs()
        types["required"]["keep_state"] = ("BOOLEAN", {"default": False, "tooltip": _KEEP_TIP})
        return types

    def generate(self, model: StreamR1Model, positive: list, width: int, height: int, seconds: float, frames: int,
                 seed: int, keep_state: bool, vae: Any = None, options: Optional[StreamOptions] = None,
                 tts: Any = None, clip: Any = None, unique_id: Optional[str] = None, prompt: Any = None):
        if tts is not None and vae is None:
            raise ValueError("test-time scaling scores decoded frames: connect a VAE")
        state, latent_frames = _start(model, positive, width, height, seconds, frames, seed, vae, options, keep_state)
        with state.running(keep=keep_state), \
                live.running(unique_id, state, latent_frames, clip=clip, tts=tts, graph=prompt) as steer:
            image, latent = _collect(state, latent_frames, unique_id, tts, steer)
        return image, latent, state, steer.timeline_text()


class StreamR1Continue:
    DESCRIPTION = ("Extend a kept stream (Stream-R1 Generate with keep_state on) by more seconds, optionally with a "
                   "new prompt: the KV cache carries the motion on, so there is no seam and no VAE re-encode. "
                   "Returns only the new frames. Works on a copy of the state, so re-running gives the same frames. "
                   "Live: as Generate's panel.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "LATENT", "STREAM_R1_STATE", "STRING")
    RETURN_NAMES = ("frames", "latent", "state", "timeline")
    OUTPUT_TOOLTIPS = ("The new frames (continue the frame count of the input stream; batch them after its frames).",
                       "The new latent frames (raw VAE space).", _STATE_TIP,
                       _TIMELINE_TIP + " Times count from the start of the whole stream.")
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
            "clip": _CLIP,
        }, "hidden": _HIDDEN}

    def extend(self, state: StreamState, positive: list, seconds: float, keep_state: bool, tts: Any = None,
               clip: Any = None, unique_id: Optional[str] = None, prompt: Any = None):
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
            with live.running(unique_id, state, latent_frames, clip=clip, tts=tts, graph=prompt) as steer:
                image, latent = _collect(state, latent_frames, unique_id, tts, steer)
        return image, latent, state, steer.timeline_text()


class StreamR1GenerateToFile:
    DESCRIPTION = ("Stream a video straight into an MP4 in ComfyUI's output folder: each chunk is decoded and "
                   "written as it is produced, so memory stays flat for any length, and a cancelled or crashed run "
                   "leaves a playable file. Shows the video on the node; the VIDEO output feeds stock nodes. Live: as "
                   "Generate's panel; Stop finishes the file where the stream is.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "VIDEO", "STRING")
    RETURN_NAMES = ("path", "video", "timeline")
    OUTPUT_TOOLTIPS = ("Full path of the written MP4.", "The file as a VIDEO (for GetVideoComponents, SaveVideo).",
                       _TIMELINE_TIP)
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
              tts: Any = None, clip: Any = None, unique_id: Optional[str] = None, prompt: Any = None):
        from ..stream_r1.video_io import VideoWriter

        path, entry = host.save_path(filename_prefix, "mp4", width, height)
        state, latent_frames = _start(model, positive, width, height, seconds, frames, seed, vae, options, False)

        def consume(f: Tensor, start: int) -> None:                   # worker thread (on a GPU): host uint8 frames
            writer.write(f[0])
            steer.frames(f[0], start)

        # exits in reverse: the copier drains, the file is finished, then the panel hears the end
        with state.running(keep=False), \
                live.running(unique_id, state, latent_frames, clip=clip, tts=tts, graph=prompt) as steer, \
                VideoWriter(path, fps=fps) as writer, HostCopier(consume, convert=uint8_thwc) as copier:
            _stream(state, latent_frames, unique_id, lambda z, f: copier.put(f) if f is not None else None, tts,
                    steer, preview=lambda: copier.preview)
            host.throw_if_interrupted()
        return {"ui": {"images": [entry], "animated": (True,)},
                "result": (path, host.video_output(path), steer.timeline_text())}

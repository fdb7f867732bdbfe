"""STREAM_R1_STATE: a running stream that later nodes continue from.

A state holds the core's `StreamSession` (KV cache, random generator, prompt), the VAE stream (decoder feature
cache) and the tail of a chunk that ran past the requested length, so generate(n) followed by continue(m) gives
exactly the frames of one generate(n + m) with the same seed and prompt.

Memory: a kept state pins its caches on the GPU for as long as ComfyUI keeps the node's output cached:
the KV cache (1.3B at 832x480, window 9, bf16: 2 x 30 layers x 9 frames x 1560 tokens x 1536 x 2 B = 2.6 GB,
plus 94 MB of text K/V) and, with a VAE, its feature cache (about 1.9 GB at 832x480 in 16-bit). Continue works
on a fork (a copy of both caches; the weights are shared), so re-running it gives the same frames; a state
that is not kept is released at the end of its node (`keep_state` off, the default).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

from ..stream_r1.config import StreamConfig, video_frames_for
from ..stream_r1.stream import StreamSession, chunks_for_frames
from . import host
from .decode import ComfyVAEStream, CoreVAEStream, vae_stream as make_vae_stream
from .loader import StreamR1Model


def stream_memory(model: StreamR1Model, cfg: StreamConfig, height: int, width: int, batch: int,
                  vae_stream: Optional[ComfyVAEStream | CoreVAEStream] = None) -> int:
    """Bytes a run needs beyond the weights: KV + text cache, one chunk's activations (a rough bound) and
    ComfyUI's estimate for decoding one latent frame."""
    mc, size = model.module.cfg, torch.empty((), dtype=model.dtype).element_size()
    tokens = mc.tokens_per_frame(height, width)                                   # 832x480 -> 1560
    kv = 2 * mc.num_layers * batch * (cfg.cache_frames * tokens + mc.text_len) * mc.dim * size
    activations = 2 * batch * cfg.frames_per_block * tokens * (mc.ffn_dim + 6 * mc.dim) * size
    decode = vae_stream.memory_required((batch, mc.in_dim, 1, *mc.latent_hw(height, width))) if vae_stream else 0
    return kv + activations + decode


def video_frames(latent_frames: int) -> int:
    """Video frames of a stream's first `latent_frames` (0 -> 0, 3 -> 9, 6 -> 21)."""
    return video_frames_for(latent_frames) if latent_frames else 0


class StreamState:
    """See the module docstring. Nodes use `start`, `take` (through generate._stream), `fork` and `running`."""

    def __init__(self, model: StreamR1Model, session: StreamSession,
                 vae_stream: Optional[ComfyVAEStream | CoreVAEStream]):
        self.model, self.session, self.vae_stream = model, session, vae_stream
        self.latents_emitted = 0
        """Latent frames handed out so far (the tail excluded)."""
        self._tail: Optional[tuple[Tensor, Optional[Tensor]]] = None

    @classmethod
    def start(cls, model: StreamR1Model, cfg: StreamConfig, context: Tensor, *, height: int, width: int,
              seed: int, vae: Any = None) -> "StreamState":
        """Load the weights (and the VAE) for a run, then allocate the caches of a new stream."""
        vae_stream = make_vae_stream(vae, model.device, model.compile) if vae is not None else None
        model.load(stream_memory(model, cfg, height, width, context.shape[0], vae_stream),
                   (vae_stream.patcher,) if vae_stream is not None else ())
        session = StreamSession(model.module, cfg, context, height=height, width=width, seed=seed,
                                decoder=vae_stream, device=model.device, dtype=model.dtype)
        return cls(model, session, vae_stream)

    # ---- queries ------------------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.session is not None

    @property
    def cfg(self) -> StreamConfig:
        return self._session().cfg

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self._session().height, self._session().width

    def chunks_for(self, latent_frames: int) -> int:
        """Chunks to compute for the next `latent_frames` (the tail left by the last run counts)."""
        have = self._tail[0].shape[1] if self._tail is not None else 0
        return chunks_for_frames(max(0, latent_frames - have), self.cfg.frames_per_block)

    # ---- verbs --------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Bring the weights (and the VAE) back onto the GPU for another run of this stream; ComfyUI may have
        offloaded them since the last one."""
        s = self._session()
        self.model.load(stream_memory(self.model, s.cfg, s.height, s.width, s.batch, self.vae_stream),
                        (self.vae_stream.patcher,) if self.vae_stream is not None else ())

    def ends_here(self) -> None:
        """Nothing continues this stream after its next run: that run's last chunk skips its clean cache pass,
        whose K/V only a following chunk would read (5 DiT passes per chunk become 4)."""
        session = self._session()
        session.cfg = session.cfg.replace(skip_last_context_pass=True)

    def set_context(self, context: Tensor) -> None:
        """New prompt from the next chunk on (the frame cache is kept)."""
        self._session().set_context(context)

    def take(self, latent_frames: int, should_stop=None, tts=None) -> Iterator[tuple[Tensor, Optional[Tensor], bool]]:
        """Yield (latents [B, f, 16, h, w], frames [B, T, 3, H, W] in [0, 1] or None, computed) pieces, in order,
        until `latent_frames` more latent frames were handed out; `computed` is False for the tail of the last
        run. `should_stop()` is checked before every chunk. `tts` (STREAM_R1_TTS): a Stream-T1 search makes the
        chunks; the session continues from its best beam afterwards."""
        session, want = self._session(), latent_frames
        if self._tail is not None:
            (latents, frames), self._tail = self._tail, None
            piece = self._cut(latents, frames, want)
            want -= piece[0].shape[1]
            yield (*piece, False)
        run = tts.driver(session).run if tts is not None else session.run
        for chunk in run(self.chunks_for(want), should_stop=should_stop):
            piece = self._cut(chunk.latents, chunk.frames, want)
            want -= piece[0].shape[1]
            yield (*piece, True)

    def _cut(self, latents: Tensor, frames: Optional[Tensor], want: int) -> tuple[Tensor, Optional[Tensor]]:
        """Hand out up to `want` latent frames (and their video frames); keep the rest as the tail."""
        k = min(want, latents.shape[1])
        done = self.latents_emitted
        n = video_frames(done + k) - video_frames(done)          # 1 + 4(k-1) for the first piece, else 4k
        if k < latents.shape[1]:
            self._tail = (latents[:, k:], frames[:, n:] if frames is not None else None)
        self.latents_emitted += k
        return latents[:, :k], frames[:, :n] if frames is not None else None

    def fork(self) -> "StreamState":
        """An independent copy (caches, random generator, tail) sharing the weights and the VAE."""
        session = self._session()
        g = session.generator
        g2 = torch.Generator(device=g.device)
        g2.set_state(g.get_state())
        return copy.deepcopy(self, memo={id(session.model): session.model, id(g): g2})

    def release(self) -> None:
        """Free the caches now (also when tracebacks still reference the session)."""
        if self.session is not None:
            self.session.cache = None
            self.session.decoder = None
            self.session = None
        if self.vae_stream is not None:
            self.vae_stream.release()
        self._tail = None
        host.soft_empty_cache()

    def save(self, path: str) -> str:
        """Write the stream to a state file (the core's format, `stream_r1.stream_state`, plus the tail of the last
        run), atomically. The state itself is unchanged."""
        extra: dict[str, Tensor] = {}
        if self._tail is not None:
            extra["tail_latents"] = self._tail[0]
            if self._tail[1] is not None:
                extra["tail_frames"] = self._tail[1]
        return str(self._session().save_state(path, extra_tensors=extra,
                                              extra_meta={"latents_emitted": self.latents_emitted}))

    @classmethod
    def load(cls, model: StreamR1Model, path: str, vae: Any = None) -> "StreamState":
        """A live state continuing a saved stream (same model weights and dtype; with a VAE when it was saved with
        one)."""
        from ..stream_r1.stream_state import load_stream_state

        saved = load_stream_state(path)
        legacy = saved.session.get("decoder") == ComfyVAEStream.__name__        # its cache is in ComfyUI's layout
        vae_stream = make_vae_stream(vae, model.device, model.compile, legacy) if vae is not None else None
        s = saved.session
        model.load(stream_memory(model, saved.config(), int(s["height"]), int(s["width"]), int(s["batch"]),
                                 vae_stream), (vae_stream.patcher,) if vae_stream is not None else ())
        session = StreamSession.from_state(model.module, saved, decoder=vae_stream, device=model.device,
                                           dtype=model.dtype)
        state = cls(model, session, vae_stream)
        state.latents_emitted = int(saved.extra.get("latents_emitted", session.frames_done))
        extra = saved.extra_tensors
        if "tail_latents" in extra:
            frames = extra.get("tail_frames") if vae_stream is not None else None
            state._tail = (extra["tail_latents"].to(model.device, model.dtype),
                           frames.to(host.intermediate_device()) if frames is not None else None)
        return state

    @contextmanager
    def running(self, keep: bool) -> Iterator["StreamState"]:
        """Release the caches when the block ends, unless it completed and `keep` is set."""
        completed = False
        try:
            yield self
            completed = True
        finally:
            if not (keep and completed):
                self.release()

    def _session(self) -> StreamSession:
        if self.session is None:
            raise ValueError("this STREAM_R1_STATE holds no stream: turn on keep_state on the node that produced "
                             "it (the stream is freed after the node otherwise)")
        return self.session


# ---- nodes: save / load a stream ------------------------------------------------------------------------------------
def state_file_path(name: str) -> str:
    """Full path of a state file listed by `host.state_files()` (output folder, then input folder "[input]"). The one
    rule for every node that reads a state: names resolve only through that listing, never as paths."""
    return host.resolve_state(name)


class StreamR1SaveState:
    DESCRIPTION = ("Save a kept stream (keep_state on) to a .safetensors file in the output folder: KV cache with its "
                   "sink, positions, VAE decode cache, noise generator and prompt. Stream-R1 Load State continues it "
                   "later exactly where it stopped, or with another prompt (a branch); the node shows the name to "
                   "pick there.")
    CATEGORY = "Stream-R1/state"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Full path of the state file.",)
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "state": ("STREAM_R1_STATE", {"tooltip": "A stream kept by Stream-R1 Generate or Continue "
                                                     "(keep_state on)."}),
            "filename_prefix": ("STRING", {"default": "stream_r1/state", "tooltip": "File name prefix inside the "
                                "output folder; subfolders with '/' (e.g. stream_r1/fox). Empty: stream_r1/state. "
                                "Absolute paths and '..' are refused."}),
        }}

    def save(self, state: StreamState, filename_prefix: str):
        import os

        height, width = state.size
        path, _ = host.save_path(filename_prefix, "safetensors", width, height, default="stream_r1/state")
        state.save(path)
        name = os.path.relpath(path, host.output_folder()).replace(os.sep, "/")     # as Load State lists it
        return {"ui": {"text": [name]}, "result": (path,)}


class StreamR1LoadState:
    DESCRIPTION = ("Load a stream saved by Stream-R1 Save State (or `python -m stream_r1 generate --save-state`) to "
                   "continue it with Stream-R1 Continue: the same prompt continues it exactly; another prompt (or a "
                   "Stream-R1 Timeline) branches it. Needs the model (same weights and dtype) and, if the stream was "
                   "decoded, the same VAE.")
    CATEGORY = "Stream-R1/state"
    RETURN_TYPES = ("STREAM_R1_STATE",)
    RETURN_NAMES = ("state",)
    OUTPUT_TOOLTIPS = ("The loaded stream, ready for Stream-R1 Continue.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("STREAM_R1_MODEL", {"tooltip": "The student that produced the stream (checked by a weights "
                                                     "fingerprint)."}),
            "state_file": (host.state_files(), {"tooltip": "A state file (.safetensors) in ComfyUI's output folder, "
                           "as Save State writes them, or in its input folder (marked [input]; copy the CLI's "
                           "--save-state files there). Refresh (R) to list files saved since the page loaded."}),
        }, "optional": {
            "vae": ("VAE", {"tooltip": "The Wan 2.1 VAE, when the stream was saved with decoded frames."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, state_file: Optional[str] = None):
        """Names are checked against a fresh listing (ComfyUI then skips its own list check, so a file saved after
        the page loaded is accepted, and any other name gets the one message of `host.resolve_state`)."""
        if state_file is None:                  # linked from another node: checked when the node runs
            return True
        try:
            state_file_path(state_file)
        except FileNotFoundError as e:
            return str(e)
        return True

    @classmethod
    def IS_CHANGED(cls, model=None, state_file: str = "", vae=None):
        import os

        try:
            st = os.stat(state_file_path(state_file))
        except OSError:                         # not listed (FileNotFoundError) or gone: run, and fail there
            return ""
        return f"{st.st_mtime_ns}-{st.st_size}"

    def load(self, model: StreamR1Model, state_file: str, vae: Any = None):
        return (StreamState.load(model, state_file_path(state_file), vae),)


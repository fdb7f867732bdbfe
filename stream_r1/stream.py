"""Chunk-by-chunk causal generation with a KV cache (the inference loop of Self-Forcing-style students).

Per chunk of `frames_per_block` latent frames: for each warped timestep t_k, predict x0 from the flow;
between steps re-noise x0 to t_{k+1} with fresh Gaussian noise; the last x0 is the chunk. Then one clean
pass at t = context_noise writes the chunk's K/V into the cache. A `StreamSession` yields one `Chunk` at
a time, so streams of any length run with flat memory (window_sink policy) and the prompt can change
between chunks.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Protocol

import torch
from einops import rearrange
from torch import Tensor

from .config import StreamConfig
from .kv_cache import KVCache
from .schedule import FlowMatchSchedule
from .wan.model import WanModel

log = logging.getLogger(__name__)


class ChunkDecoder(Protocol):
    """Streaming decoder: normalised latents [B, 16, f, h, w] -> video [B, 3, T, H, W] in [-1, 1]."""

    def decode(self, latents: Tensor) -> Tensor: ...

    def reset(self) -> None: ...


@dataclass
class Chunk:
    index: int
    """Chunk number in the stream (0-based)."""
    start_frame: int
    """Latent frame index of the chunk's first frame."""
    latents: Tensor
    """[B, f, 16, h, w] normalised latents (frame-major, as the reference's output)."""
    frames: Optional[Tensor] = None
    """[B, T, 3, H, W] decoded video in [0, 1] when a decoder is attached (chunk 0: 1 + 4(f-1) frames)."""
    seconds: float = 0.0
    """Wall time of the chunk (DiT + decode)."""


@dataclass
class StreamStats:
    chunks: int = 0
    dit_seconds: float = 0.0
    decode_seconds: float = 0.0
    chunk_seconds: list = field(default_factory=list)


class StreamSession:
    """One stream: a model, a KV cache, a prompt context, a random generator and an optional decoder.

    context: umT5 output [B, L, text_dim] (padded rows zero). noise: optional initial noise
    [B, F, 16, h, w] for the first F latent frames (later chunks draw from the session's generator).
    """

    def __init__(self, model: WanModel, cfg: StreamConfig, context: Tensor, *, height: int, width: int,
                 seed: int = 0, noise: Optional[Tensor] = None, decoder: Optional[ChunkDecoder] = None,
                 device: "torch.device | str | None" = None, dtype: Optional[torch.dtype] = None,
                 timing_sync: bool = False, overlap_decode: bool = False):
        mc = model.cfg
        if height % mc.pixel_multiple or width % mc.pixel_multiple:
            from .config import check_resolution
            check_resolution(height, width, mc.pixel_multiple)
        p = next(model.parameters())
        self.model, self.cfg = model, cfg
        self.device = torch.device(device) if device is not None else p.device
        self.dtype = dtype or p.dtype
        self.height, self.width = height, width
        self.lat_h, self.lat_w = mc.latent_hw(height, width)               # 480x832 -> 60x104
        self.batch = context.shape[0]
        self.schedule = FlowMatchSchedule.from_config(cfg)
        self.timesteps = self.schedule.sampling_timesteps(cfg.denoising_steps, cfg.warp_denoising_step)
        self.cache = KVCache.for_model(model, cfg, batch=self.batch, height=height, width=width,
                                       device=self.device, dtype=self.dtype)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.noise = None
        if noise is not None:
            want = (self.batch, mc.in_dim, self.lat_h, self.lat_w)
            if noise.dim() != 5 or (noise.shape[0], noise.shape[2], noise.shape[3], noise.shape[4]) != want:
                raise ValueError(f"noise must be [B, F, {mc.in_dim}, {self.lat_h}, {self.lat_w}] for "
                                 f"{width}x{height}, got {list(noise.shape)}")
            self.noise = noise.to(self.device, self.dtype)
        self.decoder = decoder
        self.timing_sync = timing_sync and self.device.type == "cuda"
        """Synchronise the GPU before each clock read so `stats` split DiT and decode time exactly
        (benchmarks only: it adds host syncs between the two stages)."""
        self.overlap_decode = overlap_decode and decoder is not None and self.device.type == "cuda"
        """Decode chunk k on a side CUDA stream while the DiT runs chunk k+1 (chunks are then yielded one
        chunk late; outputs are identical)."""
        self._side = torch.cuda.Stream(self.device) if self.overlap_decode else None
        self.on_frames: Optional[Callable[[Tensor], None]] = None
        """Called with each decoded piece [B, t, 3, H, W] (t = 1 for the stream's first latent frame, else 4)."""
        self.chunk_index = 0
        self.stats = StreamStats()
        self.interrupted = False
        self.set_context(context)

    # ---- prompt ---------------------------------------------------------------------------------
    def set_context(self, context: Tensor) -> None:
        """Switch the prompt from the next chunk on (text K/V recomputed; the frame cache is kept)."""
        if context.shape[0] != self.batch:
            raise ValueError(f"context batch {context.shape[0]} differs from the stream's batch {self.batch}")
        self.context = context.to(self.device, self.dtype)
        self.cache.reset_cross()

    @property
    def frames_done(self) -> int:
        return self.chunk_index * self.cfg.frames_per_block

    # ---- one chunk --------------------------------------------------------------------------------
    def _initial_noise(self, start: int, f: int) -> Tensor:
        shape = (self.batch, f, self.model.cfg.in_dim, self.lat_h, self.lat_w)
        if self.noise is not None and start < self.noise.shape[1]:
            given = self.noise[:, start:start + f]
            if given.shape[1] == f:
                return given
            extra = torch.randn((self.batch, f - given.shape[1], *shape[2:]), generator=self.generator,
                                device=self.device, dtype=self.dtype)
            return torch.cat([given, extra], dim=1)
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=self.dtype)

    def _denoise(self, noisy: Tensor, t: float, start: int) -> Tensor:
        """One DiT call on [B, f, 16, h, w] at timestep t; returns the x0 prediction (same layout)."""
        b, f = noisy.shape[:2]
        x = rearrange(noisy, "b f c h w -> b c f h w")
        tt = torch.full((b, f), t, device=self.device, dtype=torch.float32)
        flow = self.model(x, tt, self.context, cache=self.cache, start_frame=start)
        flow = rearrange(flow, "b c f h w -> b f c h w")
        return self.schedule.x0_from_flow(noisy, flow, t)

    def _decode(self, x0: Tensor) -> Tensor:
        """[B, f, 16, h, w] latents -> [B, T, 3, H, W] frames in [0, 1], one latent frame at a time so that
        `on_frames` (if set) sees each piece as soon as it exists (the first frame of a stream early)."""
        pieces = []
        for i in range(x0.shape[1]):
            video = self.decoder.decode(rearrange(x0[:, i:i + 1], "b f c h w -> b c f h w"))  # [B, 3, t, H, W]
            piece = rearrange(video.float().clamp(-1, 1) * 0.5 + 0.5, "b c t h w -> b t c h w")
            if self.on_frames is not None:
                self.on_frames(piece)
            pieces.append(piece)
        return torch.cat(pieces, dim=1)

    @torch.no_grad()
    def _next_overlapped(self, last: bool) -> tuple[Chunk, torch.cuda.Event]:
        """DiT on the current stream, then the decode enqueued on the side stream (no host sync)."""
        chunk = self.next_chunk(last=last, decode=False)
        main = torch.cuda.current_stream(self.device)
        ready = torch.cuda.Event()
        ready.record(main)
        with torch.cuda.stream(self._side):
            self._side.wait_event(ready)
            chunk.latents.record_stream(self._side)
            chunk.frames = self._decode(chunk.latents)
            done = torch.cuda.Event()
            done.record(self._side)
        return chunk, done

    @torch.no_grad()
    def next_chunk(self, *, last: bool = False, decode: bool = True) -> Chunk:
        """Generate (and decode, if a decoder is attached) the next chunk."""
        t0 = self._clock()
        f, start = self.cfg.frames_per_block, self.frames_done
        x = self._initial_noise(start, f)                                  # [B, f, 16, h, w]
        ts = self.timesteps
        for k, t in enumerate(ts):
            x0 = self._denoise(x, t, start)
            if k + 1 < len(ts):
                eps = torch.randn(x0.shape, generator=self.generator, device=self.device, dtype=self.dtype)
                x = self.schedule.add_noise(x0, eps, ts[k + 1])
        # decode before the clean cache pass: the frames do not depend on it, so they arrive one pass earlier
        t1 = self._clock()
        frames = self._decode(x0) if decode and self.decoder is not None else None
        t2 = self._clock()
        if not (last and self.cfg.skip_last_context_pass):
            self._denoise(x0, self.cfg.context_noise, start)               # clean K/V into the cache
        t3 = self._clock()
        chunk = Chunk(self.chunk_index, start, x0, frames, t3 - t0)
        self.chunk_index += 1
        self.stats.chunks += 1
        self.stats.dit_seconds += (t1 - t0) + (t3 - t2)
        self.stats.decode_seconds += t2 - t1
        self.stats.chunk_seconds.append(t3 - t0)
        return chunk

    def _clock(self) -> float:
        if self.timing_sync:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def run(self, num_chunks: Optional[int] = None, *,
            on_chunk: Optional[Callable[[Chunk], None]] = None,
            should_stop: Optional[Callable[[], bool]] = None,
            prompt_at: Optional[Callable[[int], Optional[Tensor]]] = None) -> Iterator[Chunk]:
        """Yield chunks until `num_chunks` (None = forever) or until `should_stop()` is true.

        `should_stop` is checked between chunks; `prompt_at(i)` may return a new context for chunk i.
        """
        i, pending = 0, None
        while num_chunks is None or i < num_chunks:
            if should_stop is not None and should_stop():
                self.interrupted = True
                log.info("stream interrupted after %d chunks", self.chunk_index)
                break
            if prompt_at is not None:
                ctx = prompt_at(self.chunk_index)
                if ctx is not None:
                    self.set_context(ctx)
            last = num_chunks is not None and i == num_chunks - 1
            if self.overlap_decode:
                current = self._next_overlapped(last)
                if pending is not None:
                    yield self._deliver(*pending, on_chunk)
                pending = current
            else:
                yield self._deliver(self.next_chunk(last=last), None, on_chunk)
            i += 1
        if pending is not None:
            yield self._deliver(*pending, on_chunk)

    def _deliver(self, chunk: Chunk, done: "Optional[torch.cuda.Event]",
                 on_chunk: Optional[Callable[[Chunk], None]]) -> Chunk:
        if done is not None:                          # frames were decoded on the side stream
            torch.cuda.current_stream(self.device).wait_event(done)
            chunk.frames.record_stream(torch.cuda.current_stream(self.device))
        if on_chunk is not None:
            on_chunk(chunk)
        return chunk


def chunks_for_frames(latent_frames: int, frames_per_block: int) -> int:
    """Chunks needed to cover `latent_frames` (the last chunk may run past the end; trim its output)."""
    return -(-latent_frames // frames_per_block)


def latent_frames_for_seconds(seconds: float, fps: int = 16, frames_per_block: int = 3) -> int:
    """Latent frames for `seconds` of video, rounded to the nearest whole chunk (at least one):
    5 s -> 21 latent = 81 frames; 30 s -> 120 latent = 477 frames (29.8 s), as the reference clips."""
    lat = (seconds * fps - 1) / 4 + 1
    return max(1, round(lat / frames_per_block)) * frames_per_block


@torch.no_grad()
def generate(model: WanModel, context: Tensor, cfg: StreamConfig, latent_frames: int, *, height: int, width: int,
             seed: int = 0, noise: Optional[Tensor] = None, decoder: Optional[ChunkDecoder] = None,
             on_chunk: Optional[Callable[[Chunk], None]] = None,
             should_stop: Optional[Callable[[], bool]] = None) -> tuple[Tensor, Optional[Tensor]]:
    """Generate `latent_frames` latent frames. Returns latents [B, F, 16, h, w] and, with a decoder,
    frames [B, T, 3, H, W] in [0, 1] (T = 1 + 4(F-1))."""
    session = StreamSession(model, cfg, context, height=height, width=width, seed=seed, noise=noise,
                            decoder=decoder)
    lat, frames = [], []
    for chunk in session.run(chunks_for_frames(latent_frames, cfg.frames_per_block), on_chunk=on_chunk,
                             should_stop=should_stop):
        lat.append(chunk.latents)
        if chunk.frames is not None:
            frames.append(chunk.frames)
    latents = torch.cat(lat, dim=1)[:, :latent_frames]
    video = None
    if frames:
        video = torch.cat(frames, dim=1)[:, :1 + 4 * (latent_frames - 1)]
    return latents, video

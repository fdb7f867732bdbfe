"""What a Stream-T1 search costs against plain streaming: DiT / decode multiplier, KV memory bound, output delay.

Analytic, from the configs (spec-stream-t1.md §6, §8); `bench/tts_cost.py` measures the same on a GPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config import StreamConfig, WanConfig
from .search import T1Config


@dataclass(frozen=True)
class T1Cost:
    candidates: int
    """Candidates per chunk (beams x children): each runs the chunk's denoise steps + context pass and a decode."""
    dit_multiplier: float
    """DiT (and VAE decode) work per chunk against plain streaming, = candidates (rewards come on top)."""
    page_bytes: int
    """One KV page: one chunk of frames, K and V, every layer (1.3B, 832x480, bf16: 862,617,600 B)."""
    plain_kv_bytes: int
    """The plain stream's KV window (cache_frames)."""
    kv_bytes_bound: int
    """Search KV bound: beams x (window + sink growth) pages, plus one new and one copied page per candidate."""
    delay_chunks: int
    """Chunks an output chunk may wait after it is generated (0: greedy, live)."""

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        gb = 1e9
        return (f"{self.candidates} candidates per chunk: ~{self.dit_multiplier:g}x the DiT + decode work of plain "
                f"streaming, plus the reward models; KV at most {self.kv_bytes_bound / gb:.1f} GB "
                f"(plain {self.plain_kv_bytes / gb:.1f} GB; one {self.page_bytes / gb:.2f} GB page per chunk); "
                + ("output live" if self.delay_chunks == 0 else f"output up to {self.delay_chunks} chunks late"))


def t1_cost(cfg: T1Config = T1Config(), stream: StreamConfig = StreamConfig.stream_r1(),
            model: WanConfig = WanConfig.wan_1_3b(), *, height: int = 480, width: int = 832,
            bytes_per_value: int = 2) -> T1Cost:
    """Cost of `cfg` for `model` at height x width (defaults: 1.3B, 832x480, bf16, Stream-R1's cache)."""
    tokens = model.tokens_per_frame(height, width)                                  # 480x832 -> 1560
    frame = 2 * model.num_layers * tokens * model.dim * bytes_per_value           # K + V of one latent frame
    fpb = stream.frames_per_block
    page = fpb * frame
    sinking = stream.cache_policy == "longlive" if cfg.sinking is None else cfg.sinking
    window_frames = stream.cache_frames + (max(0, cfg.max_sink_frames - stream.sink_frames) if sinking else 0)
    window_pages = -(-window_frames // fpb)
    n = cfg.beams * cfg.children
    bound = (cfg.beams * window_pages + 2 * n) * page
    return T1Cost(candidates=n, dit_multiplier=float(n), page_bytes=page, plain_kv_bytes=stream.cache_frames * frame,
                  kv_bytes_bound=bound, delay_chunks=0 if cfg.beams == 1 else cfg.max_delay)

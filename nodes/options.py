"""StreamR1Options: stream settings (widgets named like the `StreamConfig` fields) -> STREAM_R1_OPTIONS."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..stream_r1.config import CACHE_POLICIES, StreamConfig
from ..stream_r1.stream import chunks_for_frames

KEEP = -1
"""Numeric widget value meaning "keep the checkpoint family's value"."""


@dataclass(frozen=True)
class StreamOptions:
    """STREAM_R1_OPTIONS: changes to a checkpoint's default `StreamConfig`.

    Not a full StreamConfig, because `cache_policy="auto"` (and every "keep" widget) means the value of the
    model's family, which only the generate node knows.
    """

    cache_policy: Optional[str] = None
    """None = the family's policy; else switch to that policy's released settings before `changes`."""
    changes: dict[str, Any] = field(default_factory=dict)
    """StreamConfig field -> value, only for widgets the user set."""

    def resolve(self, default: StreamConfig) -> StreamConfig:
        base = default
        if self.cache_policy not in (None, default.cache_policy):
            base = StreamConfig.for_policy(self.cache_policy).replace(denoising_steps=default.denoising_steps)
        return base.replace(**self.changes)


def stream_config(default: StreamConfig, options: Optional[StreamOptions], latent_frames: int,
                  keep_state: bool) -> StreamConfig:
    """The config of one run: the family's default, the options, and what the run itself needs."""
    cfg = options.resolve(default) if options is not None else default
    if cfg.cache_policy == "full" and "full_cache_frames" not in (options.changes if options else {}):
        need = chunks_for_frames(latent_frames, cfg.frames_per_block) * cfg.frames_per_block
        cfg = cfg.replace(full_cache_frames=max(cfg.full_cache_frames, need))   # 'full' never evicts
    # a kept stream needs its last chunk's clean cache pass; a stream freed after the node would never use it
    return cfg.replace(skip_last_context_pass=not keep_state)


def parse_steps(text: str) -> tuple[float, ...]:
    try:
        steps = tuple(float(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise ValueError(f"denoising_steps takes comma-separated timesteps, e.g. 1000,750,500,250; got {text!r}") \
            from None
    return steps


class StreamR1Options:
    DESCRIPTION = ("Stream settings for Stream-R1 Generate. Every widget left at auto / -1 / empty keeps the value "
                   "the checkpoint's family was trained with (Stream-R1 / Reward Forcing: window_sink, window 9, "
                   "sink 3; Self-Forcing: full; LongLive: longlive, window 12, sink 3).")
    CATEGORY = "Stream-R1/options"
    RETURN_TYPES = ("STREAM_R1_OPTIONS",)
    RETURN_NAMES = ("options",)
    OUTPUT_TOOLTIPS = ("Changes to the checkpoint's default stream settings.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        keep = " -1 = the checkpoint's value."
        return {"required": {
            "cache_policy": (["auto", *CACHE_POLICIES], {"default": "auto", "tooltip": "KV cache policy. auto = the "
                             "checkpoint family's; window_sink = rolling window + EMA sink (unbounded streams); "
                             "full = no eviction (Self-Forcing, short clips); longlive = fixed sink + rolling "
                             "window."}),
            "denoising_steps": ("STRING", {"default": "1000,750,500,250", "tooltip": "Comma-separated timesteps "
                                "per chunk, high to low (empty = the checkpoint's). Fewer steps = faster."}),
            "window_frames": ("INT", {"default": KEEP, "min": KEEP, "max": 1024, "tooltip": "KV cache length in "
                              "latent frames, sink included (rolling policies)." + keep}),
            "sink_frames": ("INT", {"default": KEEP, "min": KEEP, "max": 1024, "tooltip": "Latent frames at the "
                            "start of the cache that are never evicted." + keep}),
            "sink_ema_alpha": ("FLOAT", {"default": KEEP, "min": KEEP, "max": 1.0, "step": 0.001, "tooltip":
                               "window_sink: sink <- alpha * sink + (1 - alpha) * evicted block." + keep}),
            "sink_ema_source": (["auto", "evicted", "newest"], {"default": "auto", "tooltip": "window_sink: the "
                                "block that feeds the EMA sink (evicted = Reward Forcing after its fix)."}),
            "context_noise": ("FLOAT", {"default": KEEP, "min": KEEP, "max": 1000.0, "step": 1.0, "tooltip":
                              "Timestep of the clean pass that writes a finished chunk into the cache." + keep}),
            "full_cache_frames": ("INT", {"default": KEEP, "min": KEEP, "max": 1024, "tooltip": "full policy: "
                                  "cache length in latent frames. -1 = long enough for the requested length."}),
        }}

    def build(self, cache_policy: str, denoising_steps: str, window_frames: int, sink_frames: int,
              sink_ema_alpha: float, sink_ema_source: str, context_noise: float, full_cache_frames: int):
        values = dict(denoising_steps=parse_steps(denoising_steps) or None, window_frames=window_frames,
                      sink_frames=sink_frames, sink_ema_alpha=sink_ema_alpha, context_noise=context_noise,
                      sink_ema_source=sink_ema_source, full_cache_frames=full_cache_frames)
        changes = {k: v for k, v in values.items() if v not in (None, KEEP, "auto")}
        options = StreamOptions(None if cache_policy == "auto" else cache_policy, changes)
        if options.cache_policy is not None:          # refuse bad values now; with auto, at generate time
            options.resolve(StreamConfig.for_policy(options.cache_policy))
        elif "denoising_steps" in changes:
            StreamConfig(denoising_steps=changes["denoising_steps"])
        return (options,)

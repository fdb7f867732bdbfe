"""Test-time scaling for streaming generation: Stream-T1 (arXiv 2605.04461; docs spec-stream-t1.md).

Pure torch, no ComfyUI imports. `StreamT1(session, reward, T1Config())` searches a `StreamSession` chunk by chunk.
"""
from .search import (ROUTES, Beam, StreamT1, T1Config, child_seed, fork_decoder, generate_t1, mix_noise)
from .cost import T1Cost, t1_cost
from .rewards import BrightnessReward

__all__ = ["ROUTES", "Beam", "StreamT1", "T1Config", "child_seed", "fork_decoder", "generate_t1", "mix_noise",
           "BrightnessReward", "T1Cost", "t1_cost"]

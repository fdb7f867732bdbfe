"""StreamR1TestTimeScaling: Stream-T1 settings (+ the reward model) -> STREAM_R1_TTS for the generate nodes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..stream_r1.tts import StreamT1, T1Config
from ..stream_r1.tts.cost import t1_cost
from . import host


@dataclass(frozen=True)
class TTSOptions:
    """STREAM_R1_TTS: the search settings, the reward model that scores the candidates and the optional short
    reward (HPSv3) on each candidate's own frames."""

    cfg: T1Config
    reward: Any
    short_reward: Any = None

    def driver(self, session) -> StreamT1:
        return StreamT1(session, self.reward, self.cfg, short_reward=self.short_reward)


class StreamR1TestTimeScaling:
    DESCRIPTION = ("Stream-T1 test-time scaling for Stream-R1 Generate / Generate to File: per chunk, beams x "
                   "children candidates are denoised, decoded and scored by the reward model, and the best beams "
                   "go on. Cost: about beams x children times the DiT + decode work per chunk, plus the reward. "
                   "With beams 1 the video streams live; with beams > 1 chunks come out up to max_delay chunks "
                   "late. Needs a VAE on the generate node. Estimate for the defaults (1.3B, 832x480, bf16): "
                   + t1_cost().summary() + ". Candidates share their parent's KV pages (copy-on-write) and run as "
                   "one batched DiT call, so wall time grows less than the work on a large GPU.")
    CATEGORY = "Stream-R1/generate"
    RETURN_TYPES = ("STREAM_R1_TTS",)
    RETURN_NAMES = ("tts",)
    OUTPUT_TOOLTIPS = ("Connect to the tts input of Stream-R1 Generate or Generate to File.",)
    FUNCTION = "options"

    @classmethod
    def INPUT_TYPES(cls):
        d = T1Config()
        return {"required": {
            "beams": ("INT", {"default": d.beams, "min": 1, "max": 16, "tooltip": "Survivors per chunk. 1 = greedy "
                              "best-of-children, streams live."}),
            "children": ("INT", {"default": d.children, "min": 1, "max": 16, "tooltip": "Candidates per surviving "
                                 "beam and chunk. Cost grows with beams x children."}),
            "rho": ("FLOAT", {"default": d.rho, "min": -1.0, "max": 1.0, "step": 0.05, "tooltip": "Correlation of "
                              "a candidate's initial noise with its parent's (0 = independent)."}),
            "window_chunks": ("INT", {"default": d.window_chunks, "min": 1, "max": 100, "tooltip": "Chunks the "
                                      "long (coherence) reward looks back over."}),
            "sinking": (["auto", "on", "off"], {"default": "auto", "tooltip": "Memory sinking: keep rewarded "
                        "chunks in the attention sink. auto = on for LongLive (longlive cache policy), off "
                        "otherwise."}),
            "max_delay": ("INT", {"default": d.max_delay, "min": 1, "max": 16, "tooltip": "beams > 1: the most "
                                  "chunks a finished chunk waits before it is output."}),
        }, "optional": {
            "reward_model": ("STREAM_R1_REWARD", {"tooltip": "From Stream-R1 Load Reward Model; required unless "
                                                              "beams x children = 1."}),
            "short_reward_file": (["none"] + host.hpsv3_files(), {"default": "none", "tooltip": "HPSv3 "
                                  "(models/stream_r1/HPSv3/HPSv3.safetensors + tokenizer/) for the short reward on "
                                  "each candidate's own frames, as in Stream-T1 (~16 GB in bf16). none = the "
                                  "reward model scores both."}),
        }}

    def options(self, beams: int, children: int, rho: float, window_chunks: int, sinking: str, max_delay: int,
                reward_model: Any = None, short_reward_file: str = "none"):
        cfg = T1Config(beams=beams, children=children, rho=rho, window_chunks=window_chunks, max_delay=max_delay,
                       sinking={"auto": None, "on": True, "off": False}[sinking])
        if reward_model is None:
            if beams * children > 1 or sinking == "on":
                raise ValueError("test-time scaling needs a reward model (Stream-R1 Load Reward Model) to choose "
                                 "between candidates; connect one to reward_model")
            from ..stream_r1.tts import BrightnessReward
            cfg, reward_model = cfg.replace(sinking=False), BrightnessReward()   # one candidate: nothing to score
        return (TTSOptions(cfg, reward_model, self._short_reward(short_reward_file)),)

    @staticmethod
    def _short_reward(name: str) -> Any:
        if name == "none":
            return None
        import torch
        from ..stream_r1.reward.hpsv3 import load_hpsv3
        device = host.torch_device()
        return load_hpsv3(host.resolve_hpsv3(name), device=device,
                          dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)

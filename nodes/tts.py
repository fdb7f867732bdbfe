"""StreamR1TestTimeScaling: Stream-T1 settings (+ the reward model) -> STREAM_R1_TTS for the generate nodes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..stream_r1.tts import StreamT1, T1Config


@dataclass(frozen=True)
class TTSOptions:
    """STREAM_R1_TTS: the search settings and the reward model that scores the candidates."""

    cfg: T1Config
    reward: Any

    def driver(self, session) -> StreamT1:
        return StreamT1(session, self.reward, self.cfg)


class StreamR1TestTimeScaling:
    DESCRIPTION = ("Stream-T1 test-time scaling for Stream-R1 Generate / Generate to File: per chunk, beams x "
                   "children candidates are denoised, decoded and scored by the reward model, and the best beams "
                   "go on. Cost: about beams x children times the DiT + decode work per chunk, plus the reward. "
                   "With beams 1 the video streams live; with beams > 1 chunks come out up to max_delay chunks "
                   "late. Needs a VAE on the generate node.")
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
        }}

    def options(self, beams: int, children: int, rho: float, window_chunks: int, sinking: str, max_delay: int,
                reward_model: Any = None):
        cfg = T1Config(beams=beams, children=children, rho=rho, window_chunks=window_chunks, max_delay=max_delay,
                       sinking={"auto": None, "on": True, "off": False}[sinking])
        if reward_model is None:
            if beams * children > 1 or sinking == "on":
                raise ValueError("test-time scaling needs a reward model (Stream-R1 Load Reward Model) to choose "
                                 "between candidates; connect one to reward_model")
            from ..stream_r1.tts import BrightnessReward
            cfg, reward_model = cfg.replace(sinking=False), BrightnessReward()   # one candidate: nothing to score
        return (TTSOptions(cfg, reward_model),)

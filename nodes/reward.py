"""Reward nodes: load VideoReward, score a clip (VQ / MQ / TA), and show where the reward model looks."""
from __future__ import annotations

from einops import rearrange

from ..stream_r1.reward.model import compute_scores, load_video_reward
from ..stream_r1.reward.report import analyse
from ..stream_r1.reward.weights import IntraConfig
from . import host
from .layout import frames_from_image

AXES = ("combined", "VQ", "MQ", "TA")


def _require(reward_model) -> None:
    """The demo loader's reward_model output is empty when its bundle ships no reward model."""
    if reward_model is None:
        raise ValueError("reward_model is empty: the shapes-world bundle has no reward/ folder. Train it with "
                         "`python -m training.run --recipe shapes_reward` and rebuild the bundle "
                         "(docs/shapes-world.md), or use Stream-R1 Load Reward Model")


class StreamR1RewardLoader:
    DESCRIPTION = ("Load the VideoReward model (Qwen2-VL-2B + LoRA + reward head; scores visual quality VQ, motion "
                   "quality MQ and text alignment TA) from models/stream_r1/VideoReward.")
    CATEGORY = "Stream-R1/reward"
    RETURN_TYPES = ("STREAM_R1_REWARD",)
    RETURN_NAMES = ("reward_model",)
    OUTPUT_TOOLTIPS = ("The frozen reward model (about 4.6 GB in bf16).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_file": (host.reward_files(), {"tooltip": "model.pth of VideoReward; model_config.json and the "
                                                            "tokenizer folder are found beside it"}),
            "dtype": (["auto", "bf16", "fp32"], {"default": "auto", "tooltip": "auto = bf16 on GPU, fp32 on CPU"}),
        }}

    def load(self, model_file: str, dtype: str):
        import torch
        device = host.torch_device()
        dt = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype) or \
            (torch.bfloat16 if device.type == "cuda" else torch.float32)
        path = host.resolve_reward(model_file)
        with torch.inference_mode(False):     # saliency needs autograd through these weights later
            return (load_video_reward(path, device=device, dtype=dt),)


class StreamR1RewardScore:
    DESCRIPTION = "Score a clip with the reward model: VQ, MQ, TA as z-scores (0 = the reward model's average)."
    CATEGORY = "Stream-R1/reward"
    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("VQ", "MQ", "TA", "summary")
    OUTPUT_TOOLTIPS = ("visual quality (z-score)", "motion quality (z-score)", "text alignment (z-score)",
                       "one line with all scores")
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "reward_model": ("STREAM_R1_REWARD", {"tooltip": "from Stream-R1 Load Reward Model"}),
            "images": ("IMAGE", {"tooltip": "the clip's frames (at least 2)"}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "the text the clip should match"}),
        }}

    def score(self, reward_model, images, prompt: str):
        _require(reward_model)
        frames = frames_from_image(images)                                       # [1, T, 3, H, W]
        if frames.shape[1] < 2:
            raise ValueError("the reward model needs a clip of at least 2 frames, got 1 image")
        s = compute_scores(reward_model, frames, [prompt]).as_dicts()[0]
        text = f"VQ {s['VQ']:+.3f} | MQ {s['MQ']:+.3f} | TA {s['TA']:+.3f} | Overall {s['Overall']:+.3f}"
        return (float(s["VQ"]), float(s["MQ"]), float(s["TA"]), text)


class StreamR1RewardSaliency:
    DESCRIPTION = ("Where the reward model looks: gradient saliency of VQ / MQ / TA mixed into Stream-R1's "
                   "Intra-Perplexity weight (the per-frame, per-pixel weight of the training loss).")
    CATEGORY = "Stream-R1/reward"
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE", "STRING")
    RETURN_NAMES = ("overlay", "mask", "temporal_profile", "summary")
    OUTPUT_TOOLTIPS = ("heat map over every frame", "the map per frame in [0, 1]",
                       "chart of the temporal weight per latent frame", "scores and the saliency mix")
    FUNCTION = "saliency"

    @classmethod
    def INPUT_TYPES(cls):
        d = IntraConfig()
        return {"required": {
            "reward_model": ("STREAM_R1_REWARD", {"tooltip": "from Stream-R1 Load Reward Model"}),
            "images": ("IMAGE", {"tooltip": "the clip's frames (at least 2; 1 + 4k frames map exactly to latents)"}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "the text the clip should match"}),
            "axis": (list(AXES), {"default": "combined", "tooltip": "combined = the training weight W_intra; "
                                                                     "or one reward axis' raw saliency"}),
            "alpha": ("FLOAT", {"default": 0.55, "min": 0.0, "max": 1.0, "step": 0.05,
                                "tooltip": "heat-map opacity over the frames"}),
            "spatial_floor": ("FLOAT", {"default": d.spatial_floor, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "sigma_min: the lowest per-pixel weight (paper: 0.15)"}),
            "temporal_floor": ("FLOAT", {"default": d.temporal_floor, "min": 0.0, "max": 1.0, "step": 0.01,
                                         "tooltip": "tau_min: the lowest per-frame weight (paper: 0.2)"}),
        }}

    def saliency(self, reward_model, images, prompt: str, axis: str, alpha: float, spatial_floor: float,
                 temporal_floor: float):
        import torch
        _require(reward_model)
        cfg = IntraConfig(spatial_floor=spatial_floor, temporal_floor=temporal_floor)
        # ComfyUI runs nodes under inference_mode; the saliency is a gradient, so step out of it here
        with torch.inference_mode(False), torch.enable_grad():
            frames = frames_from_image(images)[0].clone()                        # [T, 3, H, W]
            report = analyse(reward_model, frames, prompt, intra_config=cfg)
        out = host.intermediate_device()
        overlay = rearrange(report.overlays(axis, alpha), "t c h w -> t h w c").to(out)
        mask = report.per_frame(axis).to(out)                                    # [T, H, W]
        chart = rearrange(report.temporal_profile(), "c h w -> 1 h w c").to(out)
        return (overlay, mask, chart, report.summary())

"""Reward models (VideoReward / VideoAlign; HPSv3 for images), differentiable preprocessing, saliency and the DMD
reward weights.

transformers is imported only when a model is built or loaded, so `import stream_r1.reward` stays cheap.
"""
from .checkpoint import AXES, DOCUMENTED_NORM, RewardFileConfig, RewardFiles, read_model_config, resolve_reward_files
from .dmd_weights import RewardWeights, reward_weights
from .hpsv3 import HPSv3Model, load_hpsv3
from .model import (RewardModel, RewardScores, VideoRewardModel, build_qwen2vl, compute_scores, load_tokenizer,
                    load_video_reward)
from .preprocess import VideoInputConfig, VideoPatches, patch_values_to_grid, patchify, preprocess_video, smart_resize
from .qwen2vl_config import Qwen2VLArch
from .saliency import (AxisSaliency, gradient_saliency, latent_frame_sets, latent_frames_for_video, latent_saliency,
                       temporal_overlap_matrix, to_latent_grid)
from .weights import (BalancedOverall, IntraConfig, IntraWeights, axis_weights, combine_axes, factorize,
                      inter_weight, intra_weights, reward_signal)

__all__ = [
    "AXES", "DOCUMENTED_NORM", "RewardFileConfig", "RewardFiles", "read_model_config", "resolve_reward_files",
    "RewardModel", "RewardScores", "VideoRewardModel", "build_qwen2vl", "compute_scores", "load_tokenizer",
    "load_video_reward", "VideoInputConfig", "VideoPatches", "patch_values_to_grid", "patchify", "preprocess_video",
    "smart_resize", "Qwen2VLArch", "AxisSaliency", "gradient_saliency", "latent_frame_sets",
    "latent_frames_for_video", "latent_saliency", "temporal_overlap_matrix", "to_latent_grid", "BalancedOverall",
    "IntraConfig", "IntraWeights", "axis_weights", "combine_axes", "factorize", "inter_weight", "intra_weights",
    "reward_signal", "RewardWeights", "reward_weights", "HPSv3Model", "load_hpsv3",
]

"""StreamR1ShapesDemoLoader: the embedded shapes-world bundle (stream_r1/shapes/bundle/) -> everything a stream needs.

The bundle is a complete tiny pipeline trained by our own recipes (student, Wan-architecture VAE, umT5 text
encoder with its tokenizer, optionally a 3-axis reward model), so a workflow runs on a CPU with no downloads.

Design: the loader returns the pieces in the link types the existing nodes already take, so the shapes workflow
is the real workflow with one loader swapped in:

- MODEL: STREAM_R1_MODEL (the student in our own StreamR1Model, ModelPatcher-wrapped inside ComfyUI).
- text: a CLIP value (`ShapesCLIP`) that implements only ComfyUI's text-encoding calls (`tokenize`,
  `encode_from_tokens_scheduled`, `encode_from_tokens`). A separate "Shapes Text Encode" node returning
  CONDITIONING would be one more node and would not reach Stream-R1 Prompt Timeline, which encodes every
  prompt of a timeline itself from a CLIP; with this value, the stock CLIP Text Encode and our Timeline both work
  unchanged, and the conditioning is exactly the core's `TextEncoder.encode` (what the CLI feeds the student).
  Anything else asked of it (LoRA, clip skip) fails with a message saying so.
- VAE: a `decode.CoreVAE` (our own WanVAE), decoded chunk by chunk by Generate through `decode.vae_stream`.
- STREAM_R1_REWARD: the bundle's reward model for Reward Saliency / Score and Test-Time Scaling, or None when the
  bundle ships no reward/ folder (those nodes then say so; the workflow still validates).
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from torch import Tensor

from ..stream_r1.shapes import bundle as shapes_bundle
from ..stream_r1.shapes import unknown_words
from . import host
from .decode import CoreVAE
from .loader import DTYPES, StreamR1Model

log = logging.getLogger(__name__)
HOW_TO_BUILD = ("build it with the shapes-world recipes (docs/shapes-world.md: `bash "
                "bench/shapes_train.sh`, about 16 min on one GPU, ends with `python -m training.shapes.bundle`), or "
                "point $STREAM_R1_SHAPES_BUNDLE at a bundle folder, then press Refresh / queue again")


class ShapesCLIP:
    """A CLIP value that only encodes text, with the bundle's umT5 (`stream_r1.text_encoder.TextEncoder`).

    Tokens are the cleaned-up prompt itself (the core's tokenizer runs inside `encode`); the conditioning is
    [[cond [1, 512, text_dim], {"pooled_output": None}]] with the rows past the prompt zero, as ComfyUI's umT5.
    """

    def __init__(self, encoder: Any):
        self.encoder = encoder

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs) -> dict:
        return {"shapes_umt5": [text]}

    def _cond(self, tokens: dict) -> Tensor:
        (text,) = tokens["shapes_umt5"]
        unknown = unknown_words(text)
        if unknown:
            log.warning("the shapes-world model does not know %s in %r: it draws coloured shapes (see the README's "
                        "shapes-world vocabulary)", ", ".join(repr(w) for w in unknown), text)
        with torch.inference_mode(False), torch.no_grad():       # cached rows must be usable outside inference
            cond = self.encoder.encode([text])
        return cond.to(host.intermediate_device(), torch.float32)

    def encode_from_tokens_scheduled(self, tokens: dict, unprojected: bool = False, add_dict: Optional[dict] = None,
                                     show_pbar: bool = True) -> list:
        return [[self._cond(tokens), {"pooled_output": None, **(add_dict or {})}]]

    def encode_from_tokens(self, tokens: dict, return_pooled: bool = False, return_dict: bool = False):
        cond = self._cond(tokens)
        if return_dict:
            return {"cond": cond, "pooled_output": None}
        return (cond, None) if return_pooled else cond

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"the shapes-world text encoder only encodes text (CLIP Text Encode, Stream-R1 Prompt "
                             f"Timeline); {name!r} is a feature of ComfyUI's CLIP it lacks")

    def __deepcopy__(self, memo: dict) -> "ShapesCLIP":
        return self


def bundle_files_state() -> str:
    """A cache key that changes when the bundle's files do (so a rebuilt bundle is loaded again)."""
    root = shapes_bundle.bundle_dir()
    parts = [str(root)]
    for name in (*shapes_bundle.FILES.values(), "bundle.json", shapes_bundle.REWARD_DIR):
        try:
            st = (root / name).stat()
            parts.append(f"{name}:{st.st_mtime_ns}:{st.st_size}")
        except OSError:
            parts.append(f"{name}:-")
    return "|".join(parts)


class StreamR1ShapesDemoLoader:
    DESCRIPTION = ("The embedded shapes-world demo (stream_r1/shapes/bundle/, or $STREAM_R1_SHAPES_BUNDLE): a tiny "
                   "causal student, Wan-architecture VAE, umT5 text encoder and reward model, all trained by this "
                   "pack's own recipes on rendered coloured shapes. Runs on a CPU with no downloads. Outputs plug "
                   "into the usual nodes: model -> Generate; clip -> CLIP Text Encode or Stream-R1 Prompt Timeline "
                   "(a text-only CLIP: the thinnest way to give both the bundle's umT5, no extra encode node); vae "
                   "-> Generate / Decode / VAE Decode; reward_model -> Reward Saliency / Score. Prompts follow the "
                   "shapes grammar, e.g. 'a red circle moving right on a black background'; size: the bundle's "
                   "(96x96 for the recipes).")
    CATEGORY = "Stream-R1/loaders"
    RETURN_TYPES = ("STREAM_R1_MODEL", "CLIP", "VAE", "STREAM_R1_REWARD", "STRING")
    RETURN_NAMES = ("model", "clip", "vae", "reward_model", "info")
    OUTPUT_TOOLTIPS = ("The shapes-world causal student.",
                       "Text-only CLIP with the bundle's umT5: feed CLIP Text Encode or Stream-R1 Prompt Timeline.",
                       "The bundle's Wan-architecture VAE (decoded chunk by chunk by Generate).",
                       "The bundle's 3-axis reward model; empty when the bundle has no reward/ folder.",
                       "Size, fps and where the bundle came from (bundle.json).")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dtype": (["auto", *DTYPES], {"default": "auto", "tooltip": "Compute dtype of the student, VAE and text "
                                          "encoder; auto = ComfyUI's choice for the device (fp32 on CPU)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, dtype: str = "auto"):
        return f"{dtype}|{bundle_files_state()}"

    def load(self, dtype: str):
        root = shapes_bundle.bundle_dir()
        if not shapes_bundle.available(root):
            missing = [n for n in shapes_bundle.FILES.values() if not (root / n).is_file()]
            raise FileNotFoundError(f"no shapes-world bundle at {root} (missing {', '.join(missing)}): "
                                    + HOW_TO_BUILD)
        device, offload = host.torch_device(), host.offload_device()
        compute = host.default_dtype(device) if dtype == "auto" else DTYPES[dtype]
        b = shapes_bundle.load_bundle(device=offload, dtype=compute, root=root)
        patcher = host.wrap_model(b.model, device, offload)
        model = StreamR1Model(b.model, b.info, patcher, device if patcher is not None else offload, compute)
        vae = CoreVAE(b.vae, host.wrap_model(b.vae, device, offload))
        reward = self._reward(b, device)
        info = (f"shapes world: {b.width}x{b.height} at {b.fps} fps, student {b.info.family}, "
                f"reward {'yes' if reward is not None else 'none'} ({root})")
        return model, ShapesCLIP(b.text_encoder), vae, reward, info

    @staticmethod
    def _reward(b: Any, device: torch.device) -> Any:
        if not (b.root / shapes_bundle.REWARD_DIR).is_dir():
            log.warning("the shapes-world bundle at %s has no reward/ folder: reward_model is empty", b.root)
            return None
        dt = torch.bfloat16 if device.type == "cuda" else torch.float32
        with torch.inference_mode(False):                 # saliency needs autograd through these weights later
            return b.reward(device=device, dtype=dt)

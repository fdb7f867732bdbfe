"""Synthetic VideoReward files for tests and demos: a tiny tokenizer and a PEFT-layout checkpoint.

Nothing here is downloaded. The tokenizer is a word-level model with the real Qwen2 special-token ids
(<|im_start|> 151644, <|video_pad|> 151656, the reward tokens 151657-151659, ...); the checkpoint is written
in the released container format (model_config.json + checkpoint-<step>/{model.pth, tokenizer/}) with the
real transformers-4.45 + PEFT key names (`.base_layer`, `lora_A.default`, `lora_B.default`).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import ARCH_KEY, AXES, DOCUMENTED_NORM, PEFT_PREFIX, RewardFiles, resolve_reward_files
from .prompt import CHAT_PREFIX, CHAT_SUFFIX, DETAILED_SPECIAL_TEMPLATE, PAD_TOKEN, REWARD_TOKEN_IDS, REWARD_TOKENS
from .qwen2vl_config import Qwen2VLArch

SPECIAL_TOKEN_IDS: dict[str, int] = {
    PAD_TOKEN: 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
    "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
    **dict(zip(REWARD_TOKENS, REWARD_TOKEN_IDS)),
}
"""Special tokens of the released tokenizer at their real ids."""
LORA_TARGET = re.compile(r"^layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.(weight|bias)$")
"""LLM modules VideoAlign wrapped with LoRA (every Linear except lm_head/rm_head/embeddings/visual)."""
_WORD = re.compile(r"\w+|[^\w\s]+")


def build_tiny_tokenizer(extra_text: Iterable[str] = ()):
    """Word-level fast tokenizer knowing the chat + rubric words (and `extra_text`); unknown words -> [UNK] (0)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = " ".join([CHAT_PREFIX, CHAT_SUFFIX, DETAILED_SPECIAL_TEMPLATE, *extra_text])
    for s in SPECIAL_TOKEN_IDS:
        text = text.replace(s, " ")
    words = sorted(set(_WORD.findall(text)))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}, **SPECIAL_TOKEN_IDS}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKEN_IDS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token=PAD_TOKEN,
                                   eos_token="<|im_end|>")


def peft_state_dict(model_sd: dict[str, Tensor], rm_head: Tensor, rank: int, seed: int = 0,
                    lora_std: float = 0.05, zero_b: bool = False) -> dict[str, Tensor]:
    """Current-layout base weights -> the released PEFT/4.45 layout with random LoRA pairs.

    `zero_b=False`: A and B random (B != 0, so merging changes the weights: tests of the merge). `zero_b=True`:
    PEFT's own init (random A, B = 0), so the merged weights equal `model_sd` exactly (a trained model saved in
    the released layout). Tensors are not copied: tied weights stay one storage in `torch.save`.
    """
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for k, v in model_sd.items():
        if k.startswith("model.visual."):
            out[PEFT_PREFIX + k[len("model."):]] = v
        elif k.startswith("model.language_model."):
            name = k[len("model.language_model."):]
            if LORA_TARGET.match(name):
                module, leaf = name.rsplit(".", 1)
                out[f"{PEFT_PREFIX}model.{module}.base_layer.{leaf}"] = v
                if leaf == "weight":
                    out[f"{PEFT_PREFIX}model.{module}.lora_A.default.weight"] = torch.randn(
                        rank, v.shape[1], generator=g) * lora_std        # [r, in]
                    b = torch.randn(v.shape[0], rank, generator=g) * lora_std   # [out, r]
                    out[f"{PEFT_PREFIX}model.{module}.lora_B.default.weight"] = torch.zeros_like(b) if zero_b else b
            else:
                out[f"{PEFT_PREFIX}model.{name}"] = v
        else:
            out[PEFT_PREFIX + k] = v                                      # lm_head.weight
    out[PEFT_PREFIX + "rm_head.weight"] = rm_head
    return out


def model_config_dict(arch: Qwen2VLArch, lora_r: int, lora_alpha: int, output_dim: int = 1,
                      norm: dict[str, tuple[float, float]] = DOCUMENTED_NORM, *, max_frame_pixels: int = 200704,
                      min_frame_pixels: int | None = None, model_name: str = "synthetic/tiny-qwen2-vl",
                      extra: dict | None = None) -> dict:
    """A model_config.json with the released sections (values of the release unless told) + our arch entry.

    `min_frame_pixels` (ours, absent from the release) makes loaders resize frames like the model was trained;
    `extra` adds top-level entries (e.g. `CALIBRATION_KEY` for normalisation measured on this model).
    """
    data = {"max_frame_pixels": max_frame_pixels, "fps": 2.0, "eval_dim": list(AXES),
            "prompt_template_type": "detailed_special", "sample_type": "uniform"}
    if min_frame_pixels is not None:
        data["min_frame_pixels"] = min_frame_pixels
    return {
        "data_config": data,
        "model_config": {"model_name_or_path": model_name, "output_dim": output_dim,
                         "use_special_tokens": True, "reward_token": "special"},
        "peft_lora_config": {"lora_enable": True, "vision_lora": False, "lora_r": lora_r, "lora_alpha": lora_alpha,
                             "lora_dropout": 0.05, "lora_task_type": "CAUSAL_LM", "use_rslora": False,
                             "num_lora_modules": -1},
        "inference_config": {f"{a}_{s}": v for a in AXES for s, v in zip(("mean", "std"), norm[a])},
        ARCH_KEY: arch.to_dict(),
        **(extra or {}),
    }


def write_reward_checkpoint(root: str | Path, state_dict: dict[str, Tensor], rm_head: Tensor, arch: Qwen2VLArch,
                            tokenizer, config: dict, *, step: int, lora_r: int, seed: int = 0,
                            zero_b: bool = False, lora_std: float = 0.05) -> RewardFiles:
    """Write Qwen2-VL weights (current transformers layout) + rm_head [out, hidden] in the released layout:
    `root/model_config.json` (`config`, see `model_config_dict`) and `root/checkpoint-<step>/{model.pth,
    tokenizer/}`. `zero_b=True` stores LoRA pairs with B = 0, so loading yields exactly `state_dict`."""
    root = Path(root)
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True, exist_ok=True)
    if rm_head.shape[-1] != arch.hidden_size:
        raise ValueError(f"rm_head is {list(rm_head.shape)}, expected [out_dim, {arch.hidden_size}] (arch.hidden_size)")
    torch.save(peft_state_dict(state_dict, rm_head, lora_r, seed, lora_std=lora_std, zero_b=zero_b),
               ckpt / "model.pth")
    tokenizer.save_pretrained(str(ckpt / "tokenizer"))
    (root / "model_config.json").write_text(json.dumps(config, indent=2))
    return resolve_reward_files(root)


def write_synthetic_checkpoint(root: str | Path, arch: Qwen2VLArch | None = None, seed: int = 0,
                               lora_r: int = 4, lora_alpha: int = 8, step: int = 1,
                               rm_head_std: float = 0.5) -> RewardFiles:
    """Write a seeded random VideoReward checkpoint in the released layout under `root`; returns its files."""
    from .model import build_qwen2vl

    arch = arch or Qwen2VLArch.tiny()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_qwen2vl(arch)
        base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rm_head = torch.randn(1, arch.hidden_size) * rm_head_std
    return write_reward_checkpoint(root, base, rm_head, arch, build_tiny_tokenizer(),
                                   model_config_dict(arch, lora_r, lora_alpha), step=step, lora_r=lora_r, seed=seed)

"""Synthetic HPSv3 files for tests and demos: a seeded random checkpoint in the released layout, a tiny tokenizer.

Nothing is downloaded. `write_synthetic_hpsv3(root)` writes root/HPSv3.safetensors with the released key names
(transformers-4.45 layout `visual.*`, `model.layers.*`, `lm_head.weight`, plus `rm_head.{0,3,5}.*`), a word-level
tokenizer with Qwen2's special tokens and `<|Reward|>` at their real ids (root/tokenizer), and the tiny size as
root/stream_r1_arch.json.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from torch import Tensor

from .hpsv3 import ARCH_FILE, INSTRUCTION, PROMPT_WITH_REWARD_TOKEN, REWARD_TOKEN, REWARD_TOKEN_ID, WEIGHTS_NAME, \
    ranknet_head
from .prompt import CHAT_PREFIX, CHAT_SUFFIX, PAD_TOKEN
from .qwen2vl_config import Qwen2VLArch

SPECIAL_IDS: dict[str, int] = {PAD_TOKEN: 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                               "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655,
                               "<|video_pad|>": 151656, REWARD_TOKEN: REWARD_TOKEN_ID}


def tiny_hpsv3_arch() -> Qwen2VLArch:
    """The tiny Qwen2-VL test size with HPSv3's vocabulary (151,658 rows) and an untied lm_head, as in 7B."""
    return dataclasses.replace(Qwen2VLArch.tiny(), vocab_size=151658, extra_tokens=1, tie_word_embeddings=False)


def tiny_tokenizer(extra_text: str = ""):
    """Word-level fast tokenizer knowing the chat and instruction words; unknown words -> [UNK] (0)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = " ".join([CHAT_PREFIX, CHAT_SUFFIX, INSTRUCTION, PROMPT_WITH_REWARD_TOKEN, extra_text])
    for s in SPECIAL_IDS:
        text = text.replace(s, " ")
    words = sorted(set(re.findall(r"\w+|[^\w\s]+", text)))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}, **SPECIAL_IDS}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_IDS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token=PAD_TOKEN, eos_token="<|im_end|>")


def released_layout(model_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Current-layout Qwen2-VL keys -> the transformers-4.45 names HPSv3.safetensors uses."""
    out = {}
    for k, v in model_sd.items():
        if k.startswith("model.visual."):
            k = k[len("model."):]                                           # visual.*
        elif k.startswith("model.language_model."):
            k = "model." + k[len("model.language_model."):]                 # model.layers.*, model.embed_tokens
        out[k] = v.contiguous()
    return out


def write_synthetic_hpsv3(root: str | Path, arch: Qwen2VLArch | None = None, seed: int = 0,
                          head_std: float = 0.5) -> Path:
    """Write a seeded random HPSv3 in the released layout under `root`; returns the weights file."""
    from safetensors.torch import save_file

    from .model import build_qwen2vl

    arch = arch or tiny_hpsv3_arch()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sd = released_layout(build_qwen2vl(arch).state_dict())
        head = ranknet_head(arch.hidden_size)
        for p in head.parameters():
            torch.nn.init.normal_(p, std=head_std)
    sd |= {f"rm_head.{k}": v.detach().clone() for k, v in head.state_dict().items()}
    save_file(sd, str(root / WEIGHTS_NAME))
    tiny_tokenizer().save_pretrained(str(root / "tokenizer"))
    (root / ARCH_FILE).write_text(json.dumps(arch.to_dict(), indent=2))
    return root / WEIGHTS_NAME

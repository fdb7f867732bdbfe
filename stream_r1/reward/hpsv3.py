"""HPSv3 (MizzenAI/HPSv3, arXiv 2508.03789): an image preference reward, Qwen2-VL-7B-Instruct + an MLP head.

Facts of the released model this loader reproduces (hpsv3/config/HPSv3_7B.yaml, hpsv3/inference.py, train.py):

* base Qwen2-VL-7B-Instruct (`HPSV3_ARCH`); the tokenizer gets one special token `<|Reward|>` (id 151,657 after
  Qwen2's 151,657 tokens) and the embedding / lm_head are resized to 151,658 rows;
* head `rm_head_type: ranknet` without kwargs: Linear(3584, 1024) -> ReLU -> Dropout -> Linear(1024, 16) -> ReLU
  -> Linear(16, 2), fp32, read at the `<|Reward|>` position; the 2 outputs are (mu, sigma) and mu is the score;
* every image is resized to exactly 256 * 28 * 28 = 200,704 pixels (min = max; 480x832 -> 336x588 = 12 x 21
  merged = 252 image tokens) and fed as a one-frame "video" of 2 identical temporal slices (Qwen2-VL's image path);
* prompt: Qwen2-VL's chat template, user turn [image, INSTRUCTION.format(prompt) + PROMPT_WITH_REWARD_TOKEN].

Checkpoint `HPSv3.safetensors` (one flat state dict, `Qwen2VLRewardModelBT.state_dict()`): keys in the
transformers-4.45 layout `visual.*`, `model.embed_tokens.weight`, `model.layers.{i}.*`, `model.norm.weight`,
`lm_head.weight` (untied in 7B), plus `rm_head.{0,3,5}.{weight,bias}`. Files in the current layout
(`model.visual.*`, `model.language_model.*`) load too. A non-7B size (tests) is described by `stream_r1_arch.json`
next to the weights. Positions follow the reference's transformers-4.45 forward (`position_ids=None` on the text
model: 1-D 0..L-1 in all three M-RoPE sections), like VideoReward here; `position_mode="mrope"` uses 3-D ones.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from .preprocess import patchify, smart_resize
from .prompt import CHAT_PREFIX, CHAT_SUFFIX, PAD_TOKEN_ID, TextTokenizer
from .qwen2vl_config import CLIP_MEAN, CLIP_STD, Qwen2VLArch

log = logging.getLogger(__name__)

REWARD_TOKEN = "<|Reward|>"
REWARD_TOKEN_ID = 151657
"""Its id: appended after Qwen2-VL's 151,657 tokens (ids 0..151,656)."""
IMAGE_PIXELS = 256 * 28 * 28
"""200,704: HPSv3's min_pixels = max_pixels."""
WEIGHTS_NAME = "HPSv3.safetensors"
ARCH_FILE = "stream_r1_arch.json"
HEAD_SHAPES = {"0.weight": (1024, "h"), "0.bias": (1024,), "3.weight": (16, 1024), "3.bias": (16,),
               "5.weight": (2, 16), "5.bias": (2,)}
"""`rm_head.*` of the ranknet head ("h" = LLM width); Sequential indices 1, 2, 4 are ReLU / Dropout / ReLU."""

# HPSv3's prompt text, as in hpsv3 1.0.0 (PyPI wheel, hpsv3/dataset/data_collator_qwen.py: INSTRUCTION and
# prompt_with_special_token; trailing spaces and blank lines kept: the model was trained on this exact text).
_INSTRUCTION_LINES: tuple[str, ...] = (  # noqa: E501 (data: one line per entry)
    '',
    'You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being the best. ',
    '',
    '**Visual Quality:**  ',
    'Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:',
    '- **Reasonableness:** The image should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.',
    '- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to interpret, with no blurring or indistinct areas.',
    '- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).',
    '- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.',
    '- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. ',
    '',
    '**Text Alignment:**  ',
    'Assess how well the image matches the textual prompt across the following sub-dimensions:',
    '- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.',
    '- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the image adheres to this style.',
    '- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image logically fit the scenario described in the prompt. The environment should support and enhance the subject without contradictions.',
    '- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be acceptable, but critical attributes should be preserved.',
    '- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the image. The generated content should not introduce elements that conflict with or distort the original description.',
    'Textual prompt - {text_prompt}',
    '',
    '',
    '',
)
INSTRUCTION = "\n".join(_INSTRUCTION_LINES)
PROMPT_WITH_REWARD_TOKEN = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"

HPSV3_ARCH = Qwen2VLArch(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=151658, extra_tokens=1, tie_word_embeddings=False)
"""Qwen2-VL-7B-Instruct with HPSv3's 151,658-row embedding (vision tower as in 2B: 32 x 1280, merger to 3584)."""

PositionMode = Literal["sequential", "mrope"]


def ranknet_head(hidden: int) -> nn.Sequential:
    """HPSv3's default ranknet head; Sequential indices give the checkpoint's `rm_head.{0,3,5}` keys."""
    return nn.Sequential(nn.Linear(hidden, 1024), nn.ReLU(), nn.Dropout(0.05), nn.Linear(1024, 16), nn.ReLU(),
                         nn.Linear(16, 2))


class HPSv3Model(nn.Module):
    """HPSv3 as a `RewardModel`: `score(frames [B, T, 3, H, W] in [0, 1], prompts) -> [B, 1]` = mean mu over the
    T frames (each frame scored as an image against its clip's prompt). `normalize`: (raw - mean) / std with
    `norm` (default (0, 1): raw mu, the scale the reference mixes in; no published calibration)."""

    axes: tuple[str, ...] = ("HPS",)
    differentiable = True

    def __init__(self, qwen: nn.Module, rm_head: nn.Module, tokenizer: TextTokenizer, arch: Qwen2VLArch,
                 norm: tuple[float, float] = (0.0, 1.0), pixels: int = IMAGE_PIXELS,
                 position_mode: PositionMode = "sequential"):
        super().__init__()
        if position_mode not in ("sequential", "mrope"):
            raise ValueError(f"position_mode must be 'sequential' or 'mrope', got {position_mode!r}")
        got = tokenizer.encode(REWARD_TOKEN, add_special_tokens=False)
        if got != [REWARD_TOKEN_ID]:
            raise ValueError(f"tokenizer maps {REWARD_TOKEN} to {got}, expected [{REWARD_TOKEN_ID}]: use "
                             f"Qwen2-VL-7B-Instruct's tokenizer (load_hpsv3 adds the token)")
        self.qwen, self.rm_head, self.tokenizer, self.arch = qwen, rm_head, tokenizer, arch
        self.norm, self.pixels, self.position_mode = norm, pixels, position_mode
        self._prefix = list(tokenizer.encode(CHAT_PREFIX, add_special_tokens=False))
        self._suffix: dict[str, list[int]] = {}

    @property
    def device(self) -> torch.device:
        return self.rm_head[0].weight.device

    def preprocess(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [N, 3, H, W] in [0, 1] -> pixel_values [N*h*w, 1176] (CLIP-normalised), grid_thw [N, 3];
        differentiable."""
        from kornia.enhance import normalize                      # here, not at import: the pack imports this

        a = self.arch
        n, _, height, width = images.shape
        rh, rw = smart_resize(height, width, a.resize_factor, self.pixels, self.pixels)   # 480x832 -> 336x588
        x = images.float()
        if (rh, rw) != (height, width):                           # torch's antialias, not kornia's: docs/kornia.md
            x = F.interpolate(x, size=(rh, rw), mode="bicubic", align_corners=False, antialias=True)
        x = normalize(x.clamp(0.0, 1.0), x.new_tensor(CLIP_MEAN), x.new_tensor(CLIP_STD))
        x = repeat(x, "n c h w -> n tp c h w", tp=a.temporal_patch_size)                   # an image = 2 slices
        pixel_values = patchify(x, a.patch_size, a.temporal_patch_size, a.spatial_merge_size)  # [N*h*w, 1176]
        grid = torch.tensor([[1, rh // a.patch_size, rw // a.patch_size]] * n, device=x.device)
        return pixel_values, grid

    def _text(self, prompt: str) -> list[int]:
        if prompt not in self._suffix:
            ids = list(self.tokenizer.encode(INSTRUCTION.format(text_prompt=prompt) + PROMPT_WITH_REWARD_TOKEN
                                             + CHAT_SUFFIX, add_special_tokens=False))
            if ids.count(REWARD_TOKEN_ID) != 1 or self.arch.image_token_id in ids:
                raise ValueError(f"the prompt must not contain {REWARD_TOKEN} or <|image_pad|>; remove them from "
                                 f"{prompt[:80]!r}")
            self._suffix[prompt] = ids
        return self._suffix[prompt]

    def encode(self, prompts: Sequence[str], image_tokens: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """input_ids, attention_mask [N, L] (right-padded), mm_token_type_ids [N, L] (1 = image), reward
        positions [N]."""
        rows = [self._prefix + [self.arch.vision_start_token_id] + [self.arch.image_token_id] * image_tokens
                + [self.arch.vision_end_token_id] + self._text(p) for p in prompts]
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), PAD_TOKEN_ID, dtype=torch.long)      # [N, L]
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        types = (ids == self.arch.image_token_id).int() * mask.int()
        return ids, mask, types, (ids == REWARD_TOKEN_ID).long().argmax(dim=1)

    def mu_sigma(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """images [N, 3, H, W] in [0, 1], one prompt each -> [N, 2] fp32 (mu, sigma)."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"got {len(prompts)} prompts for {images.shape[0]} images; pass one per image")
        pixel_values, grid = self.preprocess(images.to(self.device))
        per_image = int(grid[0].prod()) // self.arch.spatial_merge_size ** 2            # 1*24*42/4 = 252
        ids, mask, types, pos = (t.to(self.device) for t in self.encode(prompts, per_image))
        positions = None
        if self.position_mode == "sequential":                      # [3, N, L]: 0..L-1 in every M-RoPE section
            positions = torch.arange(ids.shape[1], device=self.device).view(1, 1, -1).expand(3, *ids.shape)
        else:
            self.qwen.model.rope_deltas = None
        out = self.qwen.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                              pixel_values=pixel_values.to(self.qwen.dtype), image_grid_thw=grid,
                              mm_token_type_ids=types, use_cache=False)
        hidden = out.last_hidden_state                                # [N, L, D]
        at = hidden[torch.arange(ids.shape[0], device=self.device), pos]                # [N, D]
        return self.rm_head(at.float())                               # [N, 2]

    def score(self, frames: Tensor, prompts: Sequence[str]) -> Tensor:
        """frames [B, T, 3, H, W] in [0, 1] -> [B, 1] fp32: mean mu over the T frames."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [B, T, 3, H, W] RGB in [0, 1], got {list(frames.shape)}")
        b, t = frames.shape[:2]
        mu = self.mu_sigma(rearrange(frames, "b t c h w -> (b t) c h w"), [p for p in prompts for _ in range(t)])
        return rearrange(mu[:, 0], "(b t) -> b t", b=b).mean(1, keepdim=True)

    def normalize(self, raw: Tensor) -> Tensor:
        return (raw.float() - self.norm[0]) / self.norm[1]


# ---- checkpoint ---------------------------------------------------------------------------------------------
def convert_hpsv3_state_dict(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """HPSv3.safetensors -> (Qwen2-VL state dict in the current layout, ranknet head state dict)."""
    head = {k[len("rm_head."):]: v for k, v in sd.items() if k.startswith("rm_head.")}
    if set(head) != set(HEAD_SHAPES):
        raise ValueError(f"not an HPSv3 checkpoint: expected rm_head.{{0,3,5}}.{{weight,bias}} (ranknet head), "
                         f"got rm_head keys {sorted(head)[:6]}; pass MizzenAI/HPSv3's {WEIGHTS_NAME}")
    out = {}
    for k, v in sd.items():
        if k.startswith("rm_head."):
            continue
        if k.startswith("visual."):                                   # transformers 4.45 layout
            k = "model." + k
        elif k.startswith("model.") and not k.startswith(("model.language_model.", "model.visual.")):
            k = "model.language_model." + k[len("model."):]
        out[k] = v
    return out, head


def resolve_hpsv3_files(path: str | Path) -> tuple[Path, Path | None, Path | None]:
    """(weights, tokenizer folder or None, arch file or None) from HPSv3.safetensors or its folder."""
    p = Path(path).expanduser()
    weights = p / WEIGHTS_NAME if p.is_dir() else p
    if p.is_dir() and not weights.is_file():
        found = sorted(p.glob("*.safetensors"))
        weights = found[0] if len(found) == 1 else weights
    if not weights.is_file():
        raise FileNotFoundError(f"no HPSv3 weights at {path}: expected {WEIGHTS_NAME} (huggingface.co/MizzenAI/"
                                f"HPSv3) or a folder holding it")
    tok = weights.parent / "tokenizer"
    arch = weights.parent / ARCH_FILE
    return weights, tok if tok.is_dir() else None, arch if arch.is_file() else None


def load_hpsv3(path: str | Path, *, tokenizer: str | Path | TextTokenizer | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
               arch: Qwen2VLArch | None = None, norm: tuple[float, float] = (0.0, 1.0), pixels: int = IMAGE_PIXELS,
               position_mode: PositionMode = "sequential") -> HPSv3Model:
    """Load HPSv3 offline, frozen, in eval mode. `path`: HPSv3.safetensors or its folder. `tokenizer`: a
    tokenizer, or the folder of Qwen2-VL-7B-Instruct's tokenizer files (default: `tokenizer/` beside the
    weights); `<|Reward|>` is added when missing. `arch`: default `stream_r1_arch.json` beside the weights, else
    Qwen2-VL-7B."""
    from ..weights_io import read_tensors
    from .model import build_qwen2vl

    weights, tok_dir, arch_file = resolve_hpsv3_files(path)
    if arch is None:
        arch = Qwen2VLArch.from_dict(json.loads(arch_file.read_text())) if arch_file else HPSV3_ARCH
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = _load_tokenizer(tokenizer or tok_dir, weights)
    sd, head_sd = convert_hpsv3_state_dict(read_tensors(weights))
    for k, shape in HEAD_SHAPES.items():
        want = tuple(arch.hidden_size if s == "h" else s for s in shape)
        if tuple(head_sd[k].shape) != want:
            raise ValueError(f"rm_head.{k} is {list(head_sd[k].shape)}, expected {list(want)}: the architecture "
                             f"does not match the file (7B: hidden 3584; others: {ARCH_FILE} beside the weights)")
    qwen = build_qwen2vl(arch, sd, dtype=dtype)
    del sd
    head = ranknet_head(arch.hidden_size)
    head.load_state_dict({k: v.float() for k, v in head_sd.items()}, strict=True)      # the head stays fp32
    model = HPSv3Model(qwen, head, tokenizer, arch, norm, pixels, position_mode)
    model.requires_grad_(False)
    log.info("HPSv3 %s: %s, %d LLM layers", weights, dtype, arch.num_hidden_layers)
    return model.to(device).eval()


def _load_tokenizer(folder, weights: Path) -> TextTokenizer:
    if folder is None or not Path(folder).is_dir():
        raise ValueError(f"HPSv3 needs Qwen2-VL-7B-Instruct's tokenizer: put its tokenizer files in "
                         f"{weights.parent / 'tokenizer'} or pass tokenizer=<folder>")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tok.encode(REWARD_TOKEN, add_special_tokens=False) != [REWARD_TOKEN_ID]:
        tok.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})             # as HPSv3's train.py
    return tok

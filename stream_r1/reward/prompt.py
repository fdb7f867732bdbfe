"""VideoReward's prompt: the chat text around the video and the "detailed_special" rubric with its reward tokens.

The rubric is a fact of the checkpoint's input format: VideoReward was trained on exactly this text
(source: KwaiVGI/VideoAlign prompt_template.py, DETAILED_PROMPT_WITH_SPECIAL_TOKEN; trailing spaces kept).
The chat framing is Qwen2-VL-Instruct's chat template with its default system message, one user turn
[video, rubric] and the generation prompt. The rubric holds `<|VQ_reward|>`, `<|MQ_reward|>` and
`<|TA_reward|>` in that order; the reward head reads the final hidden state at those three positions.

Tokens are built without the processor: text is tokenized once per prompt and the single video placeholder
is expanded to t*h*w/merge^2 `<|video_pad|>` ids, as Qwen2-VL's processor does. Padding is on the right
(VideoAlign's `padding_side="right"`), so with sequential positions a padded row scores exactly like the
same row alone.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

REWARD_TOKENS: tuple[str, str, str] = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
"""The reward tokens VideoAlign added to the Qwen2 tokenizer, in prompt order (= score order VQ, MQ, TA)."""
REWARD_TOKEN_IDS: tuple[int, int, int] = (151657, 151658, 151659)
"""Their ids in the released tokenizer (base Qwen2 vocabulary has 151,657 entries)."""
PAD_TOKEN = "<|endoftext|>"
PAD_TOKEN_ID = 151643
CHAT_PREFIX = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
"""Qwen2-VL chat template up to the user's first content item."""
CHAT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
"""End of the user turn plus the generation prompt (`add_generation_prompt=True`)."""

_DETAILED_SPECIAL_LINES: tuple[str, ...] = (  # noqa: E501 (data: one rubric line per entry)
    '',
    'You are tasked with evaluating a generated video based on three distinct criteria: Visual Quality, Motion Quality, and Text Alignment. Please provide a rating from 0 to 10 for each of the three categories, with 0 being the worst and 10 being the best. Each evaluation should be independent of the others.',
    '',
    '**Visual Quality:**  ',
    'Evaluate the overall visual quality of the video, with a focus on static factors. The following sub-dimensions should be considered:',
    '- **Reasonableness:** The video should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.',
    '- **Clarity:** Evaluate the sharpness and visibility of the video. The image should be clear and easy to interpret, with no blurring or indistinct areas.',
    '- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).',
    '- **Aesthetic and Creativity:** Assess the artistic aspects of the video, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.',
    '- **Safety:** The video should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. ',
    '',
    'Please provide the ratings of Visual Quality: <|VQ_reward|>',
    'END',
    '',
    '**Motion Quality:**  ',
    'Assess the dynamic aspects of the video, with a focus on dynamic factors. Consider the following sub-dimensions:',
    '- **Stability:** Evaluate the continuity and stability between frames. There should be no sudden, unnatural jumps, and the video should maintain stable attributes (e.g., no fluctuating colors, textures, or missing body parts).',
    '- **Naturalness:** The movement should align with physical laws and be realistic. For example, clothing should flow naturally with motion, and facial expressions should change appropriately (e.g., blinking, mouth movements).',
    '- **Aesthetic Quality:** The movement should be smooth and fluid. The transitions between different motions or camera angles should be seamless, and the overall dynamic feel should be visually pleasing.',
    '- **Fusion:** Ensure that elements in motion (e.g., edges of the subject, hair, clothing) blend naturally with the background, without obvious artifacts or the feeling of cut-and-paste effects.',
    '- **Clarity of Motion:** The video should be clear and smooth in motion. Pay attention to any areas where the video might have blurry or unsteady sections that hinder visual continuity.',
    '- **Amplitude:** If the video is largely static or has little movement, assign a low score for motion quality.',
    '',
    'Please provide the ratings of Motion Quality: <|MQ_reward|>',
    'END',
    '',
    '**Text Alignment:**  ',
    'Assess how well the video matches the textual prompt across the following sub-dimensions:',
    '- **Subject Relevance** Evaluate how accurately the subject(s) in the video (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.',
    '- **Motion Relevance:** Evaluate if the dynamic actions (e.g., gestures, posture, facial expressions like talking or blinking) align with the described prompt. The motion should match the prompt in terms of type, scale, and direction.',
    '- **Environment Relevance:** Assess whether the background and scene fit the prompt. This includes checking if real-world locations or scenes are accurately represented, though some stylistic adaptation is acceptable.  ',
    '- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the video adheres to this style.',
    '- **Camera Movement Relevance:** Check if the camera movements (e.g., following the subject, focus shifts) are consistent with the expected behavior from the prompt.',
    '',
    'Textual prompt - {text_prompt}',
    'Please provide the ratings of Text Alignment: <|TA_reward|>',
    'END',
    '',
)
DETAILED_SPECIAL_TEMPLATE: str = "\n".join(_DETAILED_SPECIAL_LINES)
"""VideoAlign's `DETAILED_PROMPT_WITH_SPECIAL_TOKEN`; `{text_prompt}` is the video's text prompt."""


class TextTokenizer(Protocol):
    """What we need of a tokenizer: HF's `encode(text, add_special_tokens=False) -> list[int]`."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def rubric(prompt: str) -> str:
    """The user text VideoReward sees after the video: the rubric with the prompt filled in."""
    return DETAILED_SPECIAL_TEMPLATE.format(text_prompt=prompt)


@dataclass(frozen=True)
class TextBatch:
    """Token inputs of one batch; L = longest row (right-padded)."""

    input_ids: Tensor
    """[B, L] long."""
    attention_mask: Tensor
    """[B, L] long, 1 on real tokens."""
    mm_token_type_ids: Tensor
    """[B, L] int: 0 text, 2 video (transformers 5.x needs it to build M-RoPE positions)."""
    reward_positions: Tensor
    """[B, 3] long: positions of the VQ, MQ, TA reward tokens."""
    lengths: tuple[int, ...]
    """Unpadded length of each row."""

    def to(self, device: torch.device | str) -> "TextBatch":
        return TextBatch(self.input_ids.to(device), self.attention_mask.to(device),
                         self.mm_token_type_ids.to(device), self.reward_positions.to(device), self.lengths)


def check_tokenizer(tokenizer: TextTokenizer) -> None:
    """Refuse a tokenizer whose reward tokens are not single tokens at the released ids 151657-151659."""
    for tok, want in zip(REWARD_TOKENS, REWARD_TOKEN_IDS):
        got = tokenizer.encode(tok, add_special_tokens=False)
        if got != [want]:
            raise ValueError(f"tokenizer maps {tok} to {got}, expected [{want}]: use the tokenizer folder saved "
                             f"with the VideoReward checkpoint (checkpoint-*/tokenizer), which adds the three "
                             f"reward tokens")


class PromptEncoder:
    """Tokenizes prompts into VideoReward's chat layout; token lists are cached per prompt."""

    def __init__(self, tokenizer: TextTokenizer, video_token_id: int, vision_start_id: int, vision_end_id: int,
                 max_length: int, pad_id: int = PAD_TOKEN_ID) -> None:
        check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.video_token_id, self.vision_start_id, self.vision_end_id = video_token_id, vision_start_id, vision_end_id
        self.max_length, self.pad_id = max_length, pad_id
        self._prefix = list(tokenizer.encode(CHAT_PREFIX, add_special_tokens=False))
        self._cache: dict[str, list[int]] = {}
        self._tensors: dict[str, Tensor] = {}

    def _suffix(self, prompt: str) -> list[int]:
        if prompt not in self._cache:
            ids = list(self.tokenizer.encode(rubric(prompt) + CHAT_SUFFIX, add_special_tokens=False))
            counts = [ids.count(t) for t in REWARD_TOKEN_IDS]
            if counts != [1, 1, 1] or self.video_token_id in ids:
                raise ValueError(f"the prompt must not contain the reward or video tokens ({', '.join(REWARD_TOKENS)},"
                                 f" <|video_pad|>); remove them from: {prompt[:80]!r}")
            self._cache[prompt] = ids
        return self._cache[prompt]

    def _suffix_tensor(self, prompt: str) -> tuple[Tensor, Tensor]:
        """(the prompt's token tail as a tensor, positions of the three reward tokens in it [3])."""
        t = self._tensors.get(prompt)
        if t is None:
            ids = self._suffix(prompt)
            t = self._tensors[prompt] = (torch.tensor(ids, dtype=torch.long),
                                         torch.tensor([ids.index(r) for r in REWARD_TOKEN_IDS], dtype=torch.long))
        return t

    def encode(self, prompts: Sequence[str], num_video_tokens: int) -> TextBatch:
        """prompts: B strings; num_video_tokens: merged tokens per video (t*h*w/4; 40*24*42/4 = 10,080).

        Rows are [chat prefix, <|vision_start|>, video pads, <|vision_end|>, rubric(prompt), chat suffix]; the head
        up to <|vision_end|> is one tensor for the batch and each prompt's tail is tokenized once (cached), so a
        batch costs a few tensor copies (128 shapes rows: 0.3 ms, against 80 ms built from Python lists).
        """
        if isinstance(prompts, str):
            raise ValueError("prompts must be a list of strings (one per video), got a single string")
        if not prompts:
            raise ValueError("prompts is empty: pass one prompt per video")
        head = self._prefix + [self.vision_start_id] + [self.video_token_id] * num_video_tokens + [self.vision_end_id]
        tails = [self._suffix_tensor(p) for p in prompts]
        lengths = [len(head) + len(t) for t, _ in tails]
        for p, n in zip(prompts, lengths):
            if n > self.max_length:
                raise ValueError(
                    f"prompt + video need {n} tokens but the reward model accepts {self.max_length}: "
                    f"shorten the prompt ({len(self._suffix(p)) - len(self._suffix(''))} prompt tokens) or feed "
                    f"fewer or smaller frames (frames='fps', or lower max_pixels); video tokens: {num_video_tokens}")
        longest = max(lengths)
        ids = torch.full((len(tails), longest), self.pad_id, dtype=torch.long)  # [B, L]
        ids[:, : len(head)] = torch.tensor(head, dtype=torch.long)
        for i, (t, _) in enumerate(tails):
            ids[i, len(head): lengths[i]] = t
        mask = (torch.arange(longest) < torch.tensor(lengths).unsqueeze(1)).long()
        types = torch.zeros((len(tails), longest), dtype=torch.int32)    # 0 text, 2 video
        types[:, len(head) - 1 - num_video_tokens: len(head) - 1] = 2
        positions = torch.stack([r for _, r in tails]) + len(head)         # [B, 3]: VQ, MQ, TA
        return TextBatch(ids, mask, types, positions, tuple(lengths))

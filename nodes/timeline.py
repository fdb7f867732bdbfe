"""StreamR1Timeline: a prompt timeline ("seconds: prompt" lines or JSON) -> a CONDITIONING that carries it.

The node encodes every distinct prompt once with the stock CLIP (umT5, CLIPLoader type wan) and returns the
first prompt's CONDITIONING with the whole timeline attached under the key `stream_r1_timeline`, so it plugs
into the `positive` input of Stream-R1 Generate / Generate to File / Continue (other nodes just see the first
prompt). Those nodes resolve the times to chunk boundaries for their stream length and switch prompts there.

Data format (also what a visual timeline widget should read and write): the `timeline` widget holds either the
text format or the JSON format documented in `stream_r1/timeline.py`; the node's STRING output is always the
canonical JSON ({"format": "stream_r1.timeline", "version": 1, "default_transition": ..., "entries":
[{"seconds": 0, "prompt": "...", "transition": "recache"}, {"chunk": 40, ...}]}).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor

from ..stream_r1.timeline import TRANSITIONS, PromptSchedule, Timeline
from . import layout

KEY = "stream_r1_timeline"
EXAMPLE = ("0: a red fox walks through fresh snow in a pine forest, soft morning light\n"
           "5 [recache]: the fox starts to run, snow flying behind it\n"
           "10 [recache]: the fox stops at a frozen lake and looks around")


@dataclass(eq=False)
class NodeTimeline:
    """What travels inside the CONDITIONING: the parsed timeline and each prompt's conditioning tensor."""

    timeline: Timeline
    conds: dict[str, Tensor]

    def __deepcopy__(self, memo: dict) -> "NodeTimeline":
        return self                                    # immutable in use: never copied with a conditioning


def _encode(clip: Any, text: str) -> list:
    """CLIPTextEncode's own call (ComfyUI >= 0.3: scheduled encode; older: encode_from_tokens)."""
    tokens = clip.tokenize(text)
    if hasattr(clip, "encode_from_tokens_scheduled"):
        return clip.encode_from_tokens_scheduled(tokens)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def timeline_of(positive: Any) -> Optional[NodeTimeline]:
    try:
        t = positive[0][1].get(KEY)
    except (TypeError, IndexError, AttributeError, KeyError):
        return None
    return t if isinstance(t, NodeTimeline) else None


def timeline_schedule(positive: Any, frames_per_block: int, num_chunks: int, text_dim: int) -> Optional[PromptSchedule]:
    """The stream's PromptSchedule when `positive` comes from StreamR1Timeline (checked against the stream's
    `num_chunks` chunks), else None."""
    t = timeline_of(positive)
    if t is None:
        return None
    contexts = {p: layout.context_from_conditioning([[c, {}]], text_dim) for p, c in t.conds.items()}
    return PromptSchedule.build(t.timeline, frames_per_block, num_chunks, contexts=contexts)


class StreamR1Timeline:
    DESCRIPTION = ("A prompt timeline for one long stream: one 'seconds: prompt' line per prompt, applied at the "
                   "nearest chunk boundary (0.75 s apart). Transitions per line in brackets: recache (re-encode "
                   "the cached frames under the new prompt; smooth), flush (keep only the sink and the last frame; a "
                   "clean break) or none (only the text changes). Connect the output to positive of Stream-R1 "
                   "Generate / Generate to File / Continue.")
    CATEGORY = "Stream-R1/prompt"
    RETURN_TYPES = ("CONDITIONING", "STRING")
    RETURN_NAMES = ("positive", "timeline_json")
    OUTPUT_TOOLTIPS = ("The first prompt's conditioning carrying the whole timeline (Stream-R1 nodes follow it; other "
                       "nodes see the first prompt).",
                       "The timeline as canonical JSON (format stream_r1.timeline, version 1).")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "The text encoder: CLIPLoader with umt5_xxl, type wan."}),
            "timeline": ("STRING", {"multiline": True, "default": EXAMPLE, "tooltip": "One entry per line: "
                         "'seconds: prompt', optionally 'seconds [flush]: prompt'; m:ss times ('1:30: ...') and "
                         "chunk indices ('@40: ...') work too; '#' starts a comment, indented lines continue a "
                         "prompt. JSON ({\"entries\": [{\"seconds\": 0, \"prompt\": ...}]}) is accepted as well."}),
            "default_transition": (list(TRANSITIONS), {"default": "recache", "tooltip": "Transition of entries that "
                                   "name none: recache (smooth, LongLive-style), flush (clean break), none (text "
                                   "only)."}),
        }}

    def build(self, clip: Any, timeline: str, default_transition: str):
        tl = Timeline.parse(timeline, default_transition)
        tl.events()                                   # order / spacing / start checks now; length at generate time
        conds: dict[str, Tensor] = {}
        first_extra: dict = {}
        for i, prompt in enumerate(tl.prompts):
            encoded = _encode(clip, prompt)
            conds[prompt] = encoded[0][0]
            if i == 0:
                first_extra = dict(encoded[0][1])
        first = tl.prompts[0]
        positive = [[conds[first], {**first_extra, KEY: NodeTimeline(tl, conds)}]]
        return positive, json.dumps(tl.to_json(), ensure_ascii=False)

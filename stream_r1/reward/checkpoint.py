"""Find, read and convert released VideoReward files (spec-models §6.7) into the current transformers layout.

Released layout (KlingTeam/VideoReward, formerly KwaiVGI/VideoReward):

    <root>/model_config.json                {data_config, model_config, peft_lora_config, inference_config, ...}
    <root>/checkpoint-<step>/model.pth      full state dict of the PEFT-wrapped model, transformers-4.45 names
    <root>/checkpoint-<step>/tokenizer/     Qwen2 tokenizer with the three reward tokens

`model.pth` keys: `base_model.model.visual.*`, `base_model.model.model.layers.j.<proj>.base_layer.weight`
plus `.lora_A.default.weight` [r, in] / `.lora_B.default.weight` [out, r], `base_model.model.lm_head.weight`,
`base_model.model.rm_head.weight` [1, 1536]. We strip the PEFT prefix, merge every LoRA pair
(W += scale * B @ A, scale = alpha / r = 2, in fp32), drop `.base_layer`, and rename `visual.` -> `model.visual.`,
`model.` -> `model.language_model.` (transformers >= 4.52 nesting). Plain 4.45 and current-layout state dicts
(e.g. our own exports) are accepted too.
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from .qwen2vl_config import Qwen2VLArch

log = logging.getLogger(__name__)

AXES: tuple[str, str, str] = ("VQ", "MQ", "TA")
DOCUMENTED_NORM: dict[str, tuple[float, float]] = {"VQ": (3.6757, 2.2476), "MQ": (1.1646, 1.3811),
                                                    "TA": (2.8105, 2.5121)}
"""(mean, std) of the released VideoReward's raw scores (spec-algorithm §4.2); checked against model_config.json."""
RELEASED_BASE_MODEL = "Qwen/Qwen2-VL-2B-Instruct"
ARCH_KEY = "stream_r1_arch"
"""Optional model_config.json entry (ours) holding a `Qwen2VLArch` dict, for reward models not built on 2B."""
CALIBRATION_KEY = "stream_r1_calibration"
"""Optional model_config.json entry (ours): the inference_config constants were measured for this checkpoint
(e.g. on held-out clips by `training/shapes/reward.py`), so they are not checked against the released ones."""
PEFT_PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")


@dataclass(frozen=True)
class RewardFiles:
    """Paths of one VideoReward checkpoint."""

    weights: Path
    model_config: Path
    tokenizer: Path | None


def _latest_checkpoint(root: Path) -> Path | None:
    steps = []
    for d in root.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", d.name)
        if m and d.is_dir() and any((d / n).is_file() for n in ("model.pth", "model.safetensors")):
            steps.append((int(m.group(1)), d))
    return max(steps)[1] if steps else None


def resolve_reward_files(path: str | Path) -> RewardFiles:
    """Accepts the VideoReward folder (latest checkpoint-* wins), one checkpoint-* folder, or its model.pth."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; pass the VideoReward folder (with model_config.json and "
                                f"checkpoint-*/model.pth) or the model.pth file itself")
    if p.is_dir():
        ckpt = _latest_checkpoint(p) or p
        weights = next((ckpt / n for n in ("model.pth", "model.safetensors") if (ckpt / n).is_file()), None)
        if weights is None:
            if (ckpt / "adapter_model.safetensors").is_file():
                raise ValueError(f"{ckpt} holds only a LoRA adapter (adapter_model.safetensors); the base Qwen2-VL "
                                 f"weights it needs are not in it. Use a checkpoint saved as a full model.pth")
            raise ValueError(f"no model.pth in {p} or a checkpoint-*/ folder inside it; pass the VideoReward folder "
                             f"or the model.pth file")
    else:
        weights = p
    cfg = next((d / "model_config.json" for d in (weights.parent, weights.parent.parent)
                if (d / "model_config.json").is_file()), None)
    if cfg is None:
        raise ValueError(f"no model_config.json next to {weights} or one folder up; it holds the LoRA scale and "
                         f"the score normalisation, copy it from the VideoReward release")
    tok = next((d for d in (weights.parent / "tokenizer", cfg.parent / "tokenizer") if d.is_dir()), None)
    return RewardFiles(weights, cfg, tok)


@dataclass(frozen=True)
class RewardFileConfig:
    """What we use of model_config.json."""

    mean: tuple[float, float, float]
    """Raw-score means, order (VQ, MQ, TA)."""
    std: tuple[float, float, float]
    """Raw-score stds, order (VQ, MQ, TA)."""
    lora_scale: float
    """alpha / r (alpha / sqrt(r) with rsLoRA): 128 / 64 = 2 for the release."""
    output_dim: int = 1
    """rm_head rows: 1 (one scalar per reward token) or 3 (diagonal of the 3x3 is read)."""
    fps: float = 2.0
    max_frame_pixels: int = 200704
    min_frame_pixels: int = 100352
    """Lower pixel bound of the resize (data_config.min_frame_pixels, ours; the release has none: qwen-vl-utils'
    128 * 28^2)."""
    base_model: str = RELEASED_BASE_MODEL
    arch: Qwen2VLArch | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def _section(d: Mapping[str, Any], name: str, path: Path) -> Mapping[str, Any]:
    if not isinstance(d.get(name), Mapping):
        raise ValueError(f"{path} has no '{name}' section; is it VideoReward's model_config.json?")
    return d[name]


def read_model_config(path: str | Path, check_norm: bool = True) -> RewardFileConfig:
    """Parse model_config.json. With check_norm, the six normalisation constants must equal the documented ones
    (unless the file says they were calibrated for its own weights: `CALIBRATION_KEY`)."""
    path = Path(path)
    d = json.loads(path.read_text())
    inf = _section(d, "inference_config", path)
    lora = _section(d, "peft_lora_config", path)
    model = d.get("model_config", {}) or {}
    data = d.get("data_config", {}) or {}
    try:
        mean = tuple(float(inf[f"{a}_mean"]) for a in AXES)
        std = tuple(float(inf[f"{a}_std"]) for a in AXES)
    except KeyError as e:
        raise ValueError(f"{path}: inference_config lacks {e.args[0]}; it needs VQ/MQ/TA _mean and _std") from None
    if check_norm and CALIBRATION_KEY not in d:
        for a, m, s in zip(AXES, mean, std):
            dm, ds = DOCUMENTED_NORM[a]
            if abs(m - dm) > 5e-4 or abs(s - ds) > 5e-4:
                raise ValueError(f"{path}: {a} normalisation ({m}, {s}) differs from the released VideoReward's "
                                 f"({dm}, {ds}); for a reward model of your own pass check_norm=False")
    scale = 0.0
    if lora.get("lora_enable", True):
        r, alpha = float(lora.get("lora_r", 0)), float(lora.get("lora_alpha", 0))
        if r <= 0:
            raise ValueError(f"{path}: peft_lora_config.lora_r must be > 0, got {r}")
        scale = alpha / (math.sqrt(r) if lora.get("use_rslora", False) else r)
    arch = Qwen2VLArch.from_dict(d[ARCH_KEY]) if ARCH_KEY in d else None
    return RewardFileConfig(mean, std, scale, int(model.get("output_dim", 1)), float(data.get("fps", 2.0)),
                            int(data.get("max_frame_pixels", 200704)), int(data.get("min_frame_pixels", 100352)),
                            str(model.get("model_name_or_path", RELEASED_BASE_MODEL)), arch, d)


def _layout(keys: list[str]) -> str:
    if any(k.startswith(PEFT_PREFIX) for k in keys):
        return "peft-4.45"
    if any(k.startswith("model.language_model.") for k in keys):
        return "hf-5"
    if "visual.patch_embed.proj.weight" in keys and any(k.startswith("model.layers.") for k in keys):
        return "hf-4.45"
    sample = ", ".join(sorted(keys)[:5])
    raise ValueError(f"not a VideoReward state dict (keys start {sample} ...); expected the PEFT-wrapped "
                     f"model.pth with keys 'base_model.model.visual.*', 'base_model.model.model.layers.*' and "
                     f"'base_model.model.rm_head.weight' (KlingTeam/VideoReward checkpoint-*/model.pth)")


def _merge_lora(sd: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
    """Fold PEFT LoRA pairs and modules_to_save copies into plain weights (4.45 names, prefix stripped)."""
    out, pairs = {}, {}
    for k, v in sd.items():
        m = _LORA.match(k)
        if m:
            pairs.setdefault(m["module"], {})[m["ab"]] = v
        elif ".lora_" in k:
            raise ValueError(f"unsupported adapter tensor {k} (only plain LoRA on Linear layers is supported)")
        elif ".original_module." in k:
            continue                                             # superseded by modules_to_save.<adapter>
        else:
            out[re.sub(r"\.modules_to_save\.[^.]+\.", ".", k).replace(".base_layer.", ".")] = v
    for module, ab in pairs.items():
        w_key = f"{module}.weight"
        if set(ab) != {"A", "B"} or w_key not in out:
            raise ValueError(f"incomplete LoRA for {module}: need base_layer.weight, lora_A and lora_B")
        w, a, b = out[w_key], ab["A"], ab["B"]                  # [out, in], [r, in], [out, r]
        if a.shape[1] != w.shape[1] or b.shape[0] != w.shape[0] or a.shape[0] != b.shape[1]:
            raise ValueError(f"LoRA shapes of {module} do not fit: W {list(w.shape)}, A {list(a.shape)}, "
                             f"B {list(b.shape)}")
        out[w_key] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    return out


def convert_state_dict(sd: Mapping[str, Tensor], lora_scale: float) -> tuple[dict[str, Tensor], Tensor]:
    """Any accepted layout -> ({current transformers key: tensor} without rm_head, rm_head.weight [out_dim, hidden])."""
    keys = list(sd)
    layout = _layout(keys)
    if layout == "peft-4.45":
        stray = [k for k in keys if not k.startswith(PEFT_PREFIX)]
        if stray:
            raise ValueError(f"mixed layouts: {len(stray)} keys lack the '{PEFT_PREFIX}' prefix, e.g. {stray[:3]}")
        flat = {k[len(PEFT_PREFIX):]: v for k, v in sd.items()}
    else:
        flat = dict(sd)
    flat = _merge_lora(flat, lora_scale)
    rm_head = flat.pop("rm_head.weight", None)
    if rm_head is None:
        raise ValueError("the state dict has no rm_head.weight: it is a plain Qwen2-VL model, not VideoReward")
    if layout == "hf-5":
        return flat, rm_head
    out = {}
    for k, v in flat.items():
        if k.startswith("visual."):
            out["model." + k] = v
        elif k.startswith("model."):
            out["model.language_model." + k[len("model."):]] = v
        else:
            out[k] = v                                           # lm_head.weight
    return out, rm_head

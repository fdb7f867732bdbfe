"""What the keys must be: strip wrapper infixes and prefixes (spec-models §6.4 steps 3-4), tell a DiT from the other
models a file may hold, refuse i2v / VACE / camera extras, rename diffusers keys to Wan's; then the Wan2.1 parameter
table (§1.2): the architecture read from the shapes, checked against a config.json or our metadata, validated
tensor by tensor and for NaN / Inf (§6.4 step 7)."""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import WanConfig
from .formats import EXPORT_FORMAT, dataclass_kwargs, metadata_json
from .read import SourceInfo

WRAPPER_INFIXES: tuple[str, ...] = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
STRIP_PREFIXES: tuple[str, ...] = ("model.diffusion_model.", "diffusion_model.", "model.")
PREFIX_MIN_KEYS = 5
"""A prefix is stripped only when more than this many keys carry it (ComfyUI's rule)."""
HEAD_DIM = 128
"""head_dim of every released Wan2.1 model: num_heads = dim / 128 unless told otherwise."""
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")

# diffusers WanTransformer3DModel -> Wan names (inverse of diffusers' scripts/convert_wan_to_diffusers.py).
_DIFFUSERS_TO_WAN: tuple[tuple[str, str], ...] = (
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^(blocks\.\d+)\.attn1\.to_out\.0\.", r"\1.self_attn.o."),
    (r"^(blocks\.\d+)\.attn1\.to_([qkv])\.", r"\1.self_attn.\2."),
    (r"^(blocks\.\d+)\.attn1\.norm_([qk])\.", r"\1.self_attn.norm_\2."),
    (r"^(blocks\.\d+)\.attn2\.to_out\.0\.", r"\1.cross_attn.o."),
    (r"^(blocks\.\d+)\.attn2\.to_([qkv])\.", r"\1.cross_attn.\2."),
    (r"^(blocks\.\d+)\.attn2\.norm_([qk])\.", r"\1.cross_attn.norm_\2."),
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),  # diffusers' affine cross-attn norm is Wan's norm3
    (r"^(blocks\.\d+)\.ffn\.net\.0\.proj\.", r"\1.ffn.0."),
    (r"^(blocks\.\d+)\.ffn\.net\.2\.", r"\1.ffn.2."),
)

# Things that are not a T2V DiT: kind -> (what it looks like, where it belongs).
_AS_TEXT = "load it as the text encoder (ComfyUI: Load CLIP, type wan; CLI: --text-encoder), not as the DiT checkpoint"
OTHER_KINDS = {
    "wan-vae": ("the Wan2.1 VAE (key decoder.middle.0.residual.0.gamma)",
                "load it as the VAE (ComfyUI: Load VAE; CLI: --vae), not as the DiT checkpoint"),
    "wan2.2-vae": ("the Wan2.2 VAE (key decoder.upsamples.0.upsamples.0.residual.2.weight)",
                   "Stream-R1 uses the Wan2.1 VAE (wan_2.1_vae.safetensors / Wan2.1_VAE.pth)"),
    "umt5 text encoder (wan layout)": ("the umT5-XXL text encoder in Wan's layout (token_embedding.weight)", _AS_TEXT),
    "umt5 text encoder (hf layout)": ("the umT5-XXL text encoder in Hugging Face layout (shared.weight, encoder.block.*)",
                                      "load it as the text encoder (CLI: --text-encoder), not as the DiT checkpoint"),
    "umt5 text encoder (comfy layout)": ("the umT5-XXL text encoder in ComfyUI layout (shared.weight + spiece_model)",
                                         _AS_TEXT),
    "videoreward": ("the VideoReward (Qwen2-VL) reward model (rm_head / visual.* keys)",
                    "load it as the reward model (the reward-model loader), not as the DiT checkpoint"),
    "lora": ("a LoRA adapter (lora_A/lora_B keys)",
             "pass it with --lora (lora=) together with the base DiT checkpoint (e.g. longlive_base.pt + lora.pt)"),
}


def strip_infixes(key: str, found: set[str] | None = None) -> str:
    """`key` without the torch.compile / FSDP / activation-checkpointing infixes (the ones met go into `found`)."""
    for inf in WRAPPER_INFIXES:
        if inf in key:
            key = key.replace(inf, "")
            if found is not None:
                found.add(inf)
    return key


def normalise_names(keys: list[str], path: Path) -> tuple[dict[str, str], str, list[str]]:
    """-> ({clean name: stored name}, stripped prefix, notes)."""
    notes, found = [], set()
    cleaned = {strip_infixes(k, found): k for k in keys}
    if found:
        notes.append(f"removed wrapper infixes {sorted(found)}")
    prefix = ""
    for p in STRIP_PREFIXES:
        if sum(c.startswith(p) for c in cleaned) > PREFIX_MIN_KEYS:
            prefix = p
            notes.append(f"stripped key prefix {p!r}")
            break
    names: dict[str, str] = {}
    for c, k in cleaned.items():
        n = c[len(prefix):] if prefix and c.startswith(prefix) else c
        if n in names:
            raise ValueError(f"{path}: keys {names[n]!r} and {k!r} both map to {n!r} after removing wrapper "
                             f"prefixes; the file mixes two copies of the model")
        names[n] = k
    if len(names) != len(keys):
        raise ValueError(f"{path}: {len(keys) - len(names)} keys collide after removing wrapper infixes")
    return names, prefix, notes


def classify(names: Mapping[str, str]) -> str:
    """Which model a (normalised) key set belongs to."""
    keys = list(names)
    has = lambda s: any(s in k for k in keys)  # noqa: E731
    if has("rm_head.") or has("visual.merger.") or has("visual.patch_embed."):
        return "videoreward"
    if has(".lora_A") or has(".lora_B") or has(".lora_down.") or has(".lora_up."):
        return "lora"
    if "token_embedding.weight" in names:
        return "umt5 text encoder (wan layout)"
    if "shared.weight" in names or any(k.startswith("encoder.block.") for k in keys):
        return "umt5 text encoder (comfy layout)" if "spiece_model" in names else "umt5 text encoder (hf layout)"
    if any(k.endswith("decoder.upsamples.0.upsamples.0.residual.2.weight") for k in keys):
        return "wan2.2-vae"
    if any(k.endswith("decoder.middle.0.residual.0.gamma") for k in keys):
        return "wan-vae"
    if has("condition_embedder.") or any(k.startswith("proj_out.") for k in keys) or has(".attn1.to_q."):
        return "diffusers"
    if "head.modulation" in names or "patch_embedding.weight" in names or has("self_attn.q.weight"):
        return "dit"
    return "unknown"


def refuse_extras(names: Mapping[str, str], path: Path) -> None:
    keys = list(names)
    checks = (
        (("img_emb.", ".k_img.", ".v_img.", "image_embedder.", ".add_k_proj."),
         "image-to-video (i2v / flf2v) extras (img_emb.*, k_img, v_img)"),
        (("vace_",), "VACE control extras (vace_blocks.*, vace_patch_embedding)"),
        (("control_adapter.", "camera"), "camera-control extras (control_adapter.*)"),
    )
    for needles, what in checks:
        hit = next((k for k in keys if any(n in k for n in needles)), None)
        if hit is not None:
            raise ValueError(f"{path} is a Wan2.1 DiT with {what}, e.g. {hit!r}; Stream-R1 streams text-to-video "
                             f"only — use a T2V checkpoint (Wan2.1-T2V-1.3B or a causal student)")


def from_diffusers(names: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, k in names.items():
        for pat, rep in _DIFFUSERS_TO_WAN:
            new, hits = re.subn(pat, rep, n)
            if hits:
                n = new
                break
        out[n] = k
    return out


# ---- the parameter table, config and validation ---------------------------------------------------------------
def expected_dit_shapes(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict tensor of a Wan2.1 T2V DiT with its shape, in the model's own order.

    1.3B: 825 tensors (15 top-level + 30 blocks x 27), 1,418,996,800 parameters (= cfg.num_parameters()).
    """
    d, f, t = cfg.dim, cfg.ffn_dim, cfg.text_dim
    pt, ph, pw = cfg.patch_size
    head_out = cfg.out_dim * pt * ph * pw  # 16 * 1*2*2 = 64
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, cfg.in_dim, pt, ph, pw),  # [1536, 16, 1, 2, 2]
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, t),  # [1536, 4096]
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, cfg.freq_dim),  # [1536, 256]
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d),  # [9216, 1536]
        "time_projection.1.bias": (6 * d,),
    }
    for i in range(cfg.num_layers):
        p = f"blocks.{i}."
        shapes[p + "modulation"] = (1, 6, d)
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"{p}{attn}.{proj}.weight"] = (d, d)
                shapes[f"{p}{attn}.{proj}.bias"] = (d,)
            shapes[f"{p}{attn}.norm_q.weight"] = (d,)
            shapes[f"{p}{attn}.norm_k.weight"] = (d,)
            if attn == "self_attn":  # norm3 sits between the two attentions in Wan's module order
                shapes[p + "norm3.weight"] = (d,)
                shapes[p + "norm3.bias"] = (d,)
        shapes[p + "ffn.0.weight"] = (f, d)  # [8960, 1536]
        shapes[p + "ffn.0.bias"] = (f,)
        shapes[p + "ffn.2.weight"] = (d, f)
        shapes[p + "ffn.2.bias"] = (d,)
    shapes["head.modulation"] = (1, 2, d)
    shapes["head.head.weight"] = (head_out, d)
    shapes["head.head.bias"] = (head_out,)
    return shapes


def infer_dit_fields(shapes: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture fields readable from tensor shapes (everything except num_heads, text_len, eps).

    shapes: {Wan key: tensor or shape}. 1.3B -> dim 1536, ffn_dim 8960, num_layers 30, text_dim 4096, ...
    """
    def shape(k: str) -> tuple[int, ...]:
        if k not in shapes:
            raise ValueError(f"cannot read the architecture: key {k!r} is missing (is this one shard of a "
                             f"sharded checkpoint, or a partial file?)")
        v = shapes[k]
        return tuple(v.shape) if hasattr(v, "shape") else tuple(v)

    pe = shape("patch_embedding.weight")  # [dim, in_dim, pt, ph, pw]
    patch = tuple(pe[2:5])
    blocks = {int(m.group(1)) for k in shapes if (m := _BLOCK_RE.match(k))}
    return {
        "dim": shape("head.modulation")[-1],
        "ffn_dim": shape("blocks.0.ffn.0.weight")[0],
        "num_layers": max(blocks) + 1 if blocks else 0,
        "text_dim": shape("text_embedding.0.weight")[1],
        "freq_dim": shape("time_embedding.0.weight")[1],
        "in_dim": pe[1],
        "out_dim": shape("head.head.weight")[0] // math.prod(patch),
        "patch_size": patch,
    }


def _declared_config(info: SourceInfo) -> tuple[dict[str, Any], str]:
    """Config written next to / inside the file: our metadata, else a Wan-AI (or diffusers) config.json."""
    if info.metadata.get("format") == EXPORT_FORMAT and "wan_config" in info.metadata:
        declared = metadata_json(info.metadata, "wan_config", info.path)
        return dataclass_kwargs(WanConfig, declared), "stream_r1 export metadata"
    cfg_file = info.path.parent / "config.json"
    if not cfg_file.is_file():
        return {}, ""
    try:
        d = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError):
        return {}, ""
    if not isinstance(d, dict):
        return {}, ""
    if d.get("_class_name") == "WanTransformer3DModel":  # diffusers names
        ren = {"num_attention_heads": "num_heads", "in_channels": "in_dim", "out_channels": "out_dim"}
        d = {ren.get(k, k): v for k, v in d.items()}
    elif d.get("_class_name") != "WanModel" and not {"dim", "num_layers"} <= d.keys():
        return {}, ""
    if d.get("model_type", "t2v") != "t2v":
        raise ValueError(f"{cfg_file} declares model_type {d['model_type']!r}; Stream-R1 needs a t2v model")
    return dataclass_kwargs(WanConfig, d), str(cfg_file)


def resolve_config(sd: Mapping[str, torch.Tensor], num_heads: int | None,
                    info: SourceInfo) -> tuple[WanConfig, str]:
    fields = infer_dit_fields(sd)
    declared, source = _declared_config(info)
    for k, v in declared.items():
        if k in fields and fields[k] != v:
            raise ValueError(f"{source} says {k}={v} but the weights in {info.path.name} have {k}={fields[k]}; "
                             f"that config belongs to another model — remove or fix it")
    merged = {**declared, **fields}
    if num_heads is not None:
        if "num_heads" in declared and declared["num_heads"] != num_heads:
            raise ValueError(f"num_heads={num_heads} contradicts {source} (num_heads={declared['num_heads']}); "
                             f"drop the num_heads argument")
        merged["num_heads"] = num_heads
    elif "num_heads" not in declared:
        merged["num_heads"] = _default_heads(fields["dim"])
    try:
        cfg = WanConfig.from_dict(merged)
    except ValueError as e:
        raise ValueError(f"num_heads={merged['num_heads']} does not fit these weights: {e}; "
                         f"{_heads_hint(fields['dim'])}") from None
    return cfg, source or "inferred from shapes"


class HeadsUnknownError(ValueError):
    """num_heads cannot be read from the weights and nothing declares it."""


def _default_heads(dim: int) -> int:
    if dim % HEAD_DIM:
        raise HeadsUnknownError(f"cannot infer num_heads: dim {dim} is not a multiple of {HEAD_DIM} (the head_dim "
                                f"of every released Wan2.1 model) and no config says it; pass num_heads=N — "
                                f"{_heads_hint(dim)}")
    return dim // HEAD_DIM


def _heads_hint(dim: int) -> str:
    ok = [h for h in range(1, dim + 1) if dim % h == 0 and (dim // h) % 2 == 0 and dim // h >= 6]
    pref = sorted(ok, key=lambda h: abs(math.log2(dim // h) - math.log2(HEAD_DIM)))[:3]
    return "valid choices for dim {}: {}".format(dim, ", ".join(f"num_heads={h} (head_dim {dim // h})"
                                                                for h in sorted(pref)) or "none")


def validate(sd: Mapping[str, torch.Tensor], cfg: WanConfig, path: Path, source: str) -> None:
    exp = expected_dit_shapes(cfg)
    missing = [k for k in exp if k not in sd]
    unexpected = [k for k in sd if k not in exp]
    wrong = [f"{k} {tuple(sd[k].shape)} != {exp[k]}" for k in exp if k in sd and tuple(sd[k].shape) != exp[k]]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {label} (first: {v[:5]})" for label, v in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong)) if v]
        raise ValueError(f"{path} does not match a Wan2.1 DiT with dim {cfg.dim}, ffn_dim {cfg.ffn_dim}, "
                         f"{cfg.num_layers} layers, text_dim {cfg.text_dim} (config {source}): " + "; ".join(parts))


def _is_finite(t: torch.Tensor) -> bool:
    """min/max propagate NaN and +-Inf: one fast reduction (isfinite(t).all() is ~50x slower on bf16)."""
    if not t.is_floating_point() or t.device.type == "meta" or t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.reshape(-1))
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_finite(sd: Mapping[str, torch.Tensor], path: Path, with_lora: bool = False) -> None:
    bad = [k for k, t in sd.items() if not _is_finite(t)]
    if bad:
        after = " after merging the LoRA" if with_lora else ""
        raise ValueError(f"{path}: {len(bad)} tensors contain NaN or Inf{after}, first: {bad[:5]}; the file is "
                         f"corrupt or was saved from a diverged run — use another checkpoint")

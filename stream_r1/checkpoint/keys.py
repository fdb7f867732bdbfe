"""Key names: strip wrapper infixes and prefixes (spec-models §6.4 steps 3-4), tell a DiT from the other models a
file may hold, refuse i2v / VACE / camera extras, and rename diffusers keys to Wan's."""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

WRAPPER_INFIXES: tuple[str, ...] = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
STRIP_PREFIXES: tuple[str, ...] = ("model.diffusion_model.", "diffusion_model.", "model.")
PREFIX_MIN_KEYS = 5
"""A prefix is stripped only when more than this many keys carry it (ComfyUI's rule)."""

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
OTHER_KINDS = {
    "wan-vae": ("the Wan2.1 VAE (key decoder.middle.0.residual.0.gamma)",
                "load it as the VAE (ComfyUI: Load VAE; CLI: --vae), not as the DiT checkpoint"),
    "wan2.2-vae": ("the Wan2.2 VAE (key decoder.upsamples.0.upsamples.0.residual.2.weight)",
                   "Stream-R1 uses the Wan2.1 VAE (wan_2.1_vae.safetensors / Wan2.1_VAE.pth)"),
    "umt5 text encoder (wan layout)": ("the umT5-XXL text encoder in Wan's layout (token_embedding.weight)",
                                       "load it as the text encoder (ComfyUI: Load CLIP, type wan; "
                                       "CLI: --text-encoder), not as the DiT checkpoint"),
    "umt5 text encoder (hf layout)": ("the umT5-XXL text encoder in Hugging Face layout (shared.weight, "
                                      "encoder.block.*)", "load it as the text encoder (CLI: --text-encoder), not as the DiT checkpoint"),
    "umt5 text encoder (comfy layout)": ("the umT5-XXL text encoder in ComfyUI layout (shared.weight + "
                                         "spiece_model)", "load it as the text encoder (ComfyUI: Load CLIP, "
                                         "type wan), not as the DiT checkpoint"),
    "videoreward": ("the VideoReward (Qwen2-VL) reward model (rm_head / visual.* keys)",
                    "load it as the reward model (the reward-model loader), "
                    "not as the DiT checkpoint"),
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


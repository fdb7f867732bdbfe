"""Describe a checkpoint without reading its weights (`python -m stream_r1 inspect`): what it is, its format,
family, config and dtypes, or what it is instead of a DiT."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .keys import OTHER_KINDS, HeadsUnknownError, classify, from_diffusers, infer_dit_fields, normalise_names
from .load import build
from .read import dtype_counts, open_state_dict, select_entry, stored_meta


def inspect_checkpoint(path: str | os.PathLike, entry: str | None = None,
                       num_heads: int | None = None) -> dict[str, Any]:
    """Describe any checkpoint (DiT, VAE, text encoder, reward model, LoRA) without reading its weights."""
    raw, info = open_state_dict(path)
    out: dict[str, Any] = {"path": str(info.path), "container": info.container, "files": len(info.files),
                           "size_bytes": info.size_bytes}
    try:
        flat, used, entries = select_entry(raw, entry, info.path)
    except ValueError as e:
        return {**out, "kind": "unknown", "error": str(e)}
    names, _, _ = normalise_names(list(flat), info.path)
    kind = classify(names)
    counts = dtype_counts(names, flat, {"side": set()})
    out.update(kind="wan2.1 dit" if kind in ("dit", "diffusers") else kind, entry=used, entries=entries,
               tensors=len(names), parameters=sum(counts.values()), dtypes=counts, notes=[])
    if kind in OTHER_KINDS:
        out["notes"].append(f"looks like {OTHER_KINDS[kind][0]}; {OTHER_KINDS[kind][1]}")
        return out
    if kind == "unknown":
        out["notes"].append(f"unrecognised key layout; first keys: {list(names)[:8]}")
        return out
    heads_unknown = None
    try:
        try:
            ckpt = build(raw, info, entry=entry, num_heads=num_heads, dtype=None, meta=True)
        except HeadsUnknownError as e:  # report everything else; heads stay unknown
            heads_unknown = str(e)
            ckpt = build(raw, info, entry=entry, num_heads=1, dtype=None, meta=True)
    except ValueError as e:
        out["error"] = str(e)
        try:  # still report what the shapes say
            fields = infer_dit_fields({n: stored_meta(flat, k) for n, k in
                                       (from_diffusers(names) if kind == "diffusers" else names).items()})
            out["config"] = {**fields, "patch_size": list(fields["patch_size"]), "num_heads": num_heads}
        except ValueError:
            pass
        return out
    out.update(format=ckpt.format, family=ckpt.family, cache_policy=ckpt.cache_policy,
               config=ckpt.config.to_dict(), config_source=ckpt.config_source, parameters=ckpt.num_parameters,
               source_dtype=ckpt.source_dtype, dtypes=ckpt.source_dtypes, stream_config=ckpt.stream_config.to_dict(),
               metadata=ckpt.metadata, notes=ckpt.notes, warnings=ckpt.warnings)
    if heads_unknown:
        out["config"]["num_heads"] = None
        out["warnings"] = [heads_unknown, *ckpt.warnings]
    return out


def format_inspection(d: Mapping[str, Any]) -> str:
    """Human-readable report of `inspect_checkpoint`'s dict."""
    size = d.get("size_bytes", 0)
    size_s = f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
    lines = [f"file        {d['path']} ({size_s}, {d.get('container')}, {d.get('files', 1)} file(s))",
             f"kind        {d.get('kind')}"]
    if "format" in d:
        lines.append(f"format      {d['format']}")
    if "family" in d:
        lines.append(f"family      {d['family']} (default cache policy {d.get('cache_policy')})")
    if d.get("config"):
        c = d["config"]
        heads = c.get("num_heads")
        hd = f" (head_dim {c['dim'] // heads})" if heads else " (unknown: pass num_heads)"
        source = f"  [{d['config_source']}]" if d.get("config_source") else ""
        lines.append(f"config      dim {c['dim']}, ffn_dim {c['ffn_dim']}, num_heads {heads}{hd}, "
                     f"num_layers {c['num_layers']}, text_dim {c['text_dim']}, in/out {c['in_dim']}/{c['out_dim']}, "
                     f"patch {tuple(c['patch_size'])}{source}")
    if "parameters" in d:
        lines.append(f"parameters  {d['parameters']:,} ({d.get('tensors', '?')} tensors)")
    if d.get("dtypes"):
        total = sum(d["dtypes"].values()) or 1
        lines.append("dtypes      " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in d["dtypes"].items()))
    if d.get("entries"):
        lines.append(f"entry       {d.get('entry')} (available: {', '.join(d['entries'])})")
    for k, v in (d.get("metadata") or {}).items():
        lines.append(f"metadata    {k}: {v[:120]}")
    for n in d.get("notes", []):
        lines.append(f"note        {n}")
    for w in d.get("warnings", []):
        lines.append(f"warning     {w}")
    if d.get("error"):
        lines.append(f"error       {d['error']}")
    return "\n".join(lines)

"""umT5 text encoder: key maps, every file layout, Wan padding semantics, cache, errors.

All weights and the SentencePiece model are synthetic (spec-models.md §7); nothing is downloaded.
The reference below is our own reading of the Wan-T5 encoder (§5.1), written against Wan parameter names.
"""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stream_r1.text_encoder import (  # noqa: E402
    TEXT_LEN,
    Tokenizer,
    clean_prompt,
    convert_comfy_state_dict,
    convert_wan_state_dict,
    load_text_encoder,
    wan_to_hf_key,
)

D_MODEL, HEADS, D_KV, D_FF, LAYERS, BUCKETS, MAX_DIST = 32, 4, 8, 64, 2, 32, 128
LINEARS = ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.gate.0", "ffn.fc1", "ffn.fc2")
PROMPTS = ["zorap kelin mu", "a quick tivor salemo banid rup kelin zorap mu", "mu"]


# ---- reference forward (Wan layout, fp32) ------------------------------------------------------------
def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6))


def _buckets(length: int) -> torch.Tensor:
    """T5 bidirectional buckets of (key - query): 16 per direction, 8 exact, log-spaced up to 128."""
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # [L, L]
    half = BUCKETS // 2
    out = (rel > 0).long() * half
    n = rel.abs()
    exact = half // 2
    large = exact + (torch.log(n.float() / exact) / math.log(MAX_DIST / exact) * (half - exact)).long()
    return out + torch.where(n < exact, n, large.clamp(max=half - 1))


def reference_encode(w: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ids, mask: [B, L]. Returns [B, L, D] with padded rows zeroed (Wan + DiT re-pad semantics)."""
    w = {k: v.float() for k, v in w.items()}
    b, length = ids.shape
    x = w["token_embedding.weight"][ids]  # [B, L, D]
    buckets = _buckets(length)
    key_mask = (1 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min  # [B, 1, 1, L]
    split = lambda t: t.view(b, length, HEADS, D_KV).transpose(1, 2)  # noqa: E731  [B, H, L, d]
    for i in range(LAYERS):
        p = f"blocks.{i}."
        h = _rms(x, w[p + "norm1.weight"])
        q, k, v = (split(h @ w[p + f"attn.{n}.weight"].T) for n in "qkv")
        bias = w[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)[None]  # [1, H, L, L]
        att = torch.softmax(q @ k.transpose(-1, -2) + bias + key_mask, dim=-1)  # no 1/sqrt(d)
        x = x + (att @ v).transpose(1, 2).reshape(b, length, -1) @ w[p + "attn.o.weight"].T
        h = _rms(x, w[p + "norm2.weight"])
        gate = F.gelu(h @ w[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + ((h @ w[p + "ffn.fc1.weight"].T) * gate) @ w[p + "ffn.fc2.weight"].T
    return _rms(x, w["norm.weight"]) * mask[..., None]


def expected(w: dict[str, torch.Tensor], tok: Tokenizer, prompts: list[str]) -> torch.Tensor:
    ids, mask = tok(prompts)
    return reference_encode(w, ids, mask)


# ---- writers for the real containers -----------------------------------------------------------------
def to_hf_names(wan: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {wan_to_hf_key(k): v for k, v in wan.items()}


def is_linear(wan_key: str) -> bool:
    return any(f".{n}.weight" in wan_key for n in LINEARS)


def quantize(wan: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """fp8 e4m3 per-tensor absmax quantisation of every Linear. Returns (fp8 weights, fp32 scalar scales)."""
    q, s = {}, {}
    for k, v in wan.items():
        if is_linear(k):
            s[k] = (v.abs().max() / 448.0).float()
            q[k] = (v / s[k]).to(torch.float8_e4m3fn)
    return q, s


def dequantized(wan: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """The weights a loader must end up with: fp16-rounded non-linears, fp8(*scale) linears."""
    out = {k: v.half().float() for k, v in wan.items()}
    if fmt == "fp16":
        return out
    q, s = quantize(wan)
    for k in q:
        out[k] = wan[k].to(torch.float8_e4m3fn).float() if fmt == "fp8" else q[k].float() * s[k]
    return out


def write_comfy(path, wan: dict[str, torch.Tensor], spiece: bytes | None, fmt: str) -> None:
    """fmt: fp16 | fp8 (plain float8_e4m3fn cast) | scaled (scaled_fp8 + scale_weight) | comfy_quant."""
    sd = {}
    q, s = quantize(wan)
    for k, v in wan.items():
        name = wan_to_hf_key(k)
        layer = name.removesuffix(".weight")
        if not is_linear(k) or fmt == "fp16":
            sd[name] = v.half()
        elif fmt == "fp8":
            sd[name] = v.to(torch.float8_e4m3fn)
        elif fmt == "scaled":
            sd[name], sd[layer + ".scale_weight"] = q[k], s[k]
            sd[layer + ".scale_input"] = torch.tensor(1.0)
        else:
            sd[name], sd[layer + ".weight_scale"] = q[k], s[k]
            sd[layer + ".input_scale"] = torch.tensor(1.0)
            sd[layer + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    if fmt == "scaled":
        sd["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    if spiece is not None:
        sd["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    save_file(sd, str(path))


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, spiece_bytes: bytes):
    d = tmp_path_factory.mktemp("umt5-xxl")
    (d / "spiece.model").write_bytes(spiece_bytes)
    return d


def assert_matches(enc, ref: torch.Tensor, prompts: list[str], atol: float = 1e-5) -> None:
    out = enc.encode(prompts)
    ids, mask = enc.tokenizer(prompts)
    assert out.shape == (len(prompts), TEXT_LEN, D_MODEL)
    valid = mask.bool()
    assert (out[~valid] == 0).all(), "padded rows must be exactly zero"
    diff = (out[valid] - ref[valid]).abs().max().item()
    assert diff < atol  # measured ~1.3e-6 (sdpa, fp32)


# ---- tests -------------------------------------------------------------------------------------------
def test_key_map():
    assert wan_to_hf_key("token_embedding.weight") == "shared.weight"
    assert wan_to_hf_key("norm.weight") == "encoder.final_layer_norm.weight"
    assert wan_to_hf_key("blocks.23.ffn.gate.0.weight") == "encoder.block.23.layer.1.DenseReluDense.wi_0.weight"
    assert wan_to_hf_key("blocks.0.pos_embedding.embedding.weight") == (
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    )
    assert wan_to_hf_key("blocks.0.self_attn.q.weight") is None


def test_convert_wan_and_comfy(wan_sd):
    hf = convert_wan_state_dict(wan_sd)
    assert len(wan_sd) == 22 and len(hf) == 23
    assert hf["encoder.embed_tokens.weight"] is hf["shared.weight"]
    q, s = quantize(wan_sd)
    k = "blocks.1.ffn.fc2.weight"
    comfy = {wan_to_hf_key(k): q[k], wan_to_hf_key(k).replace(".weight", ".scale_weight"): s[k], "scaled_fp8": torch.empty(0)}
    out = convert_comfy_state_dict(comfy)
    assert set(out) == {wan_to_hf_key(k)}
    torch.testing.assert_close(out[wan_to_hf_key(k)], q[k].float() * s[k], rtol=0, atol=0)


def test_tokenizer_padding(spiece_bytes):
    tok = Tokenizer(spiece_bytes)
    ids, mask = tok(["  zorap&amp;   kelin ", "mu"])
    n = int(mask[0].sum())
    assert ids.shape == mask.shape == (2, TEXT_LEN)
    assert ids[0, n - 1] == 1 and (ids[0, n:] == 0).all() and (mask[0, n:] == 0).all()
    assert clean_prompt("  zorap&amp;amp;\n\t kelin ") == "zorap& kelin"


def test_wan_pth_matches_reference(tmp_path, wan_sd, tokenizer_dir):
    torch.save({k: v.clone() for k, v in wan_sd.items()}, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    enc = load_text_encoder(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", tokenizer=tokenizer_dir)
    assert_matches(enc, expected(wan_sd, enc.tokenizer, PROMPTS), PROMPTS)
    # the same file through a spiece.model path, and batch composition does not change valid rows
    enc2 = load_text_encoder(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", tokenizer=tokenizer_dir / "spiece.model")
    torch.testing.assert_close(enc2.encode(PROMPTS[:1])[0], enc.encode(PROMPTS)[0], rtol=0, atol=1e-6)


def test_wan_model_folder(tmp_path, wan_sd, spiece_bytes):
    (tmp_path / "google" / "umt5-xxl").mkdir(parents=True)
    (tmp_path / "google" / "umt5-xxl" / "spiece.model").write_bytes(spiece_bytes)
    torch.save(wan_sd, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    enc = load_text_encoder(tmp_path)
    assert_matches(enc, expected(wan_sd, enc.tokenizer, PROMPTS), PROMPTS)


@pytest.mark.parametrize("fmt", ["fp16", "fp8", "scaled", "comfy_quant"])
def test_comfy_safetensors(tmp_path, wan_sd, spiece_bytes, fmt):
    path = tmp_path / f"umt5_xxl_{fmt}.safetensors"
    write_comfy(path, wan_sd, spiece_bytes, fmt)
    enc = load_text_encoder(path)  # tokenizer from the embedded spiece_model tensor
    assert enc.dtype == torch.float32
    assert_matches(enc, expected(dequantized(wan_sd, fmt), enc.tokenizer, PROMPTS), PROMPTS)
    # and close to the full-precision weights, within the format's precision
    ref32 = expected(wan_sd, enc.tokenizer, PROMPTS)
    err = ((enc.encode(PROMPTS) - ref32).norm() / ref32.norm()).item()  # relative RMS error
    assert err < (3e-3 if fmt == "fp16" else 0.15)  # measured: fp16 8.7e-4, fp8 variants 0.077-0.078


def test_sharded_hf_folder(tmp_path, wan_sd, spiece_bytes):
    hf = to_hf_names(wan_sd)
    names = sorted(hf)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for file, keys in shards.items():
        save_file({k: hf[k].to(torch.bfloat16) for k in keys}, str(tmp_path / file))
    index = {"weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "spiece.model").write_bytes(spiece_bytes)
    enc = load_text_encoder(tmp_path, dtype=torch.bfloat16)
    assert enc.dtype == torch.bfloat16
    out = enc.encode(PROMPTS)
    ids, mask = enc.tokenizer(PROMPTS)
    assert out.dtype == torch.bfloat16 and (out[~mask.bool()] == 0).all()


def test_truncation_warns(tmp_path, wan_sd, spiece_bytes):
    path = tmp_path / "te.safetensors"
    write_comfy(path, wan_sd, spiece_bytes, "fp16")
    enc = load_text_encoder(path)
    long = " ".join(["zorap kelin tivor salemo"] * 200)
    n = len(enc.tokenizer.sp.encode(long))
    assert n > TEXT_LEN
    with pytest.warns(UserWarning, match=f"last {n - (TEXT_LEN - 1)} tokens were dropped"):
        out = enc.encode([long])
    assert (out[0] != 0).any(dim=-1).all(), "a truncated prompt fills all 512 rows"


def test_cache_hits_skip_the_model(tmp_path, wan_sd, spiece_bytes):
    path = tmp_path / "te.safetensors"
    write_comfy(path, wan_sd, spiece_bytes, "fp16")
    enc = load_text_encoder(path, cache_size=2)
    calls = []
    enc.model.register_forward_hook(lambda m, a, o: calls.append(1))
    first = enc.encode(["mu", "zorap kelin", "mu"])
    assert len(calls) == 1
    again = enc.encode(["zorap kelin", "mu"])
    assert len(calls) == 1
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])
    enc.encode(["tivor"])  # evicts the least recently used ("zorap kelin")
    enc.encode(["mu"])
    assert len(calls) == 2
    enc.encode(["zorap kelin"])
    assert len(calls) == 3


def test_errors(tmp_path, wan_sd):
    dit = tmp_path / "wan2.1_t2v_1.3B_fp16.safetensors"
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(4, 4), "patch_embedding.weight": torch.zeros(4, 16, 1, 2, 2)}, str(dit))
    with pytest.raises(ValueError, match="DiT"):
        load_text_encoder(dit)
    no_tok = tmp_path / "umt5_no_tokenizer.safetensors"
    write_comfy(no_tok, wan_sd, None, "fp16")
    with pytest.raises(ValueError, match="--tokenizer"):
        load_text_encoder(no_tok)
    odd = tmp_path / "odd.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(odd))
    with pytest.raises(ValueError, match="foo.weight"):
        load_text_encoder(odd)
    nvfp4 = {"encoder.final_layer_norm.comfy_quant": torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)}
    with pytest.raises(ValueError, match="nvfp4"):
        convert_comfy_state_dict(nvfp4)
    t5_shared = {k: v for k, v in to_hf_names(wan_sd).items() if "block.1.layer.0.SelfAttention.relative" not in k}
    shared_pos = tmp_path / "t5xxl.safetensors"
    save_file(t5_shared, str(shared_pos))
    with pytest.raises(ValueError, match="shared position bias"):
        load_text_encoder(shared_pos, tokenizer=None)

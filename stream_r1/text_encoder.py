"""umT5-XXL text encoder for use outside ComfyUI (training, benchmarks, scripts).

The transformer is `transformers.UMT5EncoderModel`; this module only owns the file loaders, the key maps
and the Wan tokenisation semantics (spec-models.md §5, §6.2, §6.6):

* Wan-AI `models_t5_umt5-xxl-enc-bf16.pth` (Wan names, `token_embedding` / `blocks.i.*`);
* HF / ComfyUI safetensors (`shared.weight`, `encoder.block.i.*`), fp16 / bf16 / float8_e4m3fn, fp8 "scaled"
  (`scaled_fp8` + `<layer>.scale_weight`) and the newer `comfy_quant` + `weight_scale` form;
* sharded HF folders (`model-0000k-of-0000N.safetensors` + index json) and the Wan-AI model folder.

Tokenisation follows Wan: SentencePiece ids + EOS (id 1), truncated to 511 + EOS, padded with id 0 to
512; padded keys are masked and padded output rows are exactly zero.
"""
from __future__ import annotations

import html
import json
import logging
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # transformers is imported lazily: it costs seconds and only loaders need it
    from transformers import UMT5Config, UMT5EncoderModel

log = logging.getLogger(__name__)

TEXT_LEN = 512
"""umT5 context length used by Wan: every prompt becomes 512 rows (Wan `text_len`)."""
PAD_ID, EOS_ID = 0, 1
"""Special ids of the umT5 SentencePiece model (unk is 2)."""
WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_TOKENIZER_DIR = "google/umt5-xxl"

_WAN_BLOCK_MAP = {  # Wan suffix after "blocks.i." -> HF suffix after "encoder.block.i."
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # GELU branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_WAN_ROOT_MAP = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
_HF_KEY = re.compile(
    r"shared\.weight|encoder\.(embed_tokens|final_layer_norm)\.weight"
    r"|encoder\.block\.\d+\.layer\.0\.(layer_norm|SelfAttention\.(q|k|v|o|relative_attention_bias))\.weight"
    r"|encoder\.block\.\d+\.layer\.1\.(layer_norm|DenseReluDense\.(wi_0|wi_1|wo))\.weight"
)
_QUANT_AUX = (".scale_input", ".input_scale", ".comfy_quant", ".scale_weight", ".weight_scale")


# ---- key maps (pure) ----------------------------------------------------------------------------
def wan_to_hf_key(name: str) -> str | None:
    """Wan-T5 parameter name -> `UMT5EncoderModel` name, or None when `name` is not a Wan-T5 key.

    `blocks.3.ffn.gate.0.weight` -> `encoder.block.3.layer.1.DenseReluDense.wi_0.weight`.
    """
    if name in _WAN_ROOT_MAP:
        return _WAN_ROOT_MAP[name]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m is None or m.group(2) not in _WAN_BLOCK_MAP:
        return None
    return f"encoder.block.{m.group(1)}.{_WAN_BLOCK_MAP[m.group(2)]}"


def _comfy_quant_format(t: Tensor) -> str:
    return json.loads(bytes(t.to(torch.uint8).tolist()).decode("utf-8")).get("format", "?")


def dequantize_state_dict(sd: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Cast every tensor to `dtype`; fp8 weights with a per-layer scale become `W_fp8.float() * scale`.

    Handles Comfy's "scaled fp8" (`scaled_fp8`, `<layer>.scale_weight`, `<layer>.scale_input`) and the newer
    form (`<layer>.comfy_quant` JSON bytes, `<layer>.weight_scale`, `<layer>.input_scale`); those auxiliary
    keys are dropped. Formats other than float8 (int8, nvfp4, mxfp8) raise ValueError.
    """
    for k, t in sd.items():
        if k.endswith(".comfy_quant") and not (fmt := _comfy_quant_format(t)).startswith("float8"):
            raise ValueError(f"{k}: quantisation format {fmt!r} is not supported; use an fp16/bf16/fp8 file")
        if k.endswith(".weight_scale_2"):
            raise ValueError(f"{k}: NVFP4 weights are not supported; use an fp16/bf16/fp8 file")
    scales = {k.rsplit(".", 1)[0] + ".weight": t for k, t in sd.items() if k.endswith((".scale_weight", ".weight_scale"))}
    out = {}
    for k, t in sd.items():
        if k == "scaled_fp8" or k.endswith(_QUANT_AUX):
            continue
        if k in scales:
            if t.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
                raise ValueError(f"{k} has a scale but dtype {t.dtype}; only float8 weights can be dequantised")
            out[k] = (t.float() * scales[k].float()).to(dtype)  # scale: fp32 scalar (or per-row, broadcast)
        else:
            out[k] = t.to(dtype)
    return out


def _unmatched_error(keys: list[str], what: str) -> ValueError:
    hint = ""
    if any(".self_attn." in k or ".cross_attn." in k or k.startswith("patch_embedding") for k in keys):
        hint = " They look like a Wan DiT (diffusion model), not the text encoder."
    elif any(k.startswith(("encoder.conv", "decoder.conv", "encoder.downsamples")) for k in keys):
        hint = " They look like a VAE, not the text encoder."
    shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
    return ValueError(
        f"not a umT5 text-encoder file: {what} keys did not match: {shown}.{hint} Expected "
        f"{WAN_T5_FILE} (Wan layout) or umt5_xxl_*.safetensors (HF/ComfyUI layout)."
    )


def convert_wan_state_dict(sd: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Wan-AI `.pth` state dict -> `UMT5EncoderModel` state dict (embed_tokens tied to shared), cast to `dtype`."""
    sd = dequantize_state_dict(sd, dtype)
    unmatched = [k for k in sd if wan_to_hf_key(k) is None]
    if unmatched:
        raise _unmatched_error(unmatched, "Wan-T5")
    out = {wan_to_hf_key(k): t for k, t in sd.items()}
    if "shared.weight" in out:
        out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out


def convert_comfy_state_dict(sd: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """HF / ComfyUI umT5 state dict (any precision, fp8 scaled included) -> `UMT5EncoderModel` state dict.

    Drops `spiece_model` (read it before calling), quantisation keys and any `decoder.*` / `lm_head.*` of a
    full encoder-decoder checkpoint; ties `encoder.embed_tokens.weight` to `shared.weight`.
    """
    dropped = [k for k in sd if k.startswith(("decoder.", "lm_head."))]
    if dropped:
        log.info("ignoring %d decoder / lm_head tensors", len(dropped))
    sd = {k: t for k, t in sd.items() if k != "spiece_model" and k not in dropped}
    sd = dequantize_state_dict(sd, dtype)
    unmatched = [k for k in sd if not _HF_KEY.fullmatch(k)]
    if unmatched:
        raise _unmatched_error(unmatched, "HF/ComfyUI")
    if "shared.weight" not in sd and "encoder.embed_tokens.weight" in sd:
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
    if "shared.weight" in sd:
        sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    return sd


def convert_state_dict(sd: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Route by layout (§6.6): `token_embedding` / `blocks.` -> Wan; `shared` / `encoder.` -> HF/ComfyUI."""
    keys = [k for k in sd if k not in ("spiece_model", "scaled_fp8")]
    if any(k.startswith(("token_embedding.", "blocks.")) for k in keys):
        return convert_wan_state_dict({k: sd[k] for k in keys}, dtype)
    if any(k.startswith(("shared.", "encoder.block.")) for k in keys):
        return convert_comfy_state_dict(sd, dtype)
    raise _unmatched_error(sorted(keys), "all")


def config_from_state_dict(sd: dict[str, Tensor]) -> UMT5Config:
    """`UMT5Config` read off HF-named tensor shapes (real file: d_model 4096, 64 heads x d_kv 64, d_ff 10240, 24 layers)."""
    from transformers import UMT5Config

    needed = ("shared.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
              "encoder.block.0.layer.0.SelfAttention.q.weight", "encoder.block.0.layer.1.DenseReluDense.wi_0.weight")
    if missing := [k for k in needed if k not in sd]:
        raise ValueError(f"umT5 state dict lacks {missing}: is the file truncated, or one shard of several?")
    vocab, d_model = sd["shared.weight"].shape  # [256384, 4096]
    num_layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.block."))
    bias = sd.get("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight")
    if num_layers > 1 and bias is None:
        raise ValueError(
            "relative_attention_bias is missing from encoder.block.1: this is a T5 with a shared position bias "
            "(e.g. t5xxl for Flux/SD3), not umT5-XXL. Wan needs umt5_xxl (models_t5_umt5-xxl-enc-bf16.pth)."
        )
    buckets, num_heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape  # [32, 64]
    inner = sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]  # 64 * 64 = 4096
    d_ff = sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]  # 10240
    return UMT5Config(
        vocab_size=vocab, d_model=d_model, d_kv=inner // num_heads, d_ff=d_ff, num_layers=num_layers,
        num_heads=num_heads, relative_attention_num_buckets=buckets, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
    )


def build_model(sd: dict[str, Tensor]) -> UMT5EncoderModel:
    """`UMT5EncoderModel` with exactly the tensors of `sd` (HF names); no random init, strict key check."""
    from transformers import UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(config_from_state_dict(sd))
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or extra:
        raise ValueError(f"umT5 state dict does not fit the inferred config: missing {missing[:8]}, unexpected {extra[:8]}")
    model.load_state_dict(sd, strict=True, assign=True)
    model.set_input_embeddings(model.shared)  # re-tie encoder.embed_tokens -> shared after assign
    return model.eval().requires_grad_(False)


# ---- tokenizer ------------------------------------------------------------------------------------
def clean_prompt(text: str) -> str:
    """Wan's cleaning: ftfy (only if installed), HTML unescape twice, whitespace collapsed, stripped."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


class Tokenizer:
    """SentencePiece umT5 tokenizer with Wan padding: ids + EOS, truncated to `text_len`, padded with 0."""

    def __init__(self, model_proto: bytes, text_len: int = TEXT_LEN):
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self.text_len = text_len

    @classmethod
    def from_path(cls, path: str | Path) -> Tokenizer:
        """`spiece.model`, or a folder holding it (the Wan-AI `google/umt5-xxl/` folder)."""
        path = Path(path)
        file = path / "spiece.model" if path.is_dir() else path
        if not file.is_file():
            raise ValueError(f"no SentencePiece model at {file}; pass the google/umt5-xxl folder or its spiece.model")
        return cls(file.read_bytes())

    def __call__(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Returns input_ids and attention_mask, both int64 [B, text_len]; the mask is 1 on tokens incl. EOS."""
        ids = torch.full((len(prompts), self.text_len), PAD_ID, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, prompt in enumerate(prompts):
            toks = self.sp.encode(clean_prompt(prompt))
            if len(toks) > self.text_len - 1:
                dropped = len(toks) - (self.text_len - 1)
                warnings.warn(
                    f"prompt {i} has {len(toks)} tokens; umT5 reads {self.text_len} including EOS, so the last "
                    f"{dropped} tokens were dropped: {prompt[:60]!r}...",
                    stacklevel=2,
                )
                toks = toks[: self.text_len - 1]
            toks = toks + [EOS_ID]
            ids[i, : len(toks)] = torch.tensor(toks)
            mask[i, : len(toks)] = 1
        return ids, mask


# ---- the encoder ----------------------------------------------------------------------------------
class TextEncoder:
    """`UMT5EncoderModel` + tokenizer + an LRU cache of per-prompt embeddings."""

    def __init__(self, model: UMT5EncoderModel, tokenizer: Tokenizer, cache_size: int = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    @property
    def dim(self) -> int:  # umT5-XXL: 4096 (= WanConfig.text_dim)
        return self.model.config.d_model

    @torch.no_grad()
    def _forward(self, prompts: list[str]) -> Tensor:
        ids, mask = self.tokenizer(prompts)  # [B, 512] each
        ids, mask = ids.to(self.device), mask.to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, 512, d_model]
        return out * mask[..., None].to(out.dtype)  # padded rows -> exactly 0

    def encode(self, prompts: list[str]) -> Tensor:
        """prompts: B strings. Returns [B, 512, d_model] on `self.device`, rows past each prompt's EOS are zero.

        Each distinct prompt is encoded once and kept in an LRU cache of `cache_size` entries.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            return torch.zeros(0, self.tokenizer.text_len, self.dim, device=self.device, dtype=self.dtype)
        new = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if new:
            for p, row in zip(new, self._forward(new)):
                self._cache[p] = row.clone()  # own storage: do not pin the whole batch
        rows = []
        for p in prompts:
            self._cache.move_to_end(p)
            rows.append(self._cache[p])
        out = torch.stack(rows)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def clear_cache(self) -> None:
        self._cache.clear()


# ---- loading --------------------------------------------------------------------------------------
def _read_file(path: Path) -> dict[str, Tensor]:
    from .weights_io import read_tensors

    return read_tensors(path)


def _resolve(path: Path) -> tuple[list[Path], Path | None]:
    """Weight files and (if any) a tokenizer found next to them."""
    if path.is_file():
        return [path], None
    if not path.is_dir():
        raise FileNotFoundError(f"text encoder not found: {path}")
    if (path / WAN_T5_FILE).is_file():  # the Wan-AI model folder
        return [path / WAN_T5_FILE], path / WAN_TOKENIZER_DIR
    tok = next((d for d in (path, path.parent / "tokenizer") if (d / "spiece.model").is_file()), None)
    index = sorted(path.glob("*.safetensors.index.json"))
    if index:
        shards = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        return [path / s for s in shards], tok
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pth"))
    if not files:
        raise ValueError(f"no .safetensors / .pth text-encoder file in {path}")
    return files, tok


def load_text_encoder(
    path: str | Path,
    tokenizer: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_size: int = 16,
) -> TextEncoder:
    """Load umT5 from a Wan `.pth`, a HF/ComfyUI `.safetensors` (fp16/bf16/fp8/fp8 scaled) or a folder.

    tokenizer: a `spiece.model`, a folder holding one, or None to use the `spiece_model` tensor inside the
    file (ComfyUI files) or a `spiece.model` found next to the weights.
    """
    files, found_tok = _resolve(Path(path))
    sd: dict[str, Tensor] = {}
    for f in files:
        sd.update(_read_file(f))
    spiece = sd.pop("spiece_model", None)
    model = build_model(convert_state_dict(sd, dtype))
    del sd
    if tokenizer is not None:
        tok = Tokenizer.from_path(tokenizer)
    elif spiece is not None:
        tok = Tokenizer(spiece.numpy().tobytes())
    elif found_tok is not None:
        tok = Tokenizer.from_path(found_tok)
    else:
        raise ValueError(
            f"{path} carries no tokenizer (no `spiece_model` tensor): pass --tokenizer with the google/umt5-xxl "
            "folder (shipped in Wan-AI/Wan2.1-T2V-1.3B) or its spiece.model"
        )
    if tok.sp.get_piece_size() > model.config.vocab_size:
        raise ValueError(f"tokenizer has {tok.sp.get_piece_size()} pieces but the model only {model.config.vocab_size} rows")
    log.info("umT5: %d layers, d_model %d, %s on %s", model.config.num_layers, model.config.d_model, dtype, device)
    return TextEncoder(model.to(device), tok, cache_size=cache_size)

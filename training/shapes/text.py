"""The shapes world's text side: a word-level SentencePiece tokenizer built from the prompt grammar and a tiny
umT5 encoder (transformers' `UMT5EncoderModel`, the real architecture), saved the way ComfyUI ships umT5: one
safetensors file with HF key names and the tokenizer inside as a `spiece_model` uint8 tensor.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor

from stream_r1.shapes import BACKGROUNDS, COLORS, MOTIONS, SHAPES, sample_scene

from ..config import PretrainConfig

GRAMMAR_WORDS = ("a", "an", "and", "on", "background", "gradient", "moving", "left", "right", "up", "down",
                 "bouncing", "rotating", "growing")


def grammar_sentences(count: int = 2000, seed: int = 0) -> list[str]:
    """Training text of the tokenizer: sampled prompts plus every vocabulary word (so none is unknown)."""
    words = {w for name in (*COLORS, *BACKGROUNDS, *SHAPES, *MOTIONS, *GRAMMAR_WORDS) for w in name.split()}
    lines = [sample_scene(seed + i, num_frames=9, width=32, height=32).prompt_at(0) for i in range(count)]
    return lines + sorted(words)


def build_tokenizer(seed: int = 0) -> bytes:
    """A deterministic word-level SentencePiece model (pad 0, eos 1, unk 2 as umT5) of the shapes vocabulary."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(grammar_sentences(seed=seed)), model_writer=buf, vocab_size=64, model_type="word",
        hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2, num_threads=1,
    )
    return buf.getvalue()


def new_text_encoder(pre: PretrainConfig, vocab: int, seed: int):
    """A seeded random tiny `UMT5EncoderModel` (gated-GELU, per-layer relative position bias: umT5)."""
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(vocab_size=vocab, d_model=pre.text_dim, d_kv=pre.text_dim // pre.text_heads, d_ff=pre.text_ff,
                     num_layers=pre.text_layers, num_heads=pre.text_heads, relative_attention_num_buckets=32,
                     relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
                     dropout_rate=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(cfg)
    return model


def text_state_dict(model) -> dict[str, Tensor]:
    """HF key names without the tied `encoder.embed_tokens.weight` (ComfyUI's umt5 files carry `shared.weight`)."""
    return {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()
            if k != "encoder.embed_tokens.weight"}


def save_text_encoder(path: str | Path, model, spiece: bytes, dtype: torch.dtype = torch.float32) -> Path:
    """One ComfyUI-style umT5 file: HF names + `spiece_model` (uint8 bytes of the SentencePiece model)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.to(dtype) for k, v in text_state_dict(model).items()}
    sd["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8).clone()
    tmp = path.with_suffix(".tmp")
    save_file(sd, str(tmp), metadata={"format": "pt", "stream_r1": "shapes-world umT5"})
    tmp.replace(path)
    return path


def encode_tokens(model, ids: Tensor, mask: Tensor) -> Tensor:
    """ids, mask [B, 512] -> [B, L, d] where L = the longest prompt (+EOS) of the batch; rows past EOS are zero.

    Running only the first L positions gives the same rows as the full 512 (padding is masked), and the DiT pads
    the context back to its text_len with zeros.
    """
    n = int(mask.sum(1).max())
    ids, mask = ids[:, :n], mask[:, :n]
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state            # [B, L, d]
    return out * mask[..., None].to(out.dtype)

"""Attention backends: 'auto' falls back to SDPA off CUDA, with a mask and under autograd."""
import pytest
import torch

from stream_r1.wan.attention import auto_attention, resolve_attention, sdpa_attention


def _qkv(lq=40, lk=40, n=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, lq, n, d, generator=g)                  # [B, Lq, n, d]
    k = torch.randn(2, lk, n, d, generator=g) * 2.0
    v = torch.randn(2, lk, n, d, generator=g)
    return q, k, v


def test_auto_falls_back_on_cpu_with_a_mask_and_with_autograd():
    q, k, v = _qkv()
    fn = resolve_attention("auto")
    assert fn is auto_attention
    torch.testing.assert_close(fn(q, k, v), sdpa_attention(q, k, v))
    mask = torch.rand(40, 40) > 0.3
    mask[:, 0] = True
    torch.testing.assert_close(fn(q, k, v, mask), sdpa_attention(q, k, v, mask))
    qg = q.clone().requires_grad_()                                   # training: plain SDPA, gradients flow
    fn(qg, k, v).sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad).all()


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="'auto', 'sdpa', 'cudnn', 'flash'"):
        resolve_attention("split")

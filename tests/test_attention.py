"""Split-KV attention: exact log-sum-exp merge of key ranges, and the wave rule that picks the split."""
import pytest
import torch

from stream_r1.wan.attention import (attention_with_lse, kv_splits, merge_partials, resolve_attention,
                                     sdpa_attention, split_kv_attention)


def _qkv(lq=40, lk=97, n=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, lq, n, d, generator=g)
    k = torch.randn(2, lk, n, d, generator=g) * 2.0          # peaky scores: the merge weights matter
    v = torch.randn(2, lk, n, d, generator=g)
    return q, k, v


def test_attention_with_lse_matches_sdpa_and_logsumexp():
    q, k, v = _qkv()
    out, lse = attention_with_lse(q, k, v)
    assert out.shape == q.shape and lse.shape == (2, 3, 40)
    torch.testing.assert_close(out, sdpa_attention(q, k, v), atol=1e-5, rtol=1e-5)
    s = torch.einsum("bqnd,bknd->bnqk", q, k) / 4.0                  # d ** -0.5 = 1/4
    torch.testing.assert_close(lse, torch.logsumexp(s, -1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lk", [97, 96])                  # 96: equal ranges in one batched call; 97: one call each
@pytest.mark.parametrize("splits", [1, 2, 3, 4, 7])
def test_split_kv_equals_whole_attention(splits, lk):
    q, k, v = _qkv(lk=lk)
    torch.testing.assert_close(split_kv_attention(q, k, v, splits=splits), sdpa_attention(q, k, v),
                               atol=2e-5, rtol=2e-5)


def test_merge_weights_come_from_the_lse_not_equal_halves():
    """Halves with very different mass: an unweighted mean of the parts is far off, the merge is exact."""
    q, k, v = _qkv(lk=64)
    k[:, :32] *= 4.0                                                  # the first half dominates the softmax
    (o1, l1), (o2, l2) = attention_with_lse(q, k[:, :32], v[:, :32]), attention_with_lse(q, k[:, 32:], v[:, 32:])
    whole = sdpa_attention(q, k, v)
    assert (0.5 * (o1 + o2) - whole).abs().max() > 0.1
    torch.testing.assert_close(merge_partials([o1, o2], [l1, l2]), whole, atol=2e-5, rtol=2e-5)


def test_split_backend_falls_back_on_cpu_and_with_a_mask():
    q, k, v = _qkv(lk=40)
    fn = resolve_attention("split")
    torch.testing.assert_close(fn(q, k, v), sdpa_attention(q, k, v))
    mask = torch.rand(40, 40) > 0.3
    mask[:, 0] = True
    torch.testing.assert_close(fn(q, k, v, mask), sdpa_attention(q, k, v, mask))


def test_kv_splits_fills_waves():
    # 832x480, 12 heads, 132 SMs: 37 q-tiles x 12 = 444 CTAs = 3.36 waves -> 2 splits (888 CTAs, 6.7 waves)
    assert kv_splits(4680, 14040, 12, 1, 132) == 2
    assert kv_splits(4680, 9360, 12, 1, 132) == 2
    # tiles that already fill whole waves (4 x 132 = 528 = 44 tiles x 12 heads): no split
    assert kv_splits(44 * 128, 14040, 12, 1, 132) == 1
    # too few keys to split
    assert kv_splits(4680, 1500, 12, 1, 132) == 1
    # each chosen split is predicted >= 5 % cheaper than no split
    for lq, lk, sms in [(4680, 4680, 132), (1560, 14040, 132), (4680, 14040, 114), (9360, 14040, 132)]:
        s = kv_splits(lq, lk, 12, 1, sms)
        tiles = -(-lq // 128) * 12
        if s > 1:
            assert -(-tiles * s // sms) * lk / s <= 0.95 * -(-tiles // sms) * lk


def test_equal_ranges_run_as_one_batched_call(monkeypatch):
    """Equal key ranges are the batch of ONE fused call (separate launches keep the partial wave), with q repeated
    and each range's keys in its own batch row."""
    import stream_r1.wan.attention as A
    calls = []
    real = A.attention_with_lse

    def spy(q, k, v):
        calls.append((q.shape, k.shape))
        return real(q, k, v)
    monkeypatch.setattr(A, "attention_with_lse", spy)
    q, k, v = _qkv(lk=96)
    out = A.split_kv_attention(q, k, v, splits=3)
    assert calls == [((6, 40, 3, 16), (6, 32, 3, 16))]         # [S*B, Lq, n, d], [S*B, Lk/S, n, d]
    torch.testing.assert_close(out, sdpa_attention(q, k, v), atol=2e-5, rtol=2e-5)
    calls.clear()
    A.split_kv_attention(q, k[:, :95], v[:, :95], splits=3)
    assert len(calls) == 3

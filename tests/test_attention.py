"""Wave-split attention: exact log-sum-exp merge of key ranges, and the wave rule that picks the split."""
import pytest
import torch

from stream_r1.wan.attention import (Q_TILE, attention_with_lse, auto_attention, merge_partials, resolve_attention,
                                     sdpa_attention, split_kv_attention, wave_plan)


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


@pytest.mark.parametrize("main_rows", [0, 1, 24])          # rows computed whole before the split ones
@pytest.mark.parametrize("lk", [97, 96])                  # 96: equal ranges in one batched call; 97: one call each
@pytest.mark.parametrize("splits", [1, 2, 3, 4, 7])
def test_split_kv_equals_whole_attention(splits, lk, main_rows):
    q, k, v = _qkv(lk=lk)
    torch.testing.assert_close(split_kv_attention(q, k, v, splits=splits, main_rows=main_rows),
                               sdpa_attention(q, k, v), atol=2e-5, rtol=2e-5)


def test_merge_weights_come_from_the_lse_not_equal_halves():
    """Halves with very different mass: an unweighted mean of the parts is far off, the merge is exact."""
    q, k, v = _qkv(lk=64)
    k[:, :32] *= 4.0                                                  # the first half dominates the softmax
    (o1, l1), (o2, l2) = attention_with_lse(q, k[:, :32], v[:, :32]), attention_with_lse(q, k[:, 32:], v[:, 32:])
    whole = sdpa_attention(q, k, v)
    assert (0.5 * (o1 + o2) - whole).abs().max() > 0.1
    torch.testing.assert_close(merge_partials([o1, o2], [l1, l2]), whole, atol=2e-5, rtol=2e-5)
    head = torch.randn(2, 5, 3, 16)                                   # rows computed whole go first, unchanged
    both = merge_partials([o1, o2], [l1, l2], head)
    assert both.shape == (2, 45, 3, 16) and torch.equal(both[:, :5], head)
    torch.testing.assert_close(both[:, 5:], whole, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", ["split", "auto"])
def test_split_and_auto_fall_back_on_cpu_with_a_mask_and_with_autograd(backend):
    q, k, v = _qkv(lk=40)
    fn = resolve_attention(backend)
    assert backend != "auto" or fn is auto_attention
    torch.testing.assert_close(fn(q, k, v), sdpa_attention(q, k, v))
    mask = torch.rand(40, 40) > 0.3
    mask[:, 0] = True
    torch.testing.assert_close(fn(q, k, v, mask), sdpa_attention(q, k, v, mask))
    qg = q.clone().requires_grad_()                                   # training: plain SDPA, gradients flow
    split_kv_attention(qg, k, v).sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad).all()


def _waves(main_rows, splits, lq, lk, heads=12, batch=1, sms=132):
    """The plan's cost in wave-times of Lk keys (what wave_plan minimises)."""
    ctas = lambda rows, s=1: -(-rows // Q_TILE) * heads * batch * s                  # noqa: E731
    return -(-ctas(main_rows) // sms) + (-(-ctas(lq - main_rows, splits) // sms) / splits if lq > main_rows else 0)


def test_wave_plan_splits_only_the_partial_wave():
    # 832x480, 12 heads, 132 SMs: 37 q-tiles x 12 = 444 CTAs = 3.36 waves. 33 tiles (4224 rows, 396 CTAs) fill 3
    # waves; the other 4 tiles (48 CTAs) run over 2 key ranges (96 CTAs of half length): 3.5 wave-times, not 4.
    for lk in (4680, 9360, 14040):
        assert wave_plan(4680, lk, 12, 1, 132) == (4224, 2)
    assert _waves(4224, 2, 4680, 14040) == 3.5 and _waves(4680, 1, 4680, 14040) == 4
    # whole waves already (44 tiles x 12 = 4 x 132): one plain call
    assert wave_plan(44 * 128, 14040, 12, 1, 132) == (44 * 128, 1)
    # too few keys per range (cross-attention's 512 text tokens), or a batch whose remainder no split shortens
    assert wave_plan(4680, 512, 12, 1, 132) == (4680, 1)
    assert wave_plan(4680, 14040, 12, 2, 132) == (4680, 1)        # 888 CTAs: 6 waves + 96 CTAs, S=2 gives 2 x 1/2
    # under one wave beyond the main part: 13 tiles x 12 = 156 CTAs -> 11 tiles whole, 2 tiles x 12 x 4 ranges
    assert wave_plan(1560, 14040, 12, 1, 132) == (1408, 4)
    # every plan is a whole number of tiles, S divides Lk, and it is predicted >= 5 % cheaper than one call
    for lq, lk, b, sms in [(4680, 4680, 1, 132), (1560, 14040, 1, 132), (4680, 14040, 1, 114), (9360, 14040, 1, 132),
                           (4680, 14040, 3, 132), (3120, 6240, 1, 78), (6240, 12480, 2, 108)]:
        main, s = wave_plan(lq, lk, 12, b, sms)
        if s > 1:
            assert main % Q_TILE == 0 and main < lq and lk % s == 0
            assert _waves(main, s, lq, lk, batch=b, sms=sms) <= 0.95 * _waves(lq, 1, lq, lk, batch=b, sms=sms)
        else:
            assert main == lq


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
    out = A.split_kv_attention(q, k, v, splits=3, main_rows=32)  # only the last 8 query rows are split
    assert calls == [((6, 8, 3, 16), (6, 32, 3, 16))]
    torch.testing.assert_close(out, sdpa_attention(q, k, v), atol=2e-5, rtol=2e-5)
    calls.clear()
    A.split_kv_attention(q, k[:, :95], v[:, :95], splits=3)
    assert len(calls) == 3

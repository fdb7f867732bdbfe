"""W_intra / W_inter algebra and the BalancedOverall penalty (spec-algorithm §4.3-4.5, §5.3-5.5, §13.8)."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist

from stream_r1.reward.weights import (BalancedOverall, IntraConfig, axis_weights, combine_axes, factorize,
                                      inter_weight, intra_weights, reward_signal)


def saliency(b=2, f=6, h=5, w=7, seed=0):
    return torch.rand(b, f, h, w, generator=torch.Generator().manual_seed(seed)) ** 3


def test_w_intra_invariants():
    cfg = IntraConfig()
    s = saliency()
    w, tau, sig = factorize(s, cfg)
    torch.testing.assert_close(w.mean(dim=(1, 2, 3)), torch.ones(2))                  # mean 1 per sample
    torch.testing.assert_close(sig.mean(dim=(2, 3)), torch.ones(2, 6))                # each frame's spatial mean 1
    torch.testing.assert_close(tau.mean(dim=1), torch.ones(2))
    assert (tau.amax(1) / tau.amin(1) <= 1 / cfg.temporal_floor + 1e-5).all()         # temporal max/min <= 5
    # spatial floor is applied before the per-frame mean normalisation: sigma >= sigma_min / mean(floored)
    lo, hi = s.amin((2, 3), keepdim=True), s.amax((2, 3), keepdim=True)
    floored = ((s - lo) / (hi - lo)).clamp_min(cfg.spatial_floor)
    torch.testing.assert_close(sig.amin(dim=(2, 3)), cfg.spatial_floor / floored.mean((2, 3)))
    assert (sig >= cfg.spatial_floor / floored.mean((2, 3), keepdim=True) - 1e-6).all()


def test_zero_strength_gives_uniform_weights_and_flat_maps_are_safe():
    s = saliency()
    w, tau, sig = factorize(s, IntraConfig(spatial_strength=0.0, temporal_strength=0.0))
    torch.testing.assert_close(w, torch.ones_like(w))
    w, _, _ = factorize(torch.full((1, 3, 4, 4), 2.0))
    torch.testing.assert_close(w, torch.ones_like(w))                                 # range <= 1e-8 -> ones
    noisy = 1.0 + 1e-4 * saliency(1)
    w, _, _ = factorize(noisy, IntraConfig(flat_relative_range=1e-2))                 # §8.9 option
    torch.testing.assert_close(w, torch.ones_like(w))


def test_permuting_frames_permutes_the_temporal_profile():
    s = saliency(1, 8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    w, tau, _ = factorize(s)
    w_p, tau_p, _ = factorize(s[:, perm])
    torch.testing.assert_close(tau_p, tau[:, perm])
    torch.testing.assert_close(w_p, w[:, perm])


def test_adaptive_softmax_favours_the_weaker_axis():
    z = torch.tensor([[0.5, -1.0, 2.0]])                                              # axis 1 is weakest
    w = axis_weights(z)
    assert int(w.argmax()) == 1 and int(w.argmin()) == 2
    torch.testing.assert_close(w, torch.softmax(-z, -1))
    maps = torch.zeros(1, 3, 2, 4, 4)
    maps[0, 0, :, 0, 0] = maps[0, 1, :, 1, 1] = maps[0, 2, :, 2, 2] = 1.0
    s, _ = combine_axes(maps, z)
    assert s[0, 0, 1, 1] > s[0, 0, 0, 0] > s[0, 0, 2, 2]
    torch.testing.assert_close(axis_weights(z, temperature=1e3), torch.full((1, 3), 1 / 3), atol=1e-3, rtol=0)


def test_per_axis_normalisation_fix_versus_reference_mix():
    maps = torch.zeros(1, 2, 1, 2, 2)
    maps[0, 0, 0, 0, 0] = 1000.0                                                      # strong-gradient axis
    maps[0, 1, 0, 1, 1] = 1.0                                                         # weak-gradient axis
    z = torch.tensor([[2.0, -2.0]])                                                   # ... but axis 1 scores worse
    fixed, _ = combine_axes(maps, z, IntraConfig(normalize_axes=True))
    ref, _ = combine_axes(maps, z, IntraConfig(normalize_axes=False))
    assert fixed[0, 0, 1, 1] > fixed[0, 0, 0, 0]                                      # the weaker axis wins
    assert ref[0, 0, 0, 0] > ref[0, 0, 1, 1]                                          # raw scales dominate (§8.4)
    mx, _ = combine_axes(maps, z, IntraConfig(combine="max"))
    mean, w = combine_axes(maps, z, IntraConfig(combine="mean"))
    assert mx.shape == mean.shape == (1, 1, 2, 2) and torch.equal(w, torch.full((1, 2), 0.5))


def test_intra_weights_shape_and_global_branch():
    lat = torch.rand(2, 3, 5, 6, 8)
    z = torch.randn(2, 3)
    iw = intra_weights(lat, z)
    assert iw.w_intra.shape == (2, 5, 1, 6, 8) and iw.w_intra.dtype == torch.float32
    torch.testing.assert_close(iw.w_intra.mean(dim=(1, 2, 3, 4)), torch.ones(2))
    g = intra_weights(lat, z, IntraConfig(factorized=False))
    torch.testing.assert_close(g.w_intra.mean(dim=(1, 2, 3, 4)), torch.ones(2))
    assert (g.temporal == 1).all()
    with pytest.raises(ValueError, match="spatial_floor"):
        IntraConfig(spatial_floor=1.5)


def test_inter_weight_and_reward_modes():
    r = torch.tensor([0.0, 0.5, -1.0])
    w = inter_weight(r, beta=2.0)
    assert w.shape == (3, 1, 1, 1, 1) and w.dtype == torch.float32
    torch.testing.assert_close(w.flatten(), torch.exp(2 * r))
    torch.testing.assert_close(inter_weight(torch.tensor([10.0]), clip=3.0).flatten(), torch.exp(torch.tensor([6.0])))
    z = torch.tensor([[1.0, 2.0, 3.0]])
    axes = ("VQ", "MQ", "TA")
    assert reward_signal(z, axes, "MQ").item() == 2.0 and reward_signal(z, axes, "Overall").item() == 2.0
    with pytest.raises(ValueError, match="reward_mode"):
        reward_signal(z, axes, "Aesthetic")
    with pytest.raises(ValueError, match="balancer"):
        reward_signal(z, axes, "BalancedOverall")


def test_batch_inter_norm_cancels_the_balanced_overall_penalty():
    """reward.inter_norm='batch' (the shapes recipes) divides W_inter by its batch mean; BalancedOverall's penalty
    is one factor exp(-beta lambda p) on every rollout of the batch, so it drops out exactly: the normalised
    weights equal Overall's. Without the normalisation (the paper's form) they differ by that factor."""
    from stream_r1.reward.weights import normalize_inter
    g = torch.Generator().manual_seed(1)
    bal = BalancedOverall(window=8, warmup=4, lam=0.5)
    axes = bal.axes
    for step in range(8):                                         # axes that improve at different rates
        bal.update(torch.randn(4, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.3, -0.2]) * step)
    z = torch.randn(4, 3, generator=g)
    r_bal = reward_signal(z, axes, "BalancedOverall", bal)
    p = bal.penalty()
    assert p > 0.1
    r_all = reward_signal(z, axes, "Overall")
    w_bal, w_all = inter_weight(r_bal, beta=2.0), inter_weight(r_all, beta=2.0)
    torch.testing.assert_close(w_bal, w_all * math.exp(-2.0 * 0.5 * p), rtol=1e-5, atol=0)   # paper: penalised
    assert not torch.allclose(w_bal, w_all, rtol=1e-2)
    torch.testing.assert_close(normalize_inter(w_bal), normalize_inter(w_all), rtol=1e-6, atol=0)   # cancelled
    torch.testing.assert_close(normalize_inter(w_all).mean(), torch.tensor(1.0))
    calls = []
    normalize_inter(w_all, lambda t: calls.append(t.tolist()))    # the all_reduce sees [sum, count] in float64
    assert calls == [[float(w_all.sum()), 4.0]]


def _hand_penalty(hist):
    deltas = []
    for h in hist:
        v = torch.tensor(h, dtype=torch.float64)
        deltas.append(v[len(v) // 2:].mean() - v[: len(v) // 2].mean())
    return float(torch.stack(deltas).std())


def test_balanced_overall_penalty_warmup_window_and_state():
    g = torch.Generator().manual_seed(0)
    bal = BalancedOverall(window=6, warmup=5, lam=0.5, reference=True)
    seen = []
    for step in range(1, 10):
        z = torch.randn(2, 3, generator=g)
        seen.append(z[0].tolist())                                                    # reference: sample 0 only
        r = bal.update(z)
        if step < 5:
            torch.testing.assert_close(r, z.mean(1))                                  # warm-up: no penalty
        else:
            hist = [[s[a] for s in seen[-6:]] for a in range(3)]
            torch.testing.assert_close(r, z.mean(1) - 0.5 * _hand_penalty(hist), rtol=1e-6, atol=1e-6)
    state = bal.state_dict()
    twin = BalancedOverall(window=6, warmup=5, lam=0.5, reference=True)
    twin.load_state_dict(state)
    z = torch.randn(1, 3, generator=g)
    torch.testing.assert_close(bal.update(z), twin.update(z))
    with pytest.raises(ValueError, match="axes"):
        BalancedOverall(axes=("VQ", "MQ")).load_state_dict(state)


def test_balanced_overall_synchronises_over_a_gloo_group():
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        synced, local = BalancedOverall(window=8, warmup=2), BalancedOverall(window=8, warmup=2, sync=False)
        g = torch.Generator().manual_seed(2)
        for _ in range(6):
            z = torch.randn(3, 3, generator=g)
            torch.testing.assert_close(synced.update(z), local.update(z))
        assert synced.penalty() > 0
        torch.testing.assert_close(torch.tensor(synced.state_dict()["history"]["MQ"][-1]), z[:, 1].mean())
    finally:
        dist.destroy_process_group()


# ---- the controlled test's tools: effective sample size, beta for a target ESS, the shuffled control -------------
def test_effective_sample_size_bounds():
    from stream_r1.reward.weights import effective_sample_size
    assert effective_sample_size(torch.ones(16)) == pytest.approx(16.0)
    assert effective_sample_size(torch.tensor([1.0] + [0.0] * 15)) == pytest.approx(1.0)
    assert effective_sample_size(torch.tensor([1.0, 1.0, 2.0])) == pytest.approx(16 / 6)


def test_beta_for_ess_hits_the_target_on_average():
    from stream_r1.reward.weights import beta_for_ess
    r = torch.randn(128, generator=torch.Generator().manual_seed(3))
    beta = beta_for_ess(r, 16, fraction=0.5, draws=512, seed=1)
    g = torch.Generator().manual_seed(9)
    ess = []
    for _ in range(2000):
        w = torch.exp(beta * r[torch.randperm(128, generator=g)[:16]].double())
        ess.append(float(w.sum() ** 2 / (w ** 2).sum()))
    assert sum(ess) / len(ess) == pytest.approx(8.0, rel=0.03)
    assert beta_for_ess(r, 16, fraction=0.25) > beta > beta_for_ess(r, 16, fraction=0.75)
    assert beta_for_ess(torch.zeros(32), 16) == 64.0             # rewards that do not differ: any beta keeps all
    with pytest.raises(ValueError, match="need >= batch"):
        beta_for_ess(r[:8], 16)


def test_shuffled_control_keeps_the_values_and_drops_the_pairing():
    from stream_r1.reward.weights import shuffled_control
    g = torch.Generator().manual_seed(0)
    w = torch.arange(1.0, 9.0).view(8, 1, 1, 1, 1)
    maps = torch.arange(8.0).view(8, 1, 1, 1, 1).expand(8, 3, 1, 2, 2).clone()
    for _ in range(50):
        ws, ms = shuffled_control(w, maps, g)
        assert sorted(ws.flatten().tolist()) == w.flatten().tolist()            # same weight statistics
        assert not bool((ws.flatten() == w.flatten()).any())                    # no rollout keeps its own weight
        assert torch.equal(ms[:, 0, 0, 0, 0], torch.tensor([7.0, 0, 1, 2, 3, 4, 5, 6]))   # b gets b-1's map
    one = torch.ones(1, 1, 1, 1, 1)
    assert shuffled_control(one, None, g) == (one, None)

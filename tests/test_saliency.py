"""Saliency extraction and its mapping onto the causal latent grid (spec-algorithm §5.1-5.2, §8.1, §13.7/13.9)."""
import pytest
import torch
from einops import rearrange
from torch import Tensor

from stream_r1.reward.checkpoint import AXES
from stream_r1.reward.model import load_video_reward
from stream_r1.reward.preprocess import VideoInputConfig, preprocess_video
from stream_r1.reward.qwen2vl_config import CLIP_STD
from stream_r1.reward.saliency import (gradient_saliency, latent_frame_sets, latent_frames_for_video,
                                       latent_saliency, temporal_overlap_matrix, to_latent_grid)
from stream_r1.reward.synthetic import write_synthetic_checkpoint

SMALL = VideoInputConfig(min_pixels=28 * 28)


def test_overlap_matrix_80_frames_is_the_exact_causal_mapping():
    sets = [(2 * j, 2 * j + 1) for j in range(40)]                  # Stream-R1 reference: 80 frames, 40 patches
    a = temporal_overlap_matrix(sets, 21)
    torch.testing.assert_close(a.sum(1), torch.ones(21))
    assert a[0, 0] == 1.0 and a[0].count_nonzero() == 1
    for k in range(1, 20):
        torch.testing.assert_close(a[k, 2 * k - 2:2 * k + 1], torch.tensor([0.25, 0.5, 0.25]))
        assert a[k].count_nonzero() == 3
    torch.testing.assert_close(a[20, 38:], torch.tensor([1 / 3, 2 / 3]))  # frame 80 was dropped


def test_overlap_matrix_with_padding_and_sparse_sampling():
    sets = [(2 * j, 2 * j + 1) for j in range(40)] + [(80,)]        # 81 frames padded to 82: patch 40 = {80}
    a = temporal_overlap_matrix(sets, 21)
    torch.testing.assert_close(a[20, 38:], torch.tensor([0.25, 0.5, 0.25]))
    idx = torch.linspace(0, 80, 10).round().long().tolist()        # fps=2: 10 frames in 5 patches
    sparse = [tuple(idx[2 * j:2 * j + 2]) for j in range(5)]
    b = temporal_overlap_matrix(sparse, 21)
    torch.testing.assert_close(b.sum(1), torch.ones(21))
    assert (b >= 0).all() and b[0, 0] == 1.0 and b[20, 4] == 1.0   # ends covered directly
    assert b[10].count_nonzero() >= 1


def test_latent_grouping_matches_the_vae():
    from stream_r1.vae import VAEConfig, WanVAE

    torch.manual_seed(0)
    vae = WanVAE(VAEConfig.tiny()).eval()
    video = torch.rand(1, 3, 9, 8, 8) * 2 - 1
    sets = latent_frame_sets(latent_frames_for_video(9))
    assert sets == [(0,), (1, 2, 3, 4), (5, 6, 7, 8)]
    with torch.no_grad():
        base = vae.encode(video)
        for i in (0, 1, 4, 5, 8):                                  # group edges
            bumped = video.clone()
            bumped[:, :, i] += 0.5
            changed = (vae.encode(bumped) - base).abs().amax(dim=(0, 1, 3, 4)) > 1e-6   # [F_lat]
            first = int(changed.float().argmax())
            assert i in sets[first] and not changed[:first].any()   # frame i first shows up in its own latent


def test_to_latent_grid_maps_time_and_space():
    maps = torch.zeros(1, 3, 4, 6)                                  # [A=1, T_s=3 patches, h, w]
    maps[0, 1] = 1.0                                                # patch 1 = frames (2, 3)
    out = to_latent_grid(maps, [(0, 1), (2, 3), (4, 4)], (2, 8, 12))
    assert out.shape == (1, 2, 8, 12)
    torch.testing.assert_close(out[0, 0], torch.zeros(8, 12))       # latent 0 <- frame 0 only
    torch.testing.assert_close(out[0, 1], torch.full((8, 12), 0.5))  # latent 1 <- frames 1..4: 2 of 4 in patch 1


class RegionReward(torch.nn.Module):
    """Stand-in with the VideoRewardModel patch interface whose score reads only one patch-grid region.

    Each row's (y, x) is derived by index arithmetic from the documented Qwen2-VL order (t, h/2, w/2, 2, 2),
    independently of the library's inverse map.
    """

    axes, differentiable = AXES, True

    def __init__(self, region: tuple[slice, slice]):
        super().__init__()
        self.region, self.video = region, SMALL

    def preprocess(self, frames: Tensor):
        return preprocess_video(frames, self.video)

    def encode_prompts(self, prompts, video):
        return None

    def forward_patches(self, pv: Tensor, grid: Tensor, text) -> Tensor:
        t, h, w = grid[0].tolist()
        n = torch.arange(pv.shape[0]) % (t * h * w)
        bx, rest = n % 2, n // 2
        by, rest = rest % 2, rest // 2
        wb, rest = rest % (w // 2), rest // (w // 2)
        hb = rest % (h // 2)
        y, x = 2 * hb + by, 2 * wb + bx
        inside = (y >= self.region[0].start) & (y < self.region[0].stop) & (x >= self.region[1].start) & (
            x < self.region[1].stop)
        per_row = (pv ** 2).sum(-1) * inside                         # [B*N]
        score = per_row.view(grid.shape[0], -1).sum(1)               # [B]
        return torch.stack([score, 2 * score, 3 * score], dim=1)

    def normalize(self, raw: Tensor) -> Tensor:
        return raw


def test_region_reward_gives_saliency_in_that_region():
    model = RegionReward((slice(1, 3), slice(3, 5)))                 # rows 1-2, cols 3-4 of a 4 x 6 patch grid
    sal = gradient_saliency(model, torch.rand(1, 4, 3, 56, 84) + 0.1, ["x"], target="patches")
    assert sal.maps.shape == (1, 3, 2, 4, 6)
    inside = torch.zeros(4, 6, dtype=torch.bool)
    inside[1:3, 3:5] = True
    m = sal.maps[0, 0]                                               # axis MQ, [t, h, w]
    assert (m[:, inside] > 0).all() and (m[:, ~inside] == 0).all()
    rows = rearrange(m, "t (hb mh) (wb mw) -> (t hb wb mh mw)", mh=2, mw=2)   # back to model row order
    reference = rows.view(2, 4, 6)                                   # the reference's row-major reshape
    assert (reference[:, ~inside] > 0).any()                         # ... puts saliency outside the region


@pytest.fixture(scope="module")
def tiny_reward(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    write_synthetic_checkpoint(root, seed=1)
    return load_video_reward(root, dtype=torch.float32, video=SMALL)


def test_patch_saliency_equals_pooled_pixel_gradients(tiny_reward):
    """No resize: d/dpixel = d/dP / std_c, so ||d/dP|| per patch = sqrt(sum std_c^2 (d/dpixel)^2) over its block."""
    x = torch.rand(1, 4, 3, 56, 84, generator=torch.Generator().manual_seed(3))
    patches = gradient_saliency(tiny_reward, x, ["a red circle"], target="patches")
    pixels = gradient_saliency(tiny_reward, x, ["a red circle"], target="pixels")
    assert patches.axes == ("MQ", "VQ", "TA") and pixels.maps.shape == (1, 3, 4, 56, 84)
    torch.testing.assert_close(patches.scores.raw, pixels.scores.raw)
    # recompute the pixel gradient with channels kept, then pool exactly as the patch norm does
    xg = x.clone().requires_grad_(True)
    raw = tiny_reward.score(xg, ["a red circle"])
    std = torch.tensor(CLIP_STD).view(1, 1, 3, 1, 1)
    for i, axis in enumerate(patches.axes):
        (g,) = torch.autograd.grad(raw[0, AXES.index(axis)], xg, retain_graph=True)
        e = (g * std) ** 2                                           # [1, 4, 3, 56, 84]
        pooled = e.sum(2).view(1, 2, 2, 4, 14, 6, 14).sum(dim=(2, 4, 6)).sqrt()   # [1, t, h, w]
        torch.testing.assert_close(patches.maps[:, i], pooled, rtol=1e-4, atol=1e-7)
        assert pooled.std() > 0


def test_latent_saliency_shape_and_scores(tiny_reward):
    x = torch.rand(1, 9, 3, 56, 84)
    sal = gradient_saliency(tiny_reward, x, ["a"], target="patches")
    assert sal.frame_sets[-1] == (8,) and sal.mode == "all/pad-last"
    lat = latent_saliency(sal, (latent_frames_for_video(9), 7, 10))
    assert lat.shape == (1, 3, 3, 7, 10) and (lat >= 0).all()
    torch.testing.assert_close(sal.z()[:, 0], sal.scores.normalized[:, 1])   # MQ first


def test_non_differentiable_or_wrong_target_is_refused(tiny_reward):
    with pytest.raises(ValueError, match="target"):
        gradient_saliency(tiny_reward, torch.rand(1, 2, 3, 56, 84), ["a"], target="latents")
    with pytest.raises(ValueError, match="subset"):
        gradient_saliency(tiny_reward, torch.rand(1, 2, 3, 56, 84), ["a"], axes=("XX",))


def test_reward_weights_for_a_batch(tiny_reward):
    from stream_r1.reward.dmd_weights import reward_weights
    from stream_r1.reward.weights import BalancedOverall

    x = torch.rand(2, 5, 3, 56, 84, generator=torch.Generator().manual_seed(4))
    rw = reward_weights(tiny_reward, x, ["a", "b c"], (2, 7, 10), balancer=BalancedOverall(warmup=0))
    assert rw.w_inter.shape == (2, 1, 1, 1, 1) and rw.w_intra.shape == (2, 2, 1, 7, 10)
    torch.testing.assert_close(rw.w_intra.mean(dim=(1, 2, 3, 4)), torch.ones(2))
    torch.testing.assert_close(rw.w_inter.flatten(), torch.exp(2 * rw.scores.overall))   # < 4 entries: no penalty
    single = reward_weights(tiny_reward, x[1:], ["b c"], (2, 7, 10), reward_mode="Overall")
    torch.testing.assert_close(single.w_intra[0], rw.w_intra[1], atol=1e-4, rtol=1e-4)   # per-sample maps


def test_activation_checkpointing_gives_the_same_saliency(tiny_reward):
    x = torch.rand(1, 4, 3, 56, 84, generator=torch.Generator().manual_seed(5))
    plain = gradient_saliency(tiny_reward, x, ["a"])
    ckpt = gradient_saliency(tiny_reward, x, ["a"], checkpointing=True)
    torch.testing.assert_close(ckpt.maps, plain.maps, rtol=1e-4, atol=1e-7)
    assert not tiny_reward.qwen.training


def test_reference_order_is_the_public_row_major_view(tiny_reward):
    """order='reference' = the public code's `norms.view(t, h, w)` (spec-algorithm §5.1 step 5): the same values as
    the image order, permuted within each frame by (h/2, w/2, 2, 2) -> row-major. Per-frame sums (so the temporal
    weights) agree exactly; the spatial maps do not, except on a single 2 x 2 merge block."""
    from stream_r1.reward.dmd_weights import reward_weights

    region = RegionReward((slice(1, 3), slice(3, 5)))
    x = torch.rand(1, 4, 3, 56, 84, generator=torch.Generator().manual_seed(6)) + 0.1
    for model in (region, tiny_reward):
        img = gradient_saliency(model, x, ["a"], target="patches")
        ref = gradient_saliency(model, x, ["a"], target="patches", order="reference")
        assert img.maps.shape == ref.maps.shape == (1, 3, 2, 4, 6)
        torch.testing.assert_close(img.scores.raw, ref.scores.raw, rtol=0, atol=0)
        rows = rearrange(img.maps, "b a t (hb mh) (wb mw) -> b a t (hb wb mh mw)", mh=2, mw=2)
        assert torch.equal(ref.maps, rows.view(ref.maps.shape))       # exactly the documented permutation
        torch.testing.assert_close(img.maps.sum((3, 4)), ref.maps.sum((3, 4)))   # same per-frame totals (up to
        #                                                                    the summation order's rounding)
        assert not torch.equal(img.maps, ref.maps)
    inside = torch.zeros(4, 6, dtype=torch.bool)
    inside[1:3, 3:5] = True
    ref_region = gradient_saliency(region, x, ["a"], target="patches", order="reference").maps[0, 0]
    assert (ref_region[:, ~inside] > 0).any()                          # the scrambled view leaves the region
    # a single merge block (2 x 2 patches): row-major and merge-block order coincide
    one = torch.rand(1, 2, 3, 28, 28, generator=torch.Generator().manual_seed(7))
    a = gradient_saliency(tiny_reward, one, ["a"], target="patches")
    b = gradient_saliency(tiny_reward, one, ["a"], target="patches", order="reference")
    assert a.maps.shape[-2:] == (2, 2) and torch.equal(a.maps, b.maps)
    # through the DMD weights: temporal profile identical, W_intra differs; 'pixels' has no patch order
    ri = reward_weights(tiny_reward, x, ["a"], (2, 7, 10), reward_mode="Overall")
    rr = reward_weights(tiny_reward, x, ["a"], (2, 7, 10), reward_mode="Overall", order="reference")
    torch.testing.assert_close(ri.intra.temporal, rr.intra.temporal)
    assert not torch.allclose(ri.w_intra, rr.w_intra)
    with pytest.raises(ValueError, match="reference"):
        gradient_saliency(tiny_reward, x, ["a"], target="pixels", order="reference")

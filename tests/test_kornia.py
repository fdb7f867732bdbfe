"""Where kornia replaced hand-written filters (docs/kornia.md): its numbers against the old code's, pinned here as
golden values computed once from the old implementation (or as the old one-line formula)."""
import pytest
import torch
import torch.nn.functional as F

from stream_r1.reward.preprocess import VideoInputConfig, patchify, preprocess_video
from stream_r1.reward.qwen2vl_config import CLIP_MEAN, CLIP_STD
from stream_r1.telemetry import DriftTelemetry
from training.shapes.world import _gaussian_blur


def test_shapes_blur_equals_the_old_separable_filter():
    """kornia.filters.gaussian_blur2d with a per-clip sigma [B, 2] = the old 11-tap separable reflect-padded blur
    (measured max |difference| 0.0 in fp32 and fp64)."""
    x = torch.rand(3, 2, 3, 16, 20, generator=torch.Generator().manual_seed(0))       # [B, T, C, H, W]
    y = _gaussian_blur(x, torch.tensor([1.0, 2.0, 3.0]))
    old_edge = [[0.41485214, 0.42199484, 0.47804290, 0.58891129, 0.65934771],        # y[:, 1, 2, 0, :5]: padding
                [0.47506210, 0.47163311, 0.46724677, 0.46938455, 0.48023802],
                [0.46442610, 0.46487144, 0.46012932, 0.45259035, 0.44375801]]
    torch.testing.assert_close(y[:, 1, 2, 0, :5], torch.tensor(old_edge), atol=1e-6, rtol=0)
    torch.testing.assert_close(y[:, 0, 0, 8, 8], torch.tensor([0.36823422, 0.47686437, 0.45217502]), atol=1e-6, rtol=0)
    torch.testing.assert_close(y.sum(dim=(1, 2, 3, 4)), torch.tensor([958.43695, 939.43243, 959.24878]), atol=1e-3,
                               rtol=0)


def _clips() -> dict[str, torch.Tensor]:
    """Three 9-frame clips [9, 3, 48, 64]: smooth panning, the same with noise, and a texture flipped every frame."""
    def texture(seed, w, cell):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(1, 3, 48 // cell, w // cell, generator=g)
        return 0.2 + 0.6 * F.interpolate(x, size=(48, w), mode="bilinear", align_corners=False)[0]

    big = texture(0, 84, 8)
    pan = torch.stack([big[:, :, i:i + 64] for i in range(9)])
    noisy = (pan + 0.05 * torch.randn(pan.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    base = texture(4, 64, 4)
    flip = torch.stack([base if i % 2 else base.flip(-1) for i in range(9)])
    return {"pan": pan, "pan_noise": noisy, "flip": flip}


# flicker of the old 7x7 box-window SSIM and of kornia.metrics.ssim (11x11 Gaussian, sigma 1.5, valid region)
FLICKER = {"pan": (0.025553018, 0.022220515), "pan_noise": (0.41003776, 0.47181046), "flip": (1.03315151, 0.95368427)}


@pytest.mark.parametrize("name", list(FLICKER))
def test_flicker_is_the_gaussian_ssim_and_stays_near_the_old_box_one(name):
    """A definition change, not a parity: the standard Gaussian window moves flicker by at most 0.08 on these clips
    (0.003 on smooth panning) and keeps their order; the new values are pinned."""
    old, new = FLICKER[name]
    got = DriftTelemetry().update(_clips()[name])["flicker"]
    assert got == pytest.approx(new, abs=1e-5)
    assert abs(got - old) < 0.085


def test_flicker_on_frames_smaller_than_the_window():
    x = torch.rand(3, 3, 6, 9, generator=torch.Generator().manual_seed(0))           # window shrinks to 5x5
    assert DriftTelemetry().update(x)["flicker"] == pytest.approx(0.95896316, abs=1e-5)
    assert DriftTelemetry().update(x[:1].expand(3, -1, -1, -1))["flicker"] == pytest.approx(0.0, abs=1e-6)
    assert DriftTelemetry().update(x[:, :, :1, :1].expand(3, 3, 1, 1).contiguous())["flicker"] is not None


def test_clip_normalisation_equals_the_old_formula():
    """kornia.enhance.normalize in the reward preprocessing = (x - mean) / std bit for bit, after torch's resize."""
    frames = torch.rand(2, 4, 3, 60, 104, generator=torch.Generator().manual_seed(3))
    out = preprocess_video(frames, VideoInputConfig(min_pixels=28 * 28, max_pixels=56 * 112))
    x = F.interpolate(frames.flatten(0, 1), size=(56, 112), mode="bicubic", align_corners=False, antialias=True)
    x = (x.clamp(0, 1) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert torch.equal(out.pixel_values, patchify(x.view(2, 4, 3, 56, 112)))


def test_hpsv3_normalisation_equals_the_old_formula(tmp_path):
    from stream_r1.reward.hpsv3 import load_hpsv3
    from stream_r1.reward.hpsv3_synthetic import write_synthetic_hpsv3

    write_synthetic_hpsv3(tmp_path)
    hps = load_hpsv3(tmp_path, dtype=torch.float32, pixels=28 * 28 * 16)
    images = torch.rand(2, 3, 120, 200, generator=torch.Generator().manual_seed(4))
    pv, grid = hps.preprocess(images)
    h, w = (int(v) * 14 for v in grid[0, 1:])
    x = F.interpolate(images, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    x = (x.clamp(0, 1) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert torch.equal(pv, patchify(x[:, None].expand(-1, 2, -1, -1, -1)))


def test_kornia_is_not_loaded_by_the_modules_the_pack_imports():
    """kornia (~0.17 s to import) loads on first use, not when ComfyUI imports the pack."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, stream_r1, stream_r1.telemetry, stream_r1.reward, stream_r1.reward.hpsv3; "
            "print('kornia' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"

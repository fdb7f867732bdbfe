"""Reward-model preprocessing: sizes, frame sampling, Qwen2-VL patch order and its inverse (CPU, no weights)."""
import numpy as np
import pytest
import torch

from stream_r1.reward.preprocess import (VideoInputConfig, patch_values_to_grid, patchify, preprocess_video,
                                         sample_frame_indices, smart_resize)
from stream_r1.reward.qwen2vl_config import CLIP_MEAN, CLIP_STD


def hf_patchify(video: np.ndarray, p: int = 14, tp: int = 2, m: int = 2) -> np.ndarray:
    """The transformers Qwen2-VL processor's flattening written out with view + permute (known answer).

    video [T, C, H, W] -> [t*h*w, C*tp*p*p]; permute(0, 3, 6, 4, 7, 2, 1, 5, 8) of
    (t, tp, C, h/m, m, p, w/m, m, p) = (t, h/m, w/m, m, m, C, tp, p, p).
    """
    t, c, h, w = video.shape
    gt, gh, gw = t // tp, h // p, w // p
    x = video.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * tp * p * p)


def test_smart_resize_known_sizes():
    assert smart_resize(480, 832) == (336, 588)          # Stream-R1's reward input size
    assert smart_resize(336, 588) == (336, 588)
    assert smart_resize(56, 84, min_pixels=56 * 56) == (56, 84)
    h, w = smart_resize(64, 96)                         # upscaled to the 128 * 28^2 floor
    assert h % 28 == 0 and w % 28 == 0 and h * w >= 100352


def test_token_count_of_a_5s_clip():
    # 81 frames at 480x832 -> padded to 82 -> 41 x 24 x 42 patches -> 10,332 merged tokens (spec-models §6.7)
    idx, mode = sample_frame_indices(81, VideoInputConfig())
    t = (len(idx) + len(idx) % 2) // 2
    h, w = smart_resize(480, 832)
    assert (t, h // 14, w // 14) == (41, 24, 42) and t * (h // 14) * (w // 14) // 4 == 10332 and mode == "all"
    idx, mode = sample_frame_indices(81, VideoInputConfig(odd_frames="drop"))
    assert len(idx) == 80 and mode == "all/drop-last"    # Stream-R1 reference: 40 x 24 x 42


def test_fps_sampling_matches_videoalign():
    idx, mode = sample_frame_indices(81, VideoInputConfig(frames="fps", fps=2.0, source_fps=16.0))
    assert idx == torch.linspace(0, 80, 10).round().long().tolist() and mode == "fps=2"
    assert len(sample_frame_indices(9, VideoInputConfig(frames="fps"))[0]) == 4   # min_frames
    assert sample_frame_indices(3, VideoInputConfig(frames="fps"))[0] == [0, 2]


def test_short_video_is_refused():
    with pytest.raises(ValueError, match="at least 2 frames"):
        preprocess_video(torch.rand(1, 1, 3, 56, 56), VideoInputConfig(min_pixels=28 * 28))


def test_patch_order_equals_the_hf_processor_flattening():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 5, 3, 56, 84, generator=g)
    cfg = VideoInputConfig(min_pixels=28 * 28)
    out = preprocess_video(frames, cfg)
    assert out.resized_hw == (56, 84) and out.grid_thw.tolist() == [[3, 4, 6]] * 2
    assert out.frame_indices == (0, 1, 2, 3, 4, 4) and out.mode == "all/pad-last"
    for b in range(2):
        v = frames[b].numpy()
        v = np.concatenate([v, v[-1:]])                                     # temporal padding: repeat last
        v = (v - np.array(CLIP_MEAN)[:, None, None]) / np.array(CLIP_STD)[:, None, None]
        want = hf_patchify(v.astype(np.float32))
        got = out.pixel_values[b * 72:(b + 1) * 72].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_inverse_map_puts_each_patch_back_and_the_reference_view_does_not():
    t, h, w = 2, 4, 6
    grid = torch.tensor([[t, h, w]])
    coords = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    image = coords[None].float()                                            # [1, t, h, w, 3]: each cell knows (t, y, x)
    # rows in model order (via the HF-style flattening of a 1x1-"pixel" patch image)
    rows = torch.from_numpy(hf_patchify(image[0].permute(0, 3, 1, 2).repeat_interleave(2, 0).numpy(), p=1))
    rows = rows.view(t * h * w, 3, 2)[:, :, 0]                              # [N, 3]: (t, y, x) of each row
    back = patch_values_to_grid(rows, grid)                                 # [1, t, h, w, 3]
    assert torch.equal(back, image)
    # one-hot at patch (t=1, y=2, x=3) lands exactly there; the reference's row-major view puts it elsewhere
    n = int(((rows == torch.tensor([1.0, 2.0, 3.0])).all(-1)).nonzero())
    onehot = torch.zeros(t * h * w)
    onehot[n] = 1.0
    assert patch_values_to_grid(onehot, grid)[0, 1, 2, 3] == 1.0
    reference = onehot.view(t, h, w)                                        # wangbei1/Stream-R1's reshape
    assert reference[1, 2, 3] == 0.0 and reference.sum() == 1.0


def test_patchify_inverse_roundtrip():
    x = torch.randn(1, 4, 3, 56, 84)
    rows = patchify(x)                                                      # [2*4*6, 1176]
    back = patch_values_to_grid(rows.view(-1, 3, 2, 14, 14), torch.tensor([[2, 4, 6]]))  # [1, 2, 4, 6, 3, 2, 14, 14]
    rebuilt = back.permute(0, 1, 5, 4, 2, 6, 3, 7).reshape(1, 4, 3, 56, 84)
    assert torch.equal(rebuilt, x)


def test_preprocessing_is_differentiable_and_resizes_with_antialias():
    frames = torch.rand(1, 4, 3, 60, 104, requires_grad=True)
    out = preprocess_video(frames, VideoInputConfig(min_pixels=28 * 28, max_pixels=56 * 112))
    assert out.resized_hw == (56, 112)                                      # 60x104 -> nearest multiples of 28
    out.pixel_values.sum().backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0


def test_hf_video_processor_parity_when_available():
    pytest.importorskip("torchvision")
    from transformers import Qwen2VLVideoProcessor

    frames = torch.rand(1, 4, 3, 56, 84, generator=torch.Generator().manual_seed(1))
    proc = Qwen2VLVideoProcessor(do_resize=False, do_rescale=False, do_sample_frames=False,
                                 image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    ref = proc(videos=[frames[0]], return_tensors="pt")
    ours = preprocess_video(frames, VideoInputConfig(min_pixels=28 * 28))
    assert ref["video_grid_thw"].tolist() == ours.grid_thw.tolist()
    torch.testing.assert_close(ours.pixel_values, ref["pixel_values_videos"].float(), atol=1e-4, rtol=1e-4)


def test_hf_video_processor_parity_with_resize_when_available():
    pytest.importorskip("torchvision")
    from transformers import Qwen2VLVideoProcessor

    low = torch.rand(1, 5, 3, 8, 13, generator=torch.Generator().manual_seed(2))
    frames = 0.25 + 0.5 * torch.nn.functional.interpolate(low[0], size=(120, 208), mode="bilinear")[None]
    cfg = VideoInputConfig(min_pixels=28 * 28, max_pixels=84 * 140)   # smooth in [0.25, 0.75]: no clamping
    proc = Qwen2VLVideoProcessor(do_resize=True, do_rescale=False, do_sample_frames=False,
                                 size={"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels},
                                 image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    ref = proc(videos=[frames[0]], return_tensors="pt")
    ours = preprocess_video(frames, cfg)
    assert ref["video_grid_thw"].tolist() == ours.grid_thw.tolist() == [[3, 4, 10]]
    torch.testing.assert_close(ours.pixel_values, ref["pixel_values_videos"].float(), atol=1e-4, rtol=1e-4)

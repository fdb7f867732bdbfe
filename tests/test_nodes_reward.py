"""Reward nodes, headless on a synthetic tiny VideoReward (real key names and special-token ids)."""
import sys

import pytest
import torch

import comfy_stubs as stubs
from stream_r1.reward.synthetic import write_synthetic_checkpoint
from test_nodes import imported_pack, run

PACK = "custom_nodes_x_stream_r1_reward_nodes_test"


@pytest.fixture(scope="module")
def pack():
    yield from imported_pack(PACK)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_synthetic_checkpoint(root / "stream_r1" / "VideoReward", seed=0)
    return root


@pytest.fixture
def nodes(pack, models, tmp_path, monkeypatch):
    rec = stubs.Recorder()
    for name, mod in stubs.build(models, tmp_path / "output", rec).items():
        monkeypatch.setitem(sys.modules, name, mod)
    return pack.NODE_CLASS_MAPPINGS


@pytest.fixture
def reward(nodes):
    listed = nodes["StreamR1RewardLoader"].INPUT_TYPES()["required"]["model_file"][0]
    assert listed == ["VideoReward/checkpoint-1/model.pth"]
    return run(nodes["StreamR1RewardLoader"], model_file=listed[0], dtype="fp32")[0]


def clip(t=5, h=56, w=84, seed=0):
    return torch.rand(t, h, w, 3, generator=torch.Generator().manual_seed(seed))      # IMAGE [T, H, W, 3]


def test_score_node_returns_three_floats_and_a_summary(nodes, reward):
    vq, mq, ta, text = run(nodes["StreamR1RewardScore"], reward_model=reward, images=clip(), prompt="a red circle")
    assert all(isinstance(v, float) for v in (vq, mq, ta))
    assert f"VQ {vq:+.3f}" in text and "Overall" in text
    again = run(nodes["StreamR1RewardScore"], reward_model=reward, images=clip(), prompt="a red circle")
    assert again[:3] == (vq, mq, ta)


def test_saliency_node_outputs(nodes, reward):
    overlay, mask, chart, text = run(nodes["StreamR1RewardSaliency"], reward_model=reward, images=clip(),
                                     prompt="a red circle", axis="combined", alpha=0.5, spatial_floor=0.15,
                                     temporal_floor=0.2)
    assert overlay.shape == (5, 56, 84, 3) and 0 <= overlay.min() and overlay.max() <= 1
    assert mask.shape == (5, 56, 84) and mask.max() == pytest.approx(1.0)
    assert chart.dim() == 4 and chart.shape[0] == 1 and chart.shape[-1] == 3
    assert "saliency mix" in text
    per_axis = run(nodes["StreamR1RewardSaliency"], reward_model=reward, images=clip(), prompt="a red circle",
                   axis="MQ", alpha=0.5, spatial_floor=0.15, temporal_floor=0.2)[1]
    assert not torch.equal(per_axis, mask)


def test_bad_inputs_are_explained(nodes, reward):
    with pytest.raises(ValueError, match="at least 2 frames"):
        run(nodes["StreamR1RewardScore"], reward_model=reward, images=clip(t=1), prompt="x")
    with pytest.raises(ValueError, match="at least 2 frames"):
        run(nodes["StreamR1RewardSaliency"], reward_model=reward, images=clip(t=1), prompt="x", axis="combined",
            alpha=0.5, spatial_floor=0.15, temporal_floor=0.2)
    with pytest.raises(FileNotFoundError, match="python -m stream_r1 download"):
        run(nodes["StreamR1RewardLoader"], model_file="../../etc/passwd", dtype="fp32")

"""Our stream against golden values from the public reference pipelines (see the fixture's _source).

Same weights, text context and initial noise; one denoising step (t=1000, no re-noising) and four
warped steps with the re-noising draws aligned; 10 chunks, so every rolling policy evicts repeatedly.
"""
import json
from pathlib import Path

import pytest
import torch

from stream_r1.config import StreamConfig, WanConfig
from stream_r1.stream import generate
from stream_r1.wan.model import WanModel

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "reference_slices.json").read_text())
POLICIES = {
    "full": StreamConfig.self_forcing().replace(full_cache_frames=30),
    "window_sink": StreamConfig.stream_r1(),
    "window_sink_newest": StreamConfig.stream_r1().replace(sink_ema_source="newest"),
    "longlive": StreamConfig.longlive(),
}


@pytest.fixture(scope="module")
def inputs():
    model = WanModel(WanConfig.tiny(), attention="sdpa").init_weights(seed=0).eval()
    g = torch.Generator().manual_seed(1000)
    context = torch.randn(1, 24, 32, generator=g)
    noise = torch.randn(1, 30, 16, 4, 6, generator=g)
    return model, context, noise


@pytest.mark.parametrize("steps", list(GOLDEN["steps"]))
@pytest.mark.parametrize("policy", list(POLICIES))
def test_matches_reference_pipeline(inputs, policy, steps):
    model, context, noise = inputs
    step_list, _, eps = steps.partition(";eps_seed=")
    sc = POLICIES[policy].replace(denoising_steps=tuple(float(s) for s in step_list.split(",")))
    lat, _ = generate(model, context, sc, 30, height=32, width=48, noise=noise, seed=int(eps or 0))
    for chunk, ref in GOLDEN["steps"][steps][policy].items():
        ours = lat[0, 3 * int(chunk), 0:4, 0, 0:4].flatten()
        assert torch.allclose(ours, torch.tensor(ref), atol=2e-5), (policy, chunk, (ours - torch.tensor(ref)).abs().max())


def test_the_two_reward_forcing_sink_variants_really_differ():
    a = torch.tensor(GOLDEN["steps"]["1000"]["window_sink"]["9"])
    b = torch.tensor(GOLDEN["steps"]["1000"]["window_sink_newest"]["9"])
    assert (a - b).abs().max() > 1e-5

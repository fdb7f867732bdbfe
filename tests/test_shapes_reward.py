"""Shapes-world reward model: negatives, a 2-step training run and its released-layout folder (CPU, fast)."""
import json

import pytest
import torch

from stream_r1.reward.checkpoint import PEFT_PREFIX, read_model_config
from stream_r1.reward.model import load_video_reward
from stream_r1.reward.qwen2vl_config import Qwen2VLArch
from stream_r1.shapes import parse_prompt
from training.config import RewardConfig
from training.models import build_reward
from training.shapes.reward import (REWARD_VIDEO, heldout_count, heldout_scores, make_pairs, normalisation,
                                    split_variants, train_reward)
from training.shapes.world import ClipBank, degrade_motion, degrade_quality, mismatched_prompt, shapes_prompts

from helpers import tiny_reward_cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shapes_reward")
    cfg = tiny_reward_cfg(tmp)
    return cfg, train_reward(cfg, torch.device("cpu"), arch=Qwen2VLArch.tiny())  # default arch: same code, 2x bytes


@pytest.fixture(scope="module")
def bank(run):
    return ClipBank.build(run[0].world, progress=False)                     # from the run's cache


def test_degradations_change_the_clip_and_keep_its_form(bank):
    x = bank.batch(list(range(len(bank))), torch.device("cpu"))             # [8, 9, 3, 32, 32]
    for seed in range(4):
        for fn in (degrade_quality, degrade_motion):
            y = fn(x, torch.Generator().manual_seed(seed))
            assert y.shape == x.shape and y.dtype == x.dtype
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
            per_clip = (y - x).abs().flatten(1).amax(1)                     # [8]
            assert bool((per_clip > 0.05).all()), f"{fn.__name__} seed {seed}: {per_clip.tolist()}"
    # deterministic from the generator
    assert torch.equal(degrade_motion(x, torch.Generator().manual_seed(3)),
                       degrade_motion(x, torch.Generator().manual_seed(3)))


def test_mismatched_prompt_parses_and_changes_one_attribute():
    g = torch.Generator().manual_seed(0)
    for p in shapes_prompts(80, size=32, frames=9):
        q = mismatched_prompt(p, g)
        a, b = parse_prompt(p), parse_prompt(q)
        assert q != p and b.to_prompt() == q and len(a.shapes) == len(b.shapes)
        changed = sum(x.color != y.color or x.shape != y.shape for x, y in zip(a.shapes, b.shapes))
        changed += a.background != b.background
        changed += any(x.motion != y.motion for x, y in zip(a.shapes, b.shapes))
        assert changed == 1, (p, q)
        assert not any(s.shape == "circle" and s.motion == "rotating" for s in b.shapes), q


def test_make_pairs_layout(bank):
    x = bank.batch([0, 1], torch.device("cpu"))
    frames, prompts = make_pairs(x, bank.prompts[:2], torch.Generator().manual_seed(0))
    assert frames.shape == (8, *x.shape[1:]) and len(prompts) == 8
    assert torch.equal(frames[6:], x) and prompts[:6] == bank.prompts[:2] * 3 and prompts[6:] != bank.prompts[:2]
    assert split_variants(torch.arange(24.).view(8, 3)).shape == (4, 2, 3)


def test_trained_folder_loads_scores_and_is_calibrated(run, bank):
    cfg, path = run
    assert path.name == "reward" and (path / "model_config.json").is_file()
    assert not list(path.parent.glob(".reward.*"))                          # the temporary folder was renamed
    sd = torch.load(path / "checkpoint-2" / "model.pth", weights_only=True)
    assert all(k.startswith(PEFT_PREFIX) for k in sd) and PEFT_PREFIX + "rm_head.weight" in sd
    lora_b = [v for k, v in sd.items() if k.endswith("lora_B.default.weight")]
    assert len(lora_b) == 14 and all(bool((v == 0).all()) for v in lora_b)
    fcfg = read_model_config(path / "model_config.json")                    # calibrated: no released-norm check
    assert (fcfg.min_frame_pixels, fcfg.max_frame_pixels) == (REWARD_VIDEO.min_pixels, REWARD_VIDEO.max_pixels)

    model = load_video_reward(path, dtype=torch.float32, video=REWARD_VIDEO)
    x = bank.batch([0, 1, 2], torch.device("cpu"))
    raw = model.score(x, bank.prompts[:3])
    assert raw.shape == (3, 3) and bool(torch.isfinite(raw).all())

    # the saved normalisation is the mean/std of the held-out raw scores, recomputed with the loaded model
    held = heldout_scores(model, bank, cfg, torch.device("cpu"))            # [4, K, 3]
    assert held.shape == (4, heldout_count(len(bank)), 3)
    mean, std = normalisation(held)
    assert torch.allclose(model.norm_mean, torch.tensor(mean), rtol=1e-4, atol=1e-5)
    assert torch.allclose(model.norm_std, torch.tensor(std), rtol=1e-3, atol=1e-6)
    assert torch.allclose(model.normalize(held.reshape(-1, 3)).mean(0), torch.zeros(3), atol=1e-3)

    report = json.loads((path / "eval.json").read_text())
    assert set(report["accuracy"]) == {"VQ", "MQ", "TA"} and report["heldout_clips"] == held.shape[1]
    assert all(0.0 <= v <= 1.0 for v in report["accuracy"].values())
    assert set(report["ties"]) == {"VQ", "MQ", "TA"} and all(0.0 <= v <= 1.0 for v in report["ties"].values())

    # the training-side loader reads the frame pixel bounds from the checkpoint
    rm = build_reward(RewardConfig(path=str(path)), device=torch.device("cpu"), dtype=torch.float32)
    assert (rm.video.min_pixels, rm.video.max_pixels, rm.video.odd_frames) == (28 * 28, 112 * 112, "drop")
    assert torch.allclose(rm.score(x, bank.prompts[:3]), raw, atol=1e-5)
    assert load_video_reward(path, dtype=torch.float32).video.min_pixels == 28 * 28


def test_pairwise_accuracy_counts_ties_half():
    """A bf16 reward ties often on the TA pairs (same clip, two prompts): ties count 0.5, not as errors."""
    from training.shapes.reward import pair_diffs, pair_losses, pairwise_accuracy

    s = torch.zeros(4, 4, 3)
    s[0, :, 0] = torch.tensor([1.0, 1.0, -1.0, 0.0])          # VQ: 2 right, 1 wrong, 1 tie against s[1] = 0
    s[0, :, 1] = 1.0                                           # MQ: all right
    s[3, :, 2] = torch.tensor([0.5, 0.0, 0.0, 0.0])           # TA: positive 0 against TA-: 1 wrong, 3 ties
    acc, ties = pairwise_accuracy(pair_diffs(s))
    assert acc.tolist() == [0.625, 1.0, 0.375] and ties.tolist() == [0.25, 0.0, 0.75]
    assert torch.equal(pair_losses(s)[1], acc)


def test_too_small_bank_is_refused():
    with pytest.raises(ValueError, match="world.clips"):
        heldout_count(3)


def test_packed_reward_scores_exactly_like_the_original(run, bank, tmp_path):
    """The bundle stores the reward with its embedding and tied lm_head row-packed to the ids the tokenizer can
    emit: a fraction of the bytes, the same scores and saliency inputs (the unstored rows are unreachable)."""
    from stream_r1.reward.checkpoint import resolve_reward_files
    from stream_r1.weights_io import ROW_PACKED, read_tensors
    from training.shapes.bundle import pack_reward

    _, path = run
    packed = pack_reward(path, tmp_path / "reward")
    orig_files = resolve_reward_files(path)
    assert resolve_reward_files(tmp_path / "reward").weights == packed          # found as model.safetensors
    assert packed.stat().st_size < orig_files.weights.stat().st_size / 10

    full, small = read_tensors(orig_files.weights), read_tensors(packed)
    assert set(full) == set(small)
    tables = [k for k in full if k.endswith(("embed_tokens.weight", "lm_head.weight"))]
    assert len(tables) == 2
    for k in full:
        if k not in tables:
            assert torch.equal(full[k], small[k]), k
    stored = (small[tables[0]] != 0).any(-1)                                   # [vocab] rows kept
    assert 50 < int(stored.sum()) < 1000
    for k in tables:
        assert torch.equal(small[k][stored], full[k][stored]) and not small[k][~stored].any()

    a = load_video_reward(path, dtype=torch.float32, video=REWARD_VIDEO)
    b = load_video_reward(tmp_path / "reward", dtype=torch.float32, video=REWARD_VIDEO)
    x = bank.batch([0, 1, 2, 3], torch.device("cpu"))
    prompts = bank.prompts[:3] + ["a purple star rotating on a white background"]
    assert torch.equal(a.score(x, prompts), b.score(x, prompts))
    ids = b.prompts.tokenizer(prompts[-1])["input_ids"]
    assert bool(stored[torch.tensor(ids)].all())                               # every emitted id was kept
    from safetensors import safe_open
    with safe_open(str(packed), "pt") as f:
        assert set(json.loads(f.metadata()[ROW_PACKED])) == set(tables)

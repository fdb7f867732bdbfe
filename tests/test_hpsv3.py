"""HPSv3 loader (stream_r1.reward.hpsv3): released key layout, mu per image, padding invariance, both key layouts,
errors that say what to pass, and use as the Stream-T1 short reward."""
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from stream_r1.reward.hpsv3 import (IMAGE_PIXELS, REWARD_TOKEN_ID, WEIGHTS_NAME, HPSv3Model, load_hpsv3)
from stream_r1.reward.hpsv3_synthetic import tiny_hpsv3_arch, write_synthetic_hpsv3
from stream_r1.reward.model import RewardModel

SMALL = 28 * 28 * 16                                   # 4 x 4 patches of 14 px per image: fast on CPU


@pytest.fixture(scope="module")
def hps_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hpsv3")
    write_synthetic_hpsv3(root)
    return root


@pytest.fixture(scope="module")
def hps(hps_dir):
    return load_hpsv3(hps_dir, dtype=torch.float32, pixels=SMALL)


def test_synthetic_file_has_the_released_key_names(hps_dir):
    with safe_open(str(hps_dir / WEIGHTS_NAME), "pt") as f:
        keys = set(f.keys())
        emb, head = f.get_slice("model.embed_tokens.weight").get_shape(), f.get_slice("rm_head.5.weight").get_shape()
    assert {"visual.patch_embed.proj.weight", "visual.merger.mlp.2.weight", "model.layers.0.self_attn.q_proj.weight",
            "model.norm.weight", "lm_head.weight", "rm_head.0.weight", "rm_head.0.bias", "rm_head.3.weight",
            "rm_head.5.bias"} <= keys
    assert not any(k.startswith("model.language_model.") or k.startswith("model.visual.") for k in keys)
    assert emb == [151658, tiny_hpsv3_arch().hidden_size] and head == [2, 16]


def test_is_a_reward_model_scoring_mean_mu_over_frames(hps):
    assert isinstance(hps, RewardModel) and hps.axes == ("HPS",)
    frames = torch.rand(2, 3, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    prompts = ["a red fox", "a dog running on the beach at sunset"]
    with torch.no_grad():
        s = hps.score(frames, prompts)
        mu = torch.stack([hps.mu_sigma(frames[b], [prompts[b]] * 3)[:, 0] for b in range(2)])   # [2, 3]
        alone = hps.mu_sigma(frames[0, :1], [prompts[0]])
    assert s.shape == (2, 1) and torch.allclose(s[:, 0], mu.mean(1), atol=1e-5)
    assert torch.allclose(alone[0, 0], mu[0, 0], atol=1e-5)                 # right padding changes nothing
    assert torch.equal(hps.normalize(s), s)                                 # default: raw mu


def test_reward_token_and_image_tokens_follow_the_release(hps):
    pv, grid = hps.preprocess(torch.rand(1, 3, 480, 832))
    ids, mask, types, pos = hps.encode(["a cat"], 4)
    assert int(ids[0, pos[0]]) == REWARD_TOKEN_ID and int((types == 1).sum()) == 4
    big = HPSv3Model(hps.qwen, hps.rm_head, hps.tokenizer, hps.arch, pixels=IMAGE_PIXELS)
    pv, grid = big.preprocess(torch.rand(1, 3, 480, 832))
    assert grid.tolist() == [[1, 24, 42]] and pv.shape == (1 * 24 * 42, 1176)   # 336x588 -> 252 merged tokens


def test_current_layout_file_loads_the_same_model(hps, hps_dir, tmp_path):
    with safe_open(str(hps_dir / WEIGHTS_NAME), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    renamed = {("model." + k if k.startswith("visual.") else
                "model.language_model." + k[len("model."):] if k.startswith("model.") else k): v for k, v in sd.items()}
    save_file(renamed, str(tmp_path / "other.safetensors"))
    m = load_hpsv3(tmp_path / "other.safetensors", tokenizer=hps.tokenizer, arch=hps.arch, dtype=torch.float32,
                   pixels=SMALL)
    x = torch.rand(1, 2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(m.score(x, ["a cat"]), hps.score(x, ["a cat"]))


def test_errors_say_what_to_pass(hps_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="HPSv3.safetensors"):
        load_hpsv3(tmp_path)
    save_file({"model.norm.weight": torch.ones(4)}, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="rm_head"):
        load_hpsv3(tmp_path, tokenizer=hps_dir / "tokenizer")
    with pytest.raises(ValueError, match="tokenizer"):
        load_hpsv3(tmp_path / WEIGHTS_NAME)


def test_hpsv3_as_the_stream_t1_short_reward(hps, tiny_model, vae):
    from helpers import tiny_context
    from stream_r1.config import StreamConfig
    from stream_r1.stream import StreamSession
    from stream_r1.tts import BrightnessReward, T1Config, generate_t1
    from stream_r1.vae import StreamingDecoder

    sess = StreamSession(tiny_model, StreamConfig.stream_r1(), tiny_context(), height=32, width=48, seed=2,
                         decoder=StreamingDecoder(vae))
    _, vid, t1 = generate_t1(sess, BrightnessReward(), 6, T1Config(beams=1, children=2), short_reward=hps,
                             prompts=["a cat"])
    shorts = [c["short"] for c in t1.log[1]["candidates"]]
    with torch.no_grad():
        best = float(hps.score(vid[:, 9:], ["a cat"]))
    assert len(set(shorts)) == 2 and any(abs(best - s) < 1e-4 for s in shorts)


def test_instruction_is_the_released_text():
    """The prompt text HPSv3 was trained on, pinned by the SHA-256 of hpsv3 1.0.0's (PyPI) data_collator_qwen.py
    INSTRUCTION and prompt_with_special_token; both its Visual Quality and Text Alignment rubrics."""
    import hashlib

    from stream_r1.reward import hpsv3

    text = hpsv3.INSTRUCTION
    assert len(text) == 2523 and "**Text Alignment:**" in text and text.count("{text_prompt}") == 1
    assert hashlib.sha256(text.encode()).hexdigest() == \
        "0393599dad45a971903d1d62a3acf9bad3ccccdafa7f40f680523419e1f68b7a"
    assert hashlib.sha256(hpsv3.PROMPT_WITH_REWARD_TOKEN.encode()).hexdigest() == \
        "2471faca094ae5bd6fe17b71dce20c3d7583625545e235889f7e74e7eeb69d0a"

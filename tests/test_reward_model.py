"""VideoReward loader and scorer on a synthetic tiny checkpoint with the real PEFT key names and token ids."""
import hashlib
import json

import pytest
import torch

from stream_r1.reward.checkpoint import PEFT_PREFIX, convert_state_dict, read_model_config
from stream_r1.reward.model import RewardModel, build_qwen2vl, compute_scores, load_video_reward
from stream_r1.reward.preprocess import VideoInputConfig
from stream_r1.reward.prompt import DETAILED_SPECIAL_TEMPLATE, REWARD_TOKEN_IDS, rubric
from stream_r1.reward.qwen2vl_config import Qwen2VLArch
from stream_r1.reward.synthetic import LORA_TARGET, build_tiny_tokenizer, write_synthetic_checkpoint

SMALL = VideoInputConfig(min_pixels=28 * 28)          # keep 56x84 test frames at their size


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("videoreward")
    write_synthetic_checkpoint(root, seed=0)
    return root


@pytest.fixture(scope="module")
def model(reward_dir):
    return load_video_reward(reward_dir, dtype=torch.float32, video=SMALL)


def frames(b=2, t=5, seed=0):
    return torch.rand(b, t, 3, 56, 84, generator=torch.Generator().manual_seed(seed))


def test_template_is_videoalign_detailed_special():
    # sha256 of KwaiVGI/VideoAlign prompt_template.py DETAILED_PROMPT_WITH_SPECIAL_TOKEN (trailing spaces kept)
    digest = hashlib.sha256(DETAILED_SPECIAL_TEMPLATE.encode()).hexdigest()
    assert digest == "fdb6309bac618dd0c8b1b589d3a0970a974f7856eecbb355a190b2dce54af700"
    text = rubric("a cat")
    assert text.index("<|VQ_reward|>") < text.index("<|MQ_reward|>") < text.index("<|TA_reward|>")
    assert "Textual prompt - a cat\n" in text


def test_checkpoint_has_the_released_layout_and_loads_strictly(reward_dir, model):
    sd = torch.load(reward_dir / "checkpoint-1" / "model.pth", weights_only=True)
    assert len(sd) == 87 and all(k.startswith(PEFT_PREFIX) for k in sd)     # 59 base + 2 x 14 LoRA (spec-models §7)
    for k in ("base_model.model.visual.patch_embed.proj.weight",
              "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
              "base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias",
              "base_model.model.model.layers.1.mlp.down_proj.lora_A.default.weight",
              "base_model.model.lm_head.weight", "base_model.model.rm_head.weight"):
        assert k in sd
    assert sd["base_model.model.model.layers.0.mlp.gate_proj.lora_B.default.weight"].shape == (128, 4)
    assert model.arch == Qwen2VLArch.tiny() and model.rm_head.weight.dtype == torch.float32
    assert read_model_config(reward_dir / "model_config.json").lora_scale == 2.0
    with pytest.raises(ValueError, match="missing"):
        converted, _ = convert_state_dict({k: v for k, v in sd.items() if "blocks.1.norm1" not in k}, 2.0)
        build_qwen2vl(Qwen2VLArch.tiny(), converted)
    with pytest.raises(ValueError, match="unexpected"):
        converted, _ = convert_state_dict(sd | {PEFT_PREFIX + "model.extra.weight": torch.zeros(1)}, 2.0)
        build_qwen2vl(Qwen2VLArch.tiny(), converted)


def test_merged_lora_equals_unmerged_forward(reward_dir, model):
    sd = torch.load(reward_dir / "checkpoint-1" / "model.pth", weights_only=True)
    base, _ = convert_state_dict(sd, lora_scale=0.0)                         # W + 0 * BA = base weights
    reference = load_video_reward(reward_dir, dtype=torch.float32, video=SMALL)
    reference.qwen = build_qwen2vl(Qwen2VLArch.tiny(), base)
    hooks = []
    for name, module in reference.qwen.model.language_model.named_modules():
        if LORA_TARGET.match(name + ".weight"):
            a = sd[f"{PEFT_PREFIX}model.{name}.lora_A.default.weight"]
            b = sd[f"{PEFT_PREFIX}model.{name}.lora_B.default.weight"]
            hooks.append(module.register_forward_hook(
                lambda mod, inp, out, a=a, b=b: out + 2.0 * (inp[0] @ a.T @ b.T)))   # PEFT: x A^T B^T * alpha/r
    assert len(hooks) == 14
    x, prompts = frames(), ["a red circle moving right", "blue square"]
    merged = compute_scores(model, x, prompts).raw
    unmerged = compute_scores(reference, x, prompts).raw
    for h in hooks:
        h.remove()
    plain = compute_scores(reference, x, prompts).raw
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    assert (merged - plain).abs().max() > 1e-3                              # the LoRA does change the scores


def test_scores_normalisation_and_overall(model):
    s = compute_scores(model, frames(), ["a", "b"])
    assert s.raw.shape == (2, 3) and s.raw.dtype == torch.float32 and s.axes == ("VQ", "MQ", "TA")
    mean = torch.tensor([3.6757, 1.1646, 2.8105])
    std = torch.tensor([2.2476, 1.3811, 2.5121])
    torch.testing.assert_close(s.normalized, (s.raw - mean) / std)
    torch.testing.assert_close(s.overall, s.normalized.mean(dim=1))
    assert set(s.as_dicts()[0]) == {"VQ", "MQ", "TA", "VQ_raw", "MQ_raw", "TA_raw", "Overall"}
    assert isinstance(model, RewardModel) and model.differentiable


def test_reward_tokens_are_read_at_the_real_ids(model):
    text = model.prompts.encode(["a cat", "a much longer prompt about a dog running"], 6)
    for b in range(2):
        ids = text.input_ids[b, text.reward_positions[b]].tolist()
        assert ids == list(REWARD_TOKEN_IDS)
    assert text.input_ids.shape[1] == max(text.lengths) and text.attention_mask.sum(1).tolist() == list(text.lengths)
    assert int((text.mm_token_type_ids == 2).sum()) == 12


def test_batch_equals_each_sample(model):
    x, prompts = frames(3, seed=1), ["a cat", "a dog jumping over a very long fence in the rain", "tree"]
    batch = compute_scores(model, x, prompts).raw
    single = torch.cat([compute_scores(model, x[i:i + 1], prompts[i:i + 1]).raw for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-4, rtol=1e-4)


def test_mrope_positions_run_and_differ(reward_dir, model):
    m = load_video_reward(reward_dir, dtype=torch.float32, video=SMALL, position_mode="mrope")
    x = frames(1)
    a, b = compute_scores(model, x, ["a"]).raw, compute_scores(m, x, ["a"]).raw
    assert torch.isfinite(b).all() and not torch.allclose(a, b)


def test_bad_inputs_name_the_fix(tmp_path, reward_dir, model):
    with pytest.raises(ValueError, match="at least 2 frames"):
        model.score(torch.rand(1, 1, 3, 56, 84), ["a"])
    with pytest.raises(ValueError, match="shorten the prompt"):
        model.score(frames(1), ["word " * 5000])
    with pytest.raises(ValueError, match="one per video"):
        model.score(frames(2), ["only one"])
    with pytest.raises(ValueError, match="must not contain"):
        model.score(frames(1), ["sneaky <|TA_reward|>"])
    # a Wan DiT file where the reward model should be
    other = tmp_path / "wan"
    other.mkdir()
    torch.save({"blocks.0.self_attn.q.weight": torch.zeros(4, 4), "head.head.weight": torch.zeros(4, 4)},
               other / "model.pth")
    (other / "model_config.json").write_text((reward_dir / "model_config.json").read_text())
    with pytest.raises(ValueError, match="not a VideoReward state dict"):
        load_video_reward(other, tokenizer=build_tiny_tokenizer(), dtype=torch.float32)
    # normalisation constants that are not the released ones
    cfg = json.loads((reward_dir / "model_config.json").read_text())
    cfg["inference_config"]["MQ_std"] = 1.0
    bad = tmp_path / "model_config.json"
    bad.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="MQ normalisation"):
        read_model_config(bad)
    assert read_model_config(bad, check_norm=False).std[1] == 1.0
    with pytest.raises(FileNotFoundError):
        load_video_reward(tmp_path / "nowhere")


def test_tokenizer_without_reward_tokens_is_refused(reward_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    with pytest.raises(ValueError, match="reward tokens"):
        load_video_reward(reward_dir, tokenizer=plain, dtype=torch.float32)


def test_tiny_tokenizer_keeps_special_ids():
    tok = build_tiny_tokenizer()
    ids = tok.encode("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>", add_special_tokens=False)
    assert ids[0] == 151644 and ids[-3:] == [151652, 151656, 151653]
    assert 0 not in tok.encode(rubric(""), add_special_tokens=False)      # every rubric word is known


def test_2b_architecture_data_matches_the_published_parameter_count():
    from transformers import Qwen2VLForConditionalGeneration

    with torch.device("meta"):
        qwen = Qwen2VLForConditionalGeneration(Qwen2VLArch.qwen2_vl_2b().to_hf())
    assert sum(p.numel() for p in qwen.parameters()) == 2_208_561_664           # spec-models §6.7 (151,660 rows)
    assert Qwen2VLArch().patch_dim == 1176 and Qwen2VLArch().resize_factor == 28


def test_vit_batching_steps_aside_for_another_transformers_layout(monkeypatch):
    """Without the transformers internals the batched ViT attention relies on, the model keeps transformers' own
    forward instead of failing to load (the GPU image runs another transformers version)."""
    import torch.nn as nn
    from transformers.models.qwen2_vl import modeling_qwen2_vl as hf

    from stream_r1.reward import model as rm

    rm._batched_vision_attention_class.cache_clear()
    monkeypatch.delattr(hf, "apply_rotary_pos_emb_vision")
    try:
        m = nn.Sequential(nn.Linear(2, 2))
        assert rm.batch_vision_attention(m) is m
    finally:
        rm._batched_vision_attention_class.cache_clear()

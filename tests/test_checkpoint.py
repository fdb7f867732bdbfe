"""Loader tests on synthetic checkpoints written in every real container format (spec-models §6, §7).

All files are generated in tmp_path from seeded random tensors with the real Wan key names; nothing is
committed or downloaded.
"""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
from safetensors.torch import save_file

from stream_r1.checkpoint import (
    HeadsUnknownError, expected_dit_shapes, format_inspection, infer_dit_fields, inspect_checkpoint,
    load_dit_checkpoint, open_state_dict, save_dit_export, to_wan_state_dict)
from stream_r1.config import StreamConfig, WanConfig

TINY = WanConfig.tiny()
TINY_COMFY = WanConfig.tiny_comfy()


def make_sd(cfg: WanConfig = TINY, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * 0.05).to(dtype) for k, s in expected_dit_shapes(cfg).items()}


def assert_sd_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def is_big_linear(k: str) -> bool:
    return k.startswith("blocks.") and k.endswith(".weight") and re.search(r"(attn\.[qkvo]|ffn\.[02])\.weight$", k)


# ---- the parameter table ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg, n", [(WanConfig.wan_1_3b(), 825), (WanConfig.wan_14b(), 1095), (TINY, 69),
                                    (TINY_COMFY, 69)])
def test_expected_shapes_match_spec(cfg, n):
    shapes = expected_dit_shapes(cfg)
    assert len(shapes) == n == 15 + 27 * cfg.num_layers
    assert sum(math.prod(s) for s in shapes.values()) == cfg.num_parameters()
    if cfg.dim == 1536:
        assert shapes["head.head.weight"] == (64, 1536)
        assert shapes["time_projection.1.weight"] == (9216, 1536)
        assert shapes["blocks.29.ffn.0.weight"] == (8960, 1536)
        assert shapes["patch_embedding.weight"] == (1536, 16, 1, 2, 2)
    fields = infer_dit_fields(shapes)  # the shapes alone give back everything but heads / text_len / eps
    assert all(getattr(cfg, k) == v for k, v in fields.items())


# ---- Wan-AI ------------------------------------------------------------------------------------------------
def wan_config_json(cfg: WanConfig) -> dict:
    # Wan-AI's config.json has no text_dim: it must come from the shapes
    return {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": cfg.dim, "eps": cfg.eps,
            "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": cfg.in_dim, "model_type": "t2v",
            "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "out_dim": cfg.out_dim,
            "text_len": cfg.text_len}


def test_wan_ai_single_with_config_json(tmp_path):
    sd = make_sd()
    folder = tmp_path / "Wan2.1-T2V-tiny"
    folder.mkdir()
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(wan_config_json(TINY)))
    for p in (folder / "diffusion_pytorch_model.safetensors", folder):
        ck = load_dit_checkpoint(p)  # num_heads from config.json
        assert ck.format == "wan-ai" and ck.family == "wan-base" and ck.cache_policy == "full"
        assert ck.config == TINY and ck.config_source.endswith("config.json")
        assert ck.source_dtype == "float32" and ck.entry is None
        assert_sd_equal(ck.state_dict, sd)
    d = inspect_checkpoint(folder)
    assert d["kind"] == "wan2.1 dit" and d["format"] == "wan-ai" and d["config"]["num_heads"] == 2
    assert d["parameters"] == TINY.num_parameters()
    assert "wan-ai" in format_inspection(d)


def test_config_json_that_contradicts_the_weights_is_refused(tmp_path):
    save_file(make_sd(), str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(wan_config_json(WanConfig.wan_1_3b())))
    with pytest.raises(ValueError, match=r"says dim=1536 but the weights .* have dim=64"):
        load_dit_checkpoint(tmp_path / "diffusion_pytorch_model.safetensors")


def write_sharded(folder, sd, n=3):
    folder.mkdir(exist_ok=True)
    keys = list(sd)
    weight_map = {}
    for i in range(n):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {k: sd[k] for k in keys[i::n]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def test_sharded_safetensors_via_index_shard_or_folder(tmp_path):
    sd = make_sd(TINY_COMFY)
    index = write_sharded(tmp_path / "Wan2.1-T2V-14B-like", sd)
    for p in (index, index.parent / "diffusion_pytorch_model-00002-of-00003.safetensors", index.parent):
        ck = load_dit_checkpoint(p)
        assert ck.format == "wan-ai-sharded" and ck.config == TINY_COMFY  # heads 128/128 = 1, inferred
        assert_sd_equal(ck.state_dict, sd)
    raw, info = open_state_dict(index)
    assert info.container == "safetensors-sharded" and len(info.files) == 3 and len(raw) == 69
    assert inspect_checkpoint(index)["format"] == "wan-ai-sharded"
    (index.parent / "diffusion_pytorch_model-00003-of-00003.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="00003-of-00003"):
        load_dit_checkpoint(index)


# ---- Comfy-Org repacks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_comfy_repack(tmp_path, dtype, prefix):
    sd = make_sd(TINY_COMFY, dtype=dtype)
    f = tmp_path / "wan2.1_t2v_tiny_comfy.safetensors"
    save_file({prefix + k: v for k, v in sd.items()}, str(f))
    ck = load_dit_checkpoint(f)
    assert ck.format == "comfy-repack" and ck.family == "wan-base"
    assert ck.config == TINY_COMFY and ck.config_source == "inferred from shapes"
    assert ck.source_dtype == str(dtype).removeprefix("torch.")
    assert_sd_equal(ck.state_dict, sd)
    assert bool(prefix) == any("stripped key prefix" in n for n in ck.notes)
    ck32 = load_dit_checkpoint(f, dtype="fp32")
    assert all(t.dtype == torch.float32 for t in ck32.state_dict.values())
    assert inspect_checkpoint(f)["format"] == "comfy-repack"


def test_tiny_needs_num_heads_and_says_so(tmp_path):
    f = tmp_path / "tiny.safetensors"
    save_file(make_sd(), str(f))
    with pytest.raises(HeadsUnknownError) as e:
        load_dit_checkpoint(f)
    msg = str(e.value)
    assert "dim 64 is not a multiple of 128" in msg and "num_heads=2 (head_dim 32)" in msg
    with pytest.raises(ValueError, match=r"num_heads=3 does not fit .* divisible"):
        load_dit_checkpoint(f, num_heads=3)
    ck = load_dit_checkpoint(f, num_heads=2)
    assert ck.config == TINY
    d = inspect_checkpoint(f)  # reports everything, heads unknown
    assert d["config"]["num_heads"] is None and d["format"] == "comfy-repack"
    assert "pass num_heads" in format_inspection(d)
    assert inspect_checkpoint(f, num_heads=2)["config"] == TINY.to_dict()


def test_fp8_e4m3fn(tmp_path):
    sd = make_sd(TINY_COMFY, dtype=torch.bfloat16)
    stored = {k: (v.to(torch.float8_e4m3fn) if is_big_linear(k) else v) for k, v in sd.items()}
    f = tmp_path / "wan2.1_t2v_tiny_fp8_e4m3fn.safetensors"
    save_file(stored, str(f))
    ck = load_dit_checkpoint(f)
    assert ck.format == "comfy-fp8" and ck.config == TINY_COMFY
    assert set(ck.source_dtypes) == {"float8_e4m3fn", "bfloat16"}
    for k, v in stored.items():
        assert ck.state_dict[k].dtype == torch.bfloat16
        assert torch.equal(ck.state_dict[k], v.to(torch.float32).to(torch.bfloat16)), k
    assert any("dequantised" in n for n in ck.notes)
    assert inspect_checkpoint(f)["format"] == "comfy-fp8"


@pytest.mark.parametrize("style", ["scale_weight", "weight_scale"])
def test_fp8_scaled(tmp_path, style):
    sd = make_sd(TINY_COMFY, dtype=torch.bfloat16)
    stored: dict[str, torch.Tensor] = {"scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn)}
    scales = {}
    for k, v in sd.items():
        if is_big_linear(k):
            layer = k.removesuffix(".weight")
            scale = v.float().abs().max() / 448.0
            scales[k] = scale
            stored[k] = (v.float() / scale).to(torch.float8_e4m3fn)
            stored[f"{layer}.{style}"] = scale.reshape(())
            if style == "scale_weight":
                stored[f"{layer}.scale_input"] = torch.ones(())
            else:
                stored[f"{layer}.input_scale"] = torch.ones(())
                stored[f"{layer}.comfy_quant"] = torch.tensor(list(b'{"format": "float8_e4m3fn"}'),
                                                              dtype=torch.uint8)
        else:
            stored[k] = v
    f = tmp_path / "wan2.1_t2v_tiny_fp8_scaled.safetensors"
    save_file(stored, str(f))
    ck = load_dit_checkpoint(f)
    assert ck.format == "comfy-fp8-scaled" and set(ck.state_dict) == set(sd)
    ck32 = load_dit_checkpoint(f, dtype=torch.float32)
    for k, scale in scales.items():
        want = stored[k].to(torch.float32) * scale
        assert torch.equal(ck32.state_dict[k], want), k
        assert torch.equal(ck.state_dict[k], want.to(torch.bfloat16)), k
        assert torch.allclose(ck32.state_dict[k], sd[k].float(), rtol=0.07, atol=1e-3)  # fp8 rounding
    assert inspect_checkpoint(f)["format"] == "comfy-fp8-scaled"


def test_nvfp4_is_refused(tmp_path):
    sd = make_sd(TINY_COMFY, dtype=torch.bfloat16)
    sd["blocks.0.ffn.0.weight_scale_2"] = torch.ones(())
    f = tmp_path / "nvfp4.safetensors"
    save_file(sd, str(f))
    with pytest.raises(ValueError, match="NVFP4"):
        load_dit_checkpoint(f)


# ---- Self-Forcing-family .pt -------------------------------------------------------------------------------
def fsdp_names(sd):
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^blocks\.(\d+)\.", r"blocks.\1._fsdp_wrapped_module.", k)
        out["model._fsdp_wrapped_module." + k] = v
    return out


def test_self_forcing_trainer_pt(tmp_path):
    gen, ema, critic = make_sd(seed=1), make_sd(seed=2), make_sd(seed=3)
    f = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": {"model." + k: v for k, v in gen.items()},
                "critic": {"model." + k: v for k, v in critic.items()},
                "generator_ema": fsdp_names(ema)}, f)
    ck = load_dit_checkpoint(f, num_heads=2)
    assert ck.entry == "generator_ema" and set(ck.entries) == {"generator", "critic", "generator_ema"}
    assert ck.format == "self-forcing-pt" and ck.family == "self-forcing" and ck.cache_policy == "full"
    assert_sd_equal(ck.state_dict, ema)
    assert any("_fsdp_wrapped_module." in n for n in ck.notes)
    ck = load_dit_checkpoint(f, num_heads=2, entry="generator")
    assert ck.entry == "generator"
    assert_sd_equal(ck.state_dict, gen)
    with pytest.raises(ValueError, match=r"entry 'ema' is not in .*available entries: \['generator', 'critic', "):
        load_dit_checkpoint(f, num_heads=2, entry="ema")
    d = inspect_checkpoint(f, num_heads=2)
    assert d["entry"] == "generator_ema" and d["format"] == "self-forcing-pt" and d["cache_policy"] == "full"
    assert "generator_ema (available" in format_inspection(d)


def test_trainer_pt_with_generic_name_is_an_unknown_window_sink_student(tmp_path):
    folder = tmp_path / "checkpoint_model_001600"
    folder.mkdir()
    torch.save({"generator": {"model." + k: v for k, v in make_sd().items()}}, folder / "model.pt")
    ck = load_dit_checkpoint(folder / "model.pt", num_heads=2)
    assert ck.entry == "generator" and ck.family == "unknown" and ck.cache_policy == "window_sink"
    assert any("family not recognised" in n for n in ck.notes)


def test_critic_only_file_needs_explicit_entry(tmp_path):
    f = tmp_path / "critic.pt"
    torch.save({"critic": {"model." + k: v for k, v in make_sd().items()}}, f)
    with pytest.raises(ValueError, match="'critic' is the DMD fake score"):
        load_dit_checkpoint(f, num_heads=2)
    assert load_dit_checkpoint(f, num_heads=2, entry="critic").entry == "critic"


def test_reward_forcing_flat_pt(tmp_path):
    sd = make_sd(seed=4)
    f = tmp_path / "rewardforcing.pt"
    torch.save({"model." + k: v for k, v in sd.items()}, f)
    ck = load_dit_checkpoint(f, num_heads=2)
    assert ck.format == "reward-forcing-pt" and ck.family == "reward-forcing"
    assert ck.cache_policy == "window_sink" and ck.stream_config == StreamConfig.reward_forcing()
    assert_sd_equal(ck.state_dict, sd)
    assert inspect_checkpoint(f, num_heads=2)["family"] == "reward-forcing"


# ---- LongLive base + LoRA -------------------------------------------------------------------------------------
LORA_LAYERS = [f"blocks.{i}.{m}" for i in range(2) for m in
               ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")]


def make_lora(sd, rank=4, seed=5, key_form="base_model.model.{layer}.lora_{ab}.weight"):
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for layer in LORA_LAYERS:
        out_f, in_f = sd[layer + ".weight"].shape
        lora[key_form.format(layer=layer, ab="A")] = torch.randn(rank, in_f, generator=g) * 0.1
        lora[key_form.format(layer=layer, ab="B")] = torch.randn(out_f, rank, generator=g) * 0.1
    return lora


def test_longlive_base_plus_lora(tmp_path):
    base = make_sd(seed=6)
    f = tmp_path / "longlive_base.pt"
    torch.save({"generator": {"model." + k: v for k, v in base.items()}, "generator_ema": fsdp_names(base)}, f)
    lora = make_lora(base)
    lf = tmp_path / "lora.pt"
    torch.save({"generator_lora": lora}, lf)
    ck = load_dit_checkpoint(f, num_heads=2, lora=lf)
    assert ck.family == "longlive" and ck.cache_policy == "longlive" and ck.format == "longlive-pt"
    assert ck.stream_config == StreamConfig.longlive()
    for k, v in base.items():
        layer = k.removesuffix(".weight")
        if layer in LORA_LAYERS and k.endswith(".weight"):
            a = lora[f"base_model.model.{layer}.lora_A.weight"]
            b = lora[f"base_model.model.{layer}.lora_B.weight"]
            torch.testing.assert_close(ck.state_dict[k], v + b @ a, rtol=0, atol=1e-6)  # alpha = r -> scale 1
        else:
            assert torch.equal(ck.state_dict[k], v), k
    assert any("merged LoRA" in n and "20 layers" in n and "scale 1" in n for n in ck.notes)
    without = load_dit_checkpoint(f, num_heads=2)
    assert without.family == "longlive" and without.format == "longlive-pt"


def test_raw_peft_lora_with_adapter_config_alpha(tmp_path):
    base = make_sd(seed=7)
    f = tmp_path / "base.safetensors"
    save_file(base, str(f))
    (tmp_path / "lora").mkdir()
    lora = make_lora(base, rank=4, key_form="base_model.model.{layer}.lora_{ab}.default.weight")
    save_file(lora, str(tmp_path / "lora" / "adapter_model.safetensors"))
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    ck = load_dit_checkpoint(f, num_heads=2, lora=tmp_path / "lora" / "adapter_model.safetensors")
    k = "blocks.1.ffn.2"
    want = base[k + ".weight"] + 2.0 * lora[f"base_model.model.{k}.lora_B.default.weight"] @ \
        lora[f"base_model.model.{k}.lora_A.default.weight"]
    torch.testing.assert_close(ck.state_dict[k + ".weight"], want, rtol=0, atol=1e-6)
    ck1 = load_dit_checkpoint(f, num_heads=2, lora=tmp_path / "lora" / "adapter_model.safetensors", lora_alpha=4)
    assert any("scale 1)" in n for n in ck1.notes)


def test_lora_for_another_model_is_refused(tmp_path):
    base = make_sd(seed=8)
    f = tmp_path / "base.safetensors"
    save_file(base, str(f))
    lora = make_lora(make_sd(TINY_COMFY))
    save_file(lora, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ValueError, match="trained for another model"):
        load_dit_checkpoint(f, num_heads=2, lora=tmp_path / "lora.safetensors")
    with pytest.raises(ValueError, match="LoRA adapter.*pass it with --lora"):
        load_dit_checkpoint(tmp_path / "lora.safetensors")
    assert inspect_checkpoint(tmp_path / "lora.safetensors")["kind"] == "lora"


# ---- our export -----------------------------------------------------------------------------------------
def test_export_round_trip(tmp_path):
    sd = make_sd(seed=9)
    sc = StreamConfig(window_frames=12, sink_frames=3)
    out = tmp_path / "exports" / "stream_r1_tiny.safetensors"
    save_dit_export(out, {"_orig_mod." + k: v for k, v in sd.items()}, TINY, sc, extra={"step": 1600})
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind
    ck = load_dit_checkpoint(out)  # num_heads comes from the metadata
    assert ck.format == "stream-r1-export" and ck.family == "stream-r1"
    assert ck.config == TINY and ck.config_source == "stream_r1 export metadata"
    assert ck.stream_config == sc and ck.metadata["step"] == "1600"
    wan = to_wan_state_dict(ck.state_dict, ck.config)
    assert list(wan) == list(sd)  # same names, same order
    assert_sd_equal(wan, sd)
    with pytest.raises(ValueError, match=r"num_heads=4 contradicts"):
        load_dit_checkpoint(out, num_heads=4)
    d = inspect_checkpoint(out)
    assert d["format"] == "stream-r1-export" and d["stream_config"]["window_frames"] == 12
    assert "step: 1600" in format_inspection(d)
    save_dit_export(out, sd, TINY, extra={"family": "self-forcing"})  # overwrite in place
    ck = load_dit_checkpoint(out)
    assert ck.family == "self-forcing" and ck.cache_policy == "full"
    bad = dict(sd)
    bad.pop("head.modulation")
    with pytest.raises(ValueError, match="1 missing .*head.modulation"):
        save_dit_export(tmp_path / "bad.safetensors", bad, TINY)
    assert not (tmp_path / "bad.safetensors").exists()


# ---- diffusers names (converted) -----------------------------------------------------------------------------
def to_diffusers(sd):
    top = {"time_embedding.0": "condition_embedder.time_embedder.linear_1",
           "time_embedding.2": "condition_embedder.time_embedder.linear_2",
           "text_embedding.0": "condition_embedder.text_embedder.linear_1",
           "text_embedding.2": "condition_embedder.text_embedder.linear_2",
           "time_projection.1": "condition_embedder.time_proj", "head.modulation": "scale_shift_table",
           "head.head": "proj_out"}
    blk = {"modulation": "scale_shift_table", "self_attn.o": "attn1.to_out.0", "cross_attn.o": "attn2.to_out.0",
           "norm3": "norm2", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}
    for a, n in (("self_attn", "attn1"), ("cross_attn", "attn2")):
        blk.update({f"{a}.{p}": f"{n}.to_{p}" for p in "qkv"})
        blk.update({f"{a}.norm_{p}": f"{n}.norm_{p}" for p in "qk"})
    out = {}
    for k, v in sd.items():
        m = re.match(r"^(blocks\.\d+\.)(.+?)((\.weight|\.bias)?)$", k)
        if m:
            k = m[1] + blk.get(m[2], m[2]) + m[3]
        else:
            m = re.match(r"^(.+?)((\.weight|\.bias)?)$", k)
            k = top.get(m[1], m[1]) + m[2]
        out[k] = v
    return out


def test_diffusers_names_are_converted(tmp_path):
    sd = make_sd(seed=10)
    folder = tmp_path / "transformer"
    write_sharded(folder, to_diffusers(sd), n=2)
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "WanTransformer3DModel", "num_attention_heads": 2, "attention_head_dim": 32,
        "ffn_dim": 128, "num_layers": 2, "text_dim": 32, "freq_dim": 256, "in_channels": 16,
        "out_channels": 16, "patch_size": [1, 2, 2], "eps": 1e-6}))
    ck = load_dit_checkpoint(folder)
    assert ck.format == "diffusers-sharded" and ck.config == TINY
    assert_sd_equal(ck.state_dict, sd)
    assert any("diffusers" in n for n in ck.notes)


# ---- refusals ---------------------------------------------------------------------------------------------------
def save(tmp_path, name, sd):
    f = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(sd, str(f))
    else:
        torch.save(sd, f)
    return f


OTHER_FILES = {
    "wan_2.1_vae.safetensors": ({"decoder.middle.0.residual.0.gamma": (8, 1, 1, 1), "conv1.weight": (32, 32, 1, 1, 1),
                                 "encoder.conv1.weight": (8, 3, 3, 3, 3)}, "wan-vae", "Wan2.1 VAE"),
    "Wan2.1_VAE.pth": ({"decoder.middle.0.residual.0.gamma": (8, 1, 1, 1), "conv2.weight": (16, 16, 1, 1, 1)},
                       "wan-vae", "as the VAE"),
    "models_t5_umt5-xxl-enc-bf16.pth": ({"token_embedding.weight": (512, 32), "blocks.0.attn.q.weight": (32, 32),
                                         "norm.weight": (32,)}, "umt5 text encoder (wan layout)", "text encoder"),
    "umt5_hf.safetensors": ({"shared.weight": (512, 32), "encoder.block.0.layer.0.SelfAttention.q.weight": (32, 32),
                             "encoder.final_layer_norm.weight": (32,)}, "umt5 text encoder (hf layout)",
                            "text encoder"),
    "umt5_xxl_fp16.safetensors": ({"shared.weight": (512, 32), "encoder.block.0.layer.0.SelfAttention.q.weight":
                                   (32, 32), "spiece_model": (100,)}, "umt5 text encoder (comfy layout)",
                                  "Load CLIP"),
    "model.pth": ({"base_model.model.visual.patch_embed.proj.weight": (32, 3, 2, 14, 14),
                   "base_model.model.rm_head.weight": (1, 64),
                   "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight": (64, 64)},
                  "videoreward", "reward model"),
}


@pytest.mark.parametrize("name", list(OTHER_FILES))
def test_other_model_kinds_are_named(tmp_path, name):
    shapes, kind, words = OTHER_FILES[name]
    f = save(tmp_path, name, {k: (torch.zeros(s, dtype=torch.uint8) if k == "spiece_model" else torch.randn(s))
                              for k, s in shapes.items()})
    with pytest.raises(ValueError, match="not a Wan2.1 DiT") as e:
        load_dit_checkpoint(f)
    assert words in str(e.value)
    d = inspect_checkpoint(f)
    assert d["kind"] == kind and d["tensors"] == len(shapes)
    assert kind in format_inspection(d)


@pytest.mark.parametrize("extra, words", [
    ({"img_emb.proj.0.bias": (1280,), "blocks.0.cross_attn.k_img.weight": (64, 64)}, "image-to-video"),
    ({"vace_blocks.0.before_proj.weight": (64, 64)}, "VACE"),
    ({"control_adapter.conv.weight": (64, 24, 2, 2)}, "camera-control"),
])
def test_i2v_vace_camera_extras_are_refused(tmp_path, extra, words):
    sd = make_sd()
    sd.update({k: torch.zeros(s) for k, s in extra.items()})
    f = save(tmp_path, "wan2.1_i2v_tiny.safetensors", sd)
    with pytest.raises(ValueError, match=f"{words}.*text-to-video only"):
        load_dit_checkpoint(f, num_heads=2)
    assert "text-to-video only" in inspect_checkpoint(f, num_heads=2)["error"]


def test_nan_and_inf_are_named(tmp_path):
    sd = make_sd()
    sd["blocks.1.ffn.0.weight"][3, 4] = float("nan")
    sd["head.head.bias"][0] = float("inf")
    f = save(tmp_path, "diverged.safetensors", sd)
    with pytest.raises(ValueError, match=r"2 tensors contain NaN or Inf.*blocks.1.ffn.0.weight.*head.head.bias"):
        load_dit_checkpoint(f, num_heads=2)
    assert "error" not in inspect_checkpoint(f, num_heads=2)  # inspect reads no data


def test_mismatched_keys_are_listed(tmp_path):
    sd = make_sd()
    sd.pop("blocks.1.norm3.bias")
    sd["blocks.0.self_attn.extra.weight"] = torch.zeros(3)
    sd["blocks.0.ffn.2.bias"] = torch.zeros(7)
    f = save(tmp_path, "odd.safetensors", sd)
    with pytest.raises(ValueError) as e:
        load_dit_checkpoint(f, num_heads=2)
    msg = str(e.value)
    assert "1 missing (first: ['blocks.1.norm3.bias'])" in msg
    assert "1 unexpected (first: ['blocks.0.self_attn.extra.weight'])" in msg
    assert "blocks.0.ffn.2.bias (7,) != (64,)" in msg


def test_unknown_layout(tmp_path):
    f = save(tmp_path, "sd15.safetensors", {"first_stage_model.encoder.conv_in.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="not a recognised Wan2.1 DiT.*first_stage_model"):
        load_dit_checkpoint(f)
    assert inspect_checkpoint(f)["kind"] == "unknown"


def test_truncated_files(tmp_path):
    f = save(tmp_path, "cut.safetensors", make_sd())
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="incomplete.*download it again"):
        load_dit_checkpoint(f, num_heads=2)
    with pytest.raises(ValueError, match="incomplete"):
        inspect_checkpoint(f)
    p = save(tmp_path, "cut.pt", {"generator": make_sd()})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="incomplete.*download it again"):
        load_dit_checkpoint(p, num_heads=2)
    legacy = tmp_path / "legacy.pth"
    torch.save(make_sd(), legacy, _use_new_zipfile_serialization=False)
    assert load_dit_checkpoint(legacy, num_heads=2).format == "torch-pt"
    legacy.write_bytes(legacy.read_bytes()[:5000])
    with pytest.raises(ValueError, match="incomplete"):
        load_dit_checkpoint(legacy, num_heads=2)


def test_missing_file(tmp_path):
    save(tmp_path, "present.safetensors", {"a": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match=r"absent\.pt.*present\.safetensors"):
        load_dit_checkpoint(tmp_path / "absent.pt")


class NotATensor:
    pass


def test_pickle_with_objects_is_refused(tmp_path):
    f = tmp_path / "evil.pt"
    torch.save({"generator": {"model." + k: v for k, v in make_sd().items()}, "args": NotATensor()}, f)
    with pytest.raises(ValueError, match=r"refused for safety.*NotATensor.*weights_only=False"):
        load_dit_checkpoint(f, num_heads=2)


def test_safetensors_whose_header_length_starts_with_0x80_is_not_a_pickle(tmp_path):
    """A header of length 128 mod 256 makes byte 0 == 0x80, the pickle protocol marker."""
    import struct
    from safetensors.torch import save_file
    from stream_r1.checkpoint import open_state_dict
    for pad in range(64):
        p = tmp_path / f"m{pad}.safetensors"
        save_file({"x": torch.zeros(2)}, str(p), metadata={"pad": "y" * pad})
        if p.read_bytes()[0] == 0x80:
            break
    else:
        pytest.skip("no padding gave a 0x80 first byte")
    assert struct.unpack("<Q", p.read_bytes()[:8])[0] % 256 == 128
    raw, info = open_state_dict(p)
    assert info.container == "safetensors"


# ---- one set of weights streams the same from every layout -------------------------------------------------------
def write_every_layout(folder, sd) -> dict[str, object]:
    """The same student in each layout the loader takes, under names that say no family: {layout: path}."""
    flat = {"model." + k: v for k, v in sd.items()}
    out = {"trainer .pt": folder / "student_trainer.pt", "flat model.* .pt": folder / "student_flat.pt",
           "bare .safetensors": folder / "student.safetensors", "comfy prefix": folder / "student_comfy.safetensors",
           "export": folder / "student_export.safetensors"}
    torch.save({"generator": flat, "critic": flat, "generator_ema": fsdp_names(sd)}, out["trainer .pt"])
    torch.save(flat, out["flat model.* .pt"])
    save_file(sd, str(out["bare .safetensors"]))
    save_file({"model.diffusion_model." + k: v for k, v in sd.items()}, str(out["comfy prefix"]))
    save_dit_export(out["export"], sd, TINY)
    shards = folder / "sharded"
    shards.mkdir()
    keys, weight_map = list(sd), {}
    for i in range(2):
        name = f"student-{i + 1:05d}-of-00002.safetensors"
        save_file({k: sd[k] for k in keys[i::2]}, str(shards / name))
        weight_map.update({k: name for k in keys[i::2]})
    out["sharded + index"] = shards / "student.safetensors.index.json"
    out["sharded + index"].write_text(json.dumps({"weight_map": weight_map}))
    return out


def test_one_student_streams_the_same_latents_from_every_layout(tmp_path):
    from stream_r1.checkpoint import UNKNOWN_FAMILY_NOTE
    from stream_r1.loaders import load_student
    from stream_r1.stream import generate
    from tests.helpers import tiny_context

    sd = make_sd(seed=12)
    latents = {}
    for layout, path in write_every_layout(tmp_path, sd).items():
        model, info = load_student(str(path), num_heads=2, attention="sdpa")
        assert info.stream_config == StreamConfig.stream_r1(), layout          # window_sink, whatever the container
        assert info.family == ("stream-r1" if layout == "export" else "unknown"), layout
        assert (UNKNOWN_FAMILY_NOTE in info.notes) == (layout != "export"), layout
        latents[layout], _ = generate(model, tiny_context(), info.stream_config, 12, height=32, width=48, seed=3)
    first = next(iter(latents.values()))
    assert first.shape == (1, 12, 16, 4, 6)
    for layout, lat in latents.items():
        assert torch.equal(lat, first), layout


def test_family_comes_from_metadata_then_names_and_unknown_says_so(tmp_path, caplog):
    sd = make_sd(seed=13)
    tagged = tmp_path / "student_tagged.safetensors"
    save_file(sd, str(tagged), metadata={"stream_r1.family": "self-forcing"})
    assert load_dit_checkpoint(tagged, num_heads=2).cache_policy == "full"                  # the metadata says so
    named = tmp_path / "self_forcing_dmd.safetensors"
    save_file(sd, str(named))
    assert load_dit_checkpoint(named, num_heads=2).family == "self-forcing"                 # a released file's name
    plain = tmp_path / "student.safetensors"
    save_file(sd, str(plain))
    with caplog.at_level("WARNING"):
        ck = load_dit_checkpoint(plain, num_heads=2)
    assert ck.family == "unknown" and ck.stream_config == StreamConfig.stream_r1()
    assert sum("family not recognised" in r.getMessage() for r in caplog.records) == 1
    assert inspect_checkpoint(plain, num_heads=2)["cache_policy"] == "window_sink"
    bad = tmp_path / "bad_meta.safetensors"
    save_file(sd, str(bad), metadata={"format": "stream_r1", "wan_config": "{not json"})
    with pytest.raises(ValueError, match=r"metadata 'wan_config' is not JSON.*re-export"):
        load_dit_checkpoint(bad)

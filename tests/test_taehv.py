"""TAEHV preview decoder: the released file's key layout, strict loading, frame counts, streaming == whole decode
(and == a frame-by-frame reference in the checkpoint's own layer order), range, FLOP count, CLI and session use."""
from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save_file

from stream_r1.taehv import (
    MemBlock,
    TAEHV,
    TAEHVStreamingDecoder,
    TGrow,
    load_taehv,
    random_taehv,
    taehv_state_dict,
)
from stream_r1.vae import VAEConfig, WanVAE

LH, LW = 4, 6  # latent size -> 32x48 pixels


def _assert_close(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a - b).abs()
    assert diff.max() <= atol, f"max diff {diff.max():.3g}, mean {diff.mean():.3g}"


@pytest.fixture(scope="module")
def taehv() -> TAEHV:
    """Real-size TAEHV, seeded random weights, biases perturbed so that none is trivial."""
    model = random_taehv(seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(2, 16, 9, LH, LW, generator=torch.Generator().manual_seed(2))  # [B, 16, F, h, w] normalised


# ---- key layout and loading -----------------------------------------------------------------------------------------
def test_key_layout_is_the_released_files(taehv):
    """128 tensors (64 encoder + 64 decoder, 58 biases), shapes as upstream's TAEHV() for Wan2.1 builds them."""
    sd = taehv_state_dict(taehv)
    assert len(sd) == 128 and sum(k.endswith(".bias") for k in sd) == 58
    assert sum(k.startswith("decoder.") for k in sd) == 64
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["decoder.1.weight"] == (256, 16, 3, 3)
    assert shapes["decoder.3.conv.0.weight"] == (256, 512, 3, 3)
    assert shapes["decoder.7.conv.weight"] == (256, 256, 1, 1)      # stage 0 does not grow time
    assert shapes["decoder.13.conv.weight"] == (256, 128, 1, 1)     # x2 in time
    assert shapes["decoder.19.conv.weight"] == (128, 64, 1, 1)      # x2 in time
    assert shapes["decoder.20.weight"] == (64, 64, 3, 3) and "decoder.20.bias" not in shapes
    assert shapes["decoder.22.weight"] == (3, 64, 3, 3) and shapes["decoder.22.bias"] == (3,)
    assert shapes["encoder.0.weight"] == (64, 3, 3, 3)
    assert shapes["encoder.2.conv.weight"] == (64, 128, 1, 1)
    assert shapes["encoder.12.conv.weight"] == (64, 64, 1, 1)
    assert shapes["encoder.17.weight"] == (16, 64, 3, 3)


@pytest.mark.parametrize("suffix,file_dtype,with_encoder", [
    (".pth", torch.float32, True), (".safetensors", torch.float16, True), (".safetensors", torch.float32, False),
])
def test_loader_round_trip(tmp_path, taehv, suffix, file_dtype, with_encoder):
    sd = {k: v.to(file_dtype).contiguous() for k, v in taehv_state_dict(taehv, with_encoder=with_encoder).items()}
    path = tmp_path / f"taew2_1{suffix}"
    torch.save(sd, path) if suffix == ".pth" else save_file(sd, path)
    model = load_taehv(path, dtype=torch.float32)
    assert model.dtype == torch.float32 and not any(p.requires_grad for p in model.parameters())
    for k, v in model.decoder.state_dict().items():
        assert torch.equal(v, sd[f"decoder.{k}"].float()), k
    bf16 = load_taehv(path, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16


def _variant(taehv, z: int, rgb: int = 3) -> dict[str, torch.Tensor]:
    sd = taehv_state_dict(taehv)
    sd["decoder.1.weight"] = torch.zeros(256, z, 3, 3)
    sd["decoder.22.weight"], sd["decoder.22.bias"] = torch.zeros(rgb, 64, 3, 3), torch.zeros(rgb)
    return sd


def test_wrong_files_are_explained(tmp_path, taehv):
    cases = {
        "full Wan2.1 VAE": (WanVAE(VAEConfig.tiny()).state_dict(), "x.safetensors"),
        "Wan2.2 TI2V-5B": (_variant(taehv, 48, 12), "x.safetensors"),
        "Hunyuan Video 1.5": (_variant(taehv, 32, 12), "x.safetensors"),
        "'super' decoder": ({"decoder.0.weight": torch.zeros(512, 48, 1, 1)}, "x.safetensors"),
        "named like the TAEHV for Hunyuan Video": (taehv_state_dict(taehv), "taehv.safetensors"),
        "Wan DiT": ({"blocks.0.self_attn.q.weight": torch.zeros(2, 2)}, "x.safetensors"),
    }
    for expected, (sd, name) in cases.items():
        path = tmp_path / name
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
        with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            load_taehv(path)


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("decoder.9.conv.2.bias"), r"missing \(1\): \['decoder.9.conv.2.bias'\]"),
    (lambda sd: sd.update({"decoder.3.skip.weight": torch.zeros(256, 256, 1, 1)}), r"unexpected \(1\)"),
    (lambda sd: sd.update({"decoder.13.conv.weight": torch.zeros(128, 128, 1, 1)}),
     r"wrong shape \(1\): \['decoder.13.conv.weight \(128, 128, 1, 1\) \(expected \(256, 128, 1, 1\)\)'\]"),
    (lambda sd: sd.pop("encoder.5.conv.0.weight"), r"missing \(1\): \['encoder.5.conv.0.weight'\]"),
])
def test_strict_key_errors(taehv, edit, message):
    sd = taehv_state_dict(taehv)
    edit(sd)
    with pytest.raises(ValueError, match=message):
        load_taehv(sd)


# ---- decoding -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_frame_counts_follow_the_wan_vae(taehv, latents, chunks):
    dec = TAEHVStreamingDecoder(taehv)
    sizes = []
    for c in range(chunks):
        out = dec.decode(latents[:, :, 3 * c:3 * c + 3])
        assert out.shape[:2] == (2, 3) and out.shape[3:] == (8 * LH, 8 * LW)
        sizes.append(out.shape[2])
    assert sizes == [9, 12, 12][:chunks]                   # 1 + 4(f-1), then 4f
    assert dec.video_frames == sum(sizes) == 1 + 4 * (3 * chunks - 1)
    assert taehv.decode(latents[:, :, :1]).shape[2] == 1


@pytest.mark.parametrize("split", [[1] * 9, [3, 3, 3], [2, 1, 4, 2], [5, 4]])
def test_chunked_equals_whole_decode(taehv, latents, split):
    whole = taehv.decode(latents)
    dec = TAEHVStreamingDecoder(taehv)
    starts = [sum(split[:i]) for i in range(len(split))]
    chunked = torch.cat([dec.decode(latents[:, :, s:s + n]) for s, n in zip(starts, split)], dim=2)
    _assert_close(chunked, whole, atol=1e-5)


def _frame_by_frame(model: TAEHV, latents: torch.Tensor) -> torch.Tensor:
    """Reference: one frame at a time, depth first, in the checkpoint's layer order (upsample, then TGrow)."""
    layers, memory, out = model.decoder, {}, []

    def push(x: torch.Tensor, i: int) -> None:          # x [B, C, H, W]: one frame entering layer i
        if i == len(layers):
            out.append(x)
        elif isinstance(layers[i], MemBlock):
            past = memory.get(i, torch.zeros_like(x))
            memory[i] = x
            push(layers[i](x, past), i + 1)
        elif isinstance(layers[i], TGrow):
            for part in layers[i].conv(x).chunk(layers[i].stride, dim=1):  # sub-frames in time order
                push(part, i + 1)
        else:
            push(layers[i](x), i + 1)

    with torch.no_grad():
        for t in range(latents.shape[2]):
            push(latents[:, :, t], 0)
    return torch.stack(out, dim=2)[:, :, 3:].clamp(0, 1) * 2 - 1


def test_streaming_matches_a_frame_by_frame_reference(taehv, latents):
    _assert_close(taehv.decode(latents[:, :, :4]), _frame_by_frame(taehv, latents[:, :, :4]), atol=1e-5)


def test_range_and_bf16(taehv, latents):
    out = taehv.decode(latents * 3)
    assert out.dtype == torch.float32 and out.min() >= -1 and out.max() <= 1 and out.std() > 0
    half = random_taehv(seed=0, dtype=torch.bfloat16)
    assert half.decode(latents[:, :, :2]).dtype == torch.bfloat16


def test_state_dict_resumes_the_stream(taehv, latents):
    a = TAEHVStreamingDecoder(taehv)
    a.decode(latents[:, :, :3])
    b = TAEHVStreamingDecoder(taehv)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.decode(latents[:, :, 3:6]), b.decode(latents[:, :, 3:6]))
    with pytest.raises(ValueError, match="do not continue this stream"):
        b.decode(latents[:1, :, 6:7])
    with pytest.raises(ValueError, match="not a TAEHVStreamingDecoder state"):
        b.load_state_dict({"latent_frames": torch.tensor(1), "cache.0": torch.zeros(1)})


def test_decoder_macs_count_the_convs(taehv, latents):
    """The analytic count equals the MACs of the convolutions actually run (steady state: one latent frame)."""
    counted = []

    def hook(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1]
        counted.append(output.numel() * k * module.in_channels)  # groups = 1 everywhere

    handles = [m.register_forward_hook(hook) for m in taehv.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        dec = TAEHVStreamingDecoder(taehv)
        dec.decode(latents[:1, :, :1])
        counted.clear()
        dec.decode(latents[:1, :, 1:2])
    finally:
        for h in handles:
            h.remove()
    assert sum(counted) == taehv.decoder_macs(8 * LH, 8 * LW)
    per_frame = taehv.flop_per_video_frame(480, 832) / 1e12   # 0.132 TFLOP per 832x480 frame
    assert 0.131 < per_frame < 0.133 and 3.39 / per_frame > 25   # against the Wan VAE's 3.39 (spec-models §8.3)


def test_drop_in_for_the_stream_session(taehv, tiny_model):
    from stream_r1.config import StreamConfig
    from stream_r1.stream import generate
    ctx = torch.randn(1, 11, tiny_model.cfg.text_dim, generator=torch.Generator().manual_seed(3))
    sc = StreamConfig.stream_r1().replace(denoising_steps=(1000.0,))
    lat, frames = generate(tiny_model, ctx, sc, 6, height=32, width=48, decoder=TAEHVStreamingDecoder(taehv))
    assert frames.shape == (1, 21, 3, 32, 48) and frames.min() >= 0 and frames.max() <= 1
    whole = taehv.decode(lat.permute(0, 2, 1, 3, 4))                    # [1, 3, 21, 32, 48] in [-1, 1]
    _assert_close(frames, (whole.permute(0, 2, 1, 3, 4) + 1) / 2, atol=1e-5)


def test_cli_preview_decoder(tmp_path, taehv, capsys):
    from stream_r1.cli import build_parser, main
    from stream_r1.video_io import probe
    assert "--preview-decoder" in build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    path = tmp_path / "taew2_1.safetensors"
    save_file(taehv_state_dict(taehv), path)
    out = tmp_path / "preview.mp4"
    rc = main(["generate", "--frames", "21", "--width", "48", "--height", "32", "--out", str(out), "--quiet",
               "--device", "cpu", "--preview-decoder", str(path)])
    assert rc == 0
    assert probe(out)["frames"] == 21
    bad = tmp_path / "vae.safetensors"
    save_file(WanVAE(VAEConfig.tiny()).state_dict(), bad)
    assert main(["generate", "--frames", "9", "--width", "48", "--height", "32", "--out", str(out), "--quiet",
                 "--device", "cpu", "--preview-decoder", str(bad)]) == 2
    assert "full Wan2.1 VAE" in capsys.readouterr().err


def test_cpu_speed_against_the_full_vae(taehv, latents):
    """Timings printed, never asserted (CPU, one thread): TAEHV at real size vs our tiny full VAE and the real-size one;
    all three decode the chunk to the same 9 frames."""
    x = latents[:1, :, :3]                                   # one 3-latent chunk -> 9 frames of 32x48

    shapes = []

    def seconds(decode) -> float:
        decode(x)
        t0 = time.perf_counter()
        with torch.no_grad():
            shapes.append(tuple(decode(x).shape))
        return time.perf_counter() - t0

    torch.manual_seed(0)
    tiny_vae = WanVAE(VAEConfig.tiny()).eval()
    real_vae = WanVAE(VAEConfig.wan21()).eval()
    t_taehv, t_tiny, t_real = seconds(taehv.decode), seconds(tiny_vae.decode), seconds(real_vae.decode)
    print(f"\nCPU decode of 3 latent frames (9 frames, 32x48): TAEHV (real size) {t_taehv * 1e3:.1f} ms | "
          f"tiny Wan VAE (dim 8) {t_tiny * 1e3:.1f} ms | real Wan VAE {t_real * 1e3:.1f} ms "
          f"({t_real / t_taehv:.1f}x TAEHV's time)")
    assert shapes == [(1, 3, 9, 32, 48)] * 3                 # the timings are printed; the decodes must agree in shape


def test_bench_taehv_random(tmp_path):
    import json

    from stream_r1.bench import main as bench_main
    out = tmp_path / "bench.json"
    bench_main(["--model", "tiny", "--frames", "9", "--height", "32", "--width", "48", "--taehv", "random",
                "--repeats", "1", "--dtype", "float32", "--attention", "sdpa", "--json", str(out)])
    res = json.loads(out.read_text())
    assert res["decoder"] == "taehv" and res["frames"] == 9 and res["decode_s"] > 0

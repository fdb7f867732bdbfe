"""`python -m stream_r1`: the demo run, the exact-comparison flags, and errors that say what to change."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from stream_r1.cli import main
from stream_r1.config import StreamConfig
from stream_r1.stream import generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_files(tmp_path, tiny_model):
    ckpt = pytest.importorskip("stream_r1.checkpoint")
    path = tmp_path / "tiny.safetensors"
    ckpt.save_dit_export(path, tiny_model.state_dict(), tiny_model.cfg)
    g = torch.Generator().manual_seed(5)
    save_file({"noise": torch.randn(1, 15, 16, 4, 6, generator=g)}, tmp_path / "noise.safetensors")
    save_file({"context": torch.randn(1, 11, 32, generator=g)}, tmp_path / "ctx.safetensors")
    return tmp_path


@pytest.mark.parametrize("policy", ["window_sink", "full", "longlive"])
def test_exact_comparison_flags_reproduce_the_api(tiny_files, tiny_model, policy):
    out = tiny_files / f"lat_{policy}.safetensors"
    rc = main(["generate", "--checkpoint", str(tiny_files / "tiny.safetensors"),
               "--noise", str(tiny_files / "noise.safetensors"), "--context", str(tiny_files / "ctx.safetensors"),
               "--denoising-steps", "1000", "--cache-policy", policy, "--latents-out", str(out), "--no-decode",
               "--device", "cpu", "--dtype", "float32", "--width", "48", "--height", "32", "--quiet",
               "--attention", "sdpa"])
    assert rc == 0
    lat = load_file(out)["latents"]
    assert lat.shape == (1, 15, 16, 4, 6)
    noise = load_file(tiny_files / "noise.safetensors")["noise"]
    ctx = load_file(tiny_files / "ctx.safetensors")["context"]
    sc = StreamConfig.for_policy(policy).replace(denoising_steps=(1000.0,), full_cache_frames=15)
    ref, _ = generate(tiny_model, ctx, sc, 15, height=32, width=48, noise=noise)
    assert torch.allclose(lat, ref, atol=1e-6)


def test_final_clean_pass_runs_only_when_the_stream_can_continue(tiny_files, monkeypatch):
    """Without a state file nothing reads the final chunk's cache pass, so generate skips it (same latents: the
    test above); with --save-state it runs, so the saved stream continues exactly."""
    from stream_r1.wan.model import WanModel
    calls = []
    forward = WanModel.forward
    monkeypatch.setattr(WanModel, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    common = ["generate", "--checkpoint", str(tiny_files / "tiny.safetensors"), "--noise",
              str(tiny_files / "noise.safetensors"), "--context", str(tiny_files / "ctx.safetensors"),
              "--denoising-steps", "1000", "--no-decode", "--device", "cpu", "--dtype", "float32", "--width", "48",
              "--height", "32", "--quiet", "--attention", "sdpa", "--latents-out", str(tiny_files / "l.safetensors")]
    counts = []
    for extra in ([], ["--save-state", str(tiny_files / "s.safetensors")]):
        calls.clear()
        assert main([*common, *extra]) == 0
        counts.append(len(calls))
    assert counts == [5 * 2 - 1, 5 * 2]                 # 15 latent frames = 5 chunks of (1 step + 1 clean pass)


def test_demo_run_writes_a_playable_video(tmp_path):
    from stream_r1.video_io import probe
    out = tmp_path / "demo.mp4"
    r = subprocess.run([sys.executable, "-m", "stream_r1", "generate", "--frames", "21", "--width", "64",
                        "--height", "48", "--out", str(out), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert info["frames"] == 21 and info["fps"] == 16 and (info["width"], info["height"]) == (64, 48)


@pytest.mark.parametrize("args,msg", [
    (["--width", "50"], "width must be a positive multiple of 16, got 50; try 48"),
    (["--frames", "20"], "num_frames must be 4k+1"),
    (["--checkpoint", "/nonexistent/model.safetensors"], "nonexistent"),
    (["--prompt", ""], "--prompt is empty: give the text of the video, e.g. --prompt 'a red circle"),
])
def test_bad_input_is_explained(tmp_path, capsys, args, msg):
    rc = main(["generate", "--out", str(tmp_path / "x.mp4"), "--quiet", "--no-decode", *args])
    assert rc == 2
    assert msg in capsys.readouterr().err


def test_full_chain_with_text_encoder_and_vae_files(tmp_path, tiny_model, wan_sd, spiece_bytes):
    """Prompt -> umT5 (ComfyUI layout, tokenizer inside) -> DiT export -> Wan VAE file -> fragmented MP4."""
    from stream_r1.checkpoint import save_dit_export
    from stream_r1.text_encoder import wan_to_hf_key
    from stream_r1.vae import VAEConfig, WanVAE
    from stream_r1.video_io import probe

    te = {wan_to_hf_key(k): v.half() for k, v in wan_sd.items()}
    te["spiece_model"] = torch.frombuffer(bytearray(spiece_bytes), dtype=torch.uint8)
    save_file(te, tmp_path / "umt5_tiny_fp16.safetensors")
    torch.manual_seed(0)
    save_file({k: v.half() for k, v in WanVAE(VAEConfig.tiny()).state_dict().items()}, tmp_path / "vae.safetensors")
    save_dit_export(tmp_path / "student.safetensors", tiny_model.state_dict(), tiny_model.cfg)
    out = tmp_path / "chain.mp4"
    rc = main(["generate", "--checkpoint", str(tmp_path / "student.safetensors"),
               "--text-encoder", str(tmp_path / "umt5_tiny_fp16.safetensors"), "--vae", str(tmp_path / "vae.safetensors"),
               "--prompt", "zorap kelin mu", "--frames", "25", "--width", "48", "--height", "32", "--out", str(out),
               "--device", "cpu", "--quiet"])
    assert rc == 0
    info = probe(out)
    assert info["frames"] == 25 and (info["width"], info["height"]) == (48, 32)


def test_inspect_names_the_format(tmp_path, tiny_model, capsys):
    from stream_r1.checkpoint import save_dit_export
    save_dit_export(tmp_path / "m.safetensors", tiny_model.state_dict(), tiny_model.cfg)
    assert main(["inspect", str(tmp_path / "m.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "stream-r1-export" in text and "161,536" in text and "window_sink" in text


def test_resumed_run_logs_the_frames_of_its_own_file(tmp_path, caplog):
    """A resumed run's video holds only the new frames, and its log counts those: 21 frames, then resumed to 45, is
    a second file of 24 frames (it used to log 45)."""
    from stream_r1.video_io import probe
    common = ["generate", "--width", "64", "--height", "48", "--device", "cpu", "--quiet"]
    state = tmp_path / "s.safetensors"
    assert main([*common, "--frames", "21", "--out", str(tmp_path / "a.mp4"), "--save-state", str(state)]) == 0
    with caplog.at_level("INFO", logger="stream_r1"):
        assert main([*common, "--frames", "45", "--resume", str(state), "--out", str(tmp_path / "b.mp4")]) == 0
    assert probe(tmp_path / "b.mp4")["frames"] == 24
    assert "wrote 24 frames to" in caplog.text


def test_generate_help_says_what_runs_without_a_checkpoint():
    """Without --checkpoint the embedded shapes-world bundle runs, at the bundle's own size."""
    from stream_r1.cli import build_parser
    from stream_r1.shapes import bundle
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["generate"].format_help().split())
    m = bundle.manifest()
    assert "default: the embedded shapes-world model" in text
    assert f"default 832; {m['width']} for the shapes-world model" in text
    assert f"default 480; {m['height']} for the shapes-world model" in text


def test_tts_demo_run_writes_the_requested_frames(tmp_path, caplog):
    """Stream-T1 on the demo model with the analytic reward: 2 beams x 2 children, a bounded-delay stream."""
    from stream_r1.video_io import probe
    out = tmp_path / "t1.mp4"
    with caplog.at_level("INFO", logger="stream_r1"):
        rc = main(["generate", "--frames", "25", "--width", "64", "--height", "48", "--device", "cpu",
                   "--reward-model", "brightness", "--tts-beams", "2", "--tts-children", "2", "--out", str(out)])
    assert rc == 0
    info = probe(out)
    assert info["frames"] == 25 and (info["width"], info["height"]) == (64, 48)
    assert "4 candidates per chunk" in caplog.text and "bounded delay" in caplog.text


def test_tts_greedy_single_candidate_equals_plain_run(tmp_path):
    common = ["generate", "--frames", "25", "--width", "64", "--height", "48", "--device", "cpu", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "a.mp4"), "--latents-out", str(tmp_path / "a.safetensors")]) == 0
    assert main([*common, "--out", str(tmp_path / "b.mp4"), "--latents-out", str(tmp_path / "b.safetensors"),
                 "--tts-beams", "1", "--tts-children", "1", "--tts-rho", "0"]) == 0
    a, b = load_file(tmp_path / "a.safetensors")["latents"], load_file(tmp_path / "b.safetensors")["latents"]
    assert a.shape == (1, 7, 16, 6, 8) and torch.equal(a, b)


def test_tts_short_reward_loads_hpsv3(tmp_path):
    """--tts-short-reward: an HPSv3 file (synthetic, released key layout) scores each candidate's own frames."""
    from stream_r1.reward.hpsv3_synthetic import write_synthetic_hpsv3
    write_synthetic_hpsv3(tmp_path / "hps")
    out = tmp_path / "t1.mp4"
    assert main(["generate", "--frames", "13", "--width", "64", "--height", "48", "--device", "cpu", "--quiet",
                 "--reward-model", "brightness", "--tts-beams", "1", "--tts-children", "2",
                 "--tts-short-reward", str(tmp_path / "hps" / "HPSv3.safetensors"), "--out", str(out)]) == 0
    from stream_r1.video_io import probe
    assert probe(out)["frames"] == 13


@pytest.mark.parametrize("args,msg", [
    (["--tts-beams", "2"], "needs --reward-model"),
    (["--reward-model", "brightness", "--no-decode"], "drop --no-decode"),
])
def test_tts_bad_input_is_explained(tmp_path, args, msg, capsys):
    with pytest.raises(SystemExit, match=msg):
        main(["generate", "--frames", "5", "--width", "32", "--height", "32", "--device", "cpu", "--quiet",
              "--out", str(tmp_path / "x.mp4"), *args])


@pytest.mark.parametrize("device,compile,search,want", [
    ("cpu", True, "all", (False, 10)),
    ("cuda", False, "default", (False, 10)),
    ("cuda", True, "default", (True, 10)),
    ("cuda", False, "all", (True, 0)),
])
def test_conv_search_sets_cudnn_only_on_a_gpu(monkeypatch, device, compile, search, want):
    from stream_r1.cli import _cudnn_setup
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark_limit", 10)
    _cudnn_setup(torch.device(device), compile, search)
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.benchmark_limit) == want


def test_generate_counts_the_allocators_device_requests_per_chunk(monkeypatch):
    """On CUDA the streamed log line is followed by how many cudaMalloc calls each chunk made (a slow chunk with no
    compile may be paying for new device memory); on a CPU nothing is counted."""
    import torch

    from stream_r1.cli import _DeviceAllocations
    cpu = _DeviceAllocations()
    cpu.mark()
    assert cpu.counts == [] or torch.cuda.is_initialized()
    reads = iter([5, 9, 9, 12])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda: {"num_device_alloc": next(reads)})
    gpu = _DeviceAllocations()
    for _ in range(3):
        gpu.mark()
    assert gpu.counts == [4, 0, 3]

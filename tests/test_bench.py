"""`python -m stream_r1 bench` helpers that run without a GPU."""
import pytest


def test_bench_profile_classes_the_kernels_seen_on_the_h200():
    """Kernel names from a real H200 profile (bench/RESULTS.md, 2026-11-22) land in the right class."""
    from stream_r1.bench import kernel_class
    seen = {
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize256x128x64_warpgroupsize2x1x1": "conv",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float>": "conv",
        "triton_red_fused_clamp_min_convolution_div_expand_linalg_vector_norm_mul_silu_45": "fused elementwise",
        "fmha_cutlassF_bf16_aligned_32x128_gmem_sm80(PyTorchMemEffAttention::AttentionKernel)": "attention",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>": "attention",
        "nvjet_tst_256x128_64x4_1x2_h_bz_coopA_TNT": "gemm",
        "Memcpy DtoD (Device -> Device)": "other",
    }
    assert {n: kernel_class(n) for n in seen} == seen


def test_dit_flops_drop_one_pass_when_the_last_context_pass_is_skipped():
    from stream_r1.bench import dit_tflop
    from stream_r1.config import StreamConfig, WanConfig
    cfg, sc = WanConfig.preset("1.3b"), StreamConfig.for_policy("window_sink")
    full = dit_tflop(cfg, sc, 1560, 21)                                   # 81 frames at 832x480: 7 chunks
    skipped = dit_tflop(cfg, sc.replace(skip_last_context_pass=True), 1560, 21)
    last_pass = dit_tflop(cfg, sc, 1560, 21) - dit_tflop(cfg, sc, 1560, 18)   # the 7th chunk's 5 passes
    assert abs((full - skipped) - last_pass / 5) < 1e-9
    assert 780 < full < 800                                               # 786 TFLOP (bench/RESULTS.md)


def test_idle_gaps_measures_time_without_a_kernel():
    """Kernels [0,10], [5,20] (overlapping), [50,60], [61,70] µs: span 70, idle 30 + 1 = 31, longest gap 30."""
    from types import SimpleNamespace as NS

    from stream_r1.bench import idle_gaps
    cuda, cpu = NS(name="CUDA"), NS(name="CPU")
    ev = [NS(device_type=cuda, time_range=NS(start=a, end=b), name=n)
          for a, b, n in ((0, 10, "a"), (5, 20, "b"), (50, 60, "c"), (61, 70, "d"))]
    ev.append(NS(device_type=cpu, time_range=NS(start=20, end=50), name="host op"))
    got = idle_gaps(ev)
    assert got["span_ms"] == 0.07 and got["idle_ms"] == 0.031
    assert got["gaps"][0] == dict(us=30.0, after="b", before="c")
    assert got["idle_by_gap"]["0-10us"] == dict(n=1, ms=0.001)             # the 1 µs launch gap
    assert got["idle_by_gap"]["10-100us"] == dict(n=1, ms=0.03)             # the 30 µs host stall
    assert got["idle_by_gap"][">1000us"] == dict(n=0, ms=0.0)


def test_ab_runs_every_variant_each_round_and_reports_paired_ratios(tmp_path):
    """bench/ab.py on the tiny model: variants parsed, each run once per round after a warm-up, ratios paired."""
    import importlib.util
    import json
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("bench_ab", Path(__file__).parents[1] / "bench" / "ab.py")
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    got = ab.parse_variants("base:; skip:--skip-last-context-pass;o:--overlap-priority --attention sdpa")
    assert [n for n, _ in got] == ["base", "skip", "o"]
    assert got[1][1].skip_last_context_pass and got[2][1].overlap_priority and got[2][1].attention == "sdpa"
    with pytest.raises(SystemExit):
        ab.parse_variants("a:;a:--overlap")
    calls = []
    real = ab.run_once
    ab.run_once = lambda model, sc, *a, **k: calls.append(sc.skip_last_context_pass) or real(model, sc, *a, **k)
    out = tmp_path / "ab.json"
    ab.main(["--variants", "base:;skip:--skip-last-context-pass", "--rounds", "3", "--json", str(out), "--model", "tiny",
             "--frames", "13", "--height", "32", "--width", "48", "--no-vae", "--attention", "sdpa"])
    assert calls == [False, True] + [False, True] + [True, False] + [False, True]     # warm-up, then rotated order
    rows = json.loads(out.read_text())["variants"]
    assert rows["base"]["speedup_vs_first"] == 1.0 and len(rows["skip"]["totals"]) == 3
    lo, hi = rows["skip"]["speedup_range"]
    assert lo <= rows["skip"]["speedup_vs_first"] <= hi and len(rows["skip"]["chunk_median_s"]) == 2
    assert 0 < rows["skip"]["ttff_median_s"] <= rows["skip"]["chunk_median_s"][0] + 1e-3


def test_vae_flop_constant_is_the_decoders_counted_flops():
    """The bench's decode FLOPs per video frame, counted on meta tensors for the real Wan2.1 VAE at 832x480: a latent
    frame after the first makes 4 video frames."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from stream_r1.bench import VAE_DECODE_TFLOP_PER_FRAME
    from stream_r1.vae import VAEConfig, WanVAE
    with torch.device("meta"):
        vae = WanVAE(VAEConfig.wan21()).to(torch.bfloat16)
    with FlopCounterMode(display=False) as fc:
        vae.decoder(torch.empty(1, 16, 1, 60, 104, device="meta", dtype=torch.bfloat16),
                    [None] * vae.decoder.num_slots, False)
    assert abs(fc.get_total_flops() / 1e12 / 4 - VAE_DECODE_TFLOP_PER_FRAME) < 0.01


def test_comfyui_speed_splits_the_device_peak_by_phase():
    """bench/comfyui_speed.py: nvidia-smi's timestamped samples fall into the phase whose (start, end) holds them; a
    sample outside every phase counts as "other"; a partial last line is skipped."""
    import importlib.util
    from datetime import datetime
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("bench_comfyui_speed",
                                                  Path(__file__).parents[1] / "bench" / "comfyui_speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    t0 = 1_800_000_000.0

    def line(t: float, mib: int) -> str:
        return datetime.fromtimestamp(t).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3] + f", {mib}"

    lines = [line(t0 + 0.5, 900), line(t0 + 1.5, 81063), line(t0 + 1.9, 5000), line(t0 + 2.5, 10480),
             line(t0 + 3.0, 10300), line(t0 + 9.0, 3600), "2026/12/07 23:5"]
    phases = [("warmup", t0 + 1.0, t0 + 2.0), ("five_s", t0 + 2.0, t0 + 4.0)]
    assert speed.phase_peaks(lines, phases) == {"other": 3600, "warmup": 81063, "five_s": 10480}
    assert speed.phase_peaks([], phases) == {}

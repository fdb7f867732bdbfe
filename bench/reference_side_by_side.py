"""Side-by-side speed run: the PUBLIC reference streaming code against Stream-R1, same protocol, one command.

The reference code is NOT part of this repository. Fetch it into the git-ignored folder `.ref/`
(one sub-folder per repository, holding only the files it needs: see `.ref/<name>/SOURCE_COMMIT`):

    .ref/reward_forcing/   YepicAI/Reward-Forcing 944b3ca   (window 9 / sink 3, EMA sink)
    .ref/self_forcing/     guandeh17/Self-Forcing 33593df   (full 21-frame cache)
      each: wan/modules/{attention,model,causal_model,vae}.py, utils/{wan_wrapper,scheduler}.py,
            pipeline/causal_inference.py, demo_utils/memory.py, LICENSE

This script only imports that code at run time and drives the reference's own `CausalInferencePipeline`
exactly as its `inference.py` does (pipeline built, cast to bf16, moved to the GPU, `inference()` called on
[1, F, 16, 60, 104] bf16 noise); the few things that cannot run without checkpoints or absent packages are
patched at run time and listed in PATCHES (also written to the JSON).

Protocol: 832x480, denoising steps [1000, 750, 500, 250] warped with shift 5, 3 latent frames per chunk,
bf16, batch 1, real Wan2.1-T2V-1.3B dimensions with seeded random weights (speed does not depend on
values). Text encoding excluded (random [1, 512, 4096] context). End-to-end = `pipeline.inference()`:
DiT + the reference's Wan VAE `decode_to_pixel` of the whole latent video at the end.

    python3 bench/reference_side_by_side.py --json out.json            # references only
    python3 bench/reference_side_by_side.py --json out.json --ours     # + bench/bench_stream.py, ratios
    python3 bench/reference_side_by_side.py --device cpu --tiny --ours --json /tmp/s.json   # CPU smoke

Each reference runs in its own subprocess (both trees have top-level packages `wan`, `utils`, `pipeline`);
a failure prints its traceback and the other configurations still run.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

REFS = {
    # name: (repository, local_attn_size, sink_size, our bench_stream policy)
    "reward_forcing": ("YepicAI/Reward-Forcing", 9, 3, "window_sink"),
    "self_forcing": ("guandeh17/Self-Forcing", -1, 0, "full"),
}

WAN_1_3B = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=1536, ffn_dim=8960,
                freq_dim=256, text_dim=4096, out_dim=16, num_heads=12, num_layers=30,
                qk_norm=True, cross_attn_norm=True, eps=1e-6)
TINY = dict(WAN_1_3B, dim=64, ffn_dim=128, text_dim=32, num_heads=2, num_layers=2)
REF_FRAME_SEQ = 1560        # hard-coded in the references: 30 x 52 tokens per latent frame at 832x480

PATCHES = {
    "R1_imports": "Packages wan, wan.modules, utils, pipeline, demo_utils are registered as bare package objects "
                  "(their __init__.py import the T2V/I2V apps and training code, not needed here). "
                  "wan.modules.t5 and wan.modules.tokenizers are stubs (text encoder only; tokenizers needs "
                  "ftfy). demo_utils.memory is the real module on CUDA (a stub only in the CPU smoke mode: it "
                  "calls torch.cuda.current_device() at import).",
    "R2_diffusers": "Only when diffusers is not installed: diffusers.ModelMixin -> nn.Module subclass, ConfigMixin "
                    "-> empty mixin, register_to_config -> identity. They only record the constructor config "
                    "(no effect on forward); from_pretrained is replaced anyway (R4).",
    "R3_cross_attention": "wan.modules.model.flash_attention (cross-attention; asserts flash_attn is installed) -> "
                          "the repository's own wan.modules.attention.attention, i.e. its SDPA fallback "
                          "(q/k/v in bf16, no mask: context_lens is None in the cached path). Self-attention "
                          "already calls attention(), which picks that fallback by itself when flash_attn is "
                          "absent. Not applied if flash_attn is importable (see flash_attn_available).",
    "R4_dit_weights": "CausalWanModel.from_pretrained(path, local_attn_size, sink_size) -> "
                      "CausalWanModel(**Wan2.1-T2V-1.3B config, local_attn_size, sink_size) with its own "
                      "init_weights() under a fixed seed (built on the target device for speed).",
    "R5_vae_weights": "While WanVAEWrapper is built, torch.load of '.../Wan2.1_VAE.pth' returns the state dict of "
                      "a freshly seeded WanVAE_ built with the exact config _video_vae passes (captured), so "
                      "the reference's real Wan VAE class runs with random weights.",
    "R6_text_encoder": "text_encoder= a stub returning {'prompt_embeds': seeded random [1, 512, text_dim] bf16} "
                       "(text encoding is excluded from the protocol).",
    "R7_config": "SimpleNamespace instead of OmegaConf with the fields the pipeline reads: denoising_step_list "
                 "[1000,750,500,250], warp_denoising_step True, num_frame_per_block 3, independent_first_frame "
                 "False, context_noise 0, checkpoint_path, model_kwargs {timestep_shift 5.0, local_attn_size, "
                 "sink_size} (values of configs/{reward_forcing,self_forcing_dmd}.yaml + default_config.yaml).",
    "R8_timing": "Hooked runs: generator.forward is wrapped to cuda-synchronise and time-stamp after every "
                 "(len(steps)+1)-th call (= end of a chunk: 4 denoising calls + 1 context call), "
                 "vae.decode_to_pixel is wrapped to time it (synchronised). One extra plain run without any "
                 "hook gives e2e_plain_s. stdout of the reference (Self-Forcing prints every timestep) is "
                 "sent to /dev/null during timed runs (the prints still execute).",
    "T_tiny_only": "--tiny (smoke test only): CausalWanSelfAttention.max_attention_size (hard-coded "
                   "local*1560 or 32760) -> local*fs or 21*fs; pipeline.num_transformer_blocks 30 -> 2 and "
                   "frame_seq_length 1560 -> fs; after the original _initialize_kv_cache, k/v are "
                   "re-allocated as [B, S*fs/1560, 2, 32] (hard-coded 12 heads x 128). fs = tokens per latent "
                   "frame of the tiny grid.",
}


# ------------------------------------------------------------------------------------------------------
# worker: one reference tree per process
# ------------------------------------------------------------------------------------------------------
def _bare_package(name: str, path: Path) -> None:
    m = types.ModuleType(name)
    m.__path__ = [str(path)]
    m.__package__ = name
    sys.modules[name] = m


def _stub(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def _install_shims(root: Path, device_type: str) -> dict:
    import torch
    notes = {}
    for pkg, sub in (("wan", "wan"), ("wan.modules", "wan/modules"), ("utils", "utils"),
                     ("pipeline", "pipeline"), ("demo_utils", "demo_utils")):
        _bare_package(pkg, root / sub)

    def _no_text(*a, **k):
        raise RuntimeError("text encoder is excluded from the benchmark")

    _stub("wan.modules.t5", umt5_xxl=_no_text)
    _stub("wan.modules.tokenizers", HuggingfaceTokenizer=_no_text)
    if device_type != "cuda":
        class DynamicSwapInstaller:
            @staticmethod
            def install_model(*a, **k):
                pass

            @staticmethod
            def uninstall_model(*a, **k):
                pass

        _stub("demo_utils.memory", cpu=torch.device("cpu"), gpu=torch.device("cpu"), gpu_complete_modules=[],
              get_cuda_free_memory_gb=lambda *a, **k: 0.0, DynamicSwapInstaller=DynamicSwapInstaller,
              move_model_to_device_with_memory_preservation=lambda *a, **k: None)
        notes["demo_utils.memory"] = "stub (no CUDA)"
    if importlib.util.find_spec("diffusers") is None:
        class ModelMixin(torch.nn.Module):
            pass

        class ConfigMixin:
            config_name = None

        def register_to_config(init):
            @functools.wraps(init)
            def wrapper(self, *a, **k):
                init(self, *a, **k)
            return wrapper

        _stub("diffusers")
        _stub("diffusers.configuration_utils", ConfigMixin=ConfigMixin, register_to_config=register_to_config)
        _stub("diffusers.models")
        _stub("diffusers.models.modeling_utils", ModelMixin=ModelMixin)
        notes["diffusers"] = "stand-ins (not installed)"
    else:
        notes["diffusers"] = "installed"
    return notes


@contextlib.contextmanager
def _random_vae_checkpoint(vae_mod, seed: int):
    """R5: torch.load('.../Wan2.1_VAE.pth') -> seeded random state dict of the same WanVAE_ config."""
    import torch
    orig_cls, orig_load, captured = vae_mod.WanVAE_, torch.load, {}

    def capture(**cfg):
        captured.update(cfg)
        return orig_cls(**cfg)

    def fake_load(path, *a, **k):
        if not str(path).endswith("Wan2.1_VAE.pth"):
            return orig_load(path, *a, **k)
        assert captured, "WanVAE_ config was not captured"
        torch.manual_seed(seed)
        with torch.device("cpu"):
            return orig_cls(**captured).state_dict()

    vae_mod.WanVAE_, torch.load = capture, fake_load
    try:
        yield captured
    finally:
        vae_mod.WanVAE_, torch.load = orig_cls, orig_load


def _sync(dev):
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _run_once(pipe, noise, dev, calls_per_chunk: int, hooked: bool) -> dict:
    import torch
    marks, vae_t = [], []
    if hooked:
        gen_forward, vae_decode = pipe.generator.forward, pipe.vae.decode_to_pixel
        count = [0]

        def forward(*a, **k):
            out = gen_forward(*a, **k)
            count[0] += 1
            if count[0] % calls_per_chunk == 0:
                _sync(dev)
                marks.append(time.perf_counter())
            return out

        def decode(*a, **k):
            _sync(dev)
            t = time.perf_counter()
            out = vae_decode(*a, **k)
            _sync(dev)
            vae_t.append(time.perf_counter() - t)
            return out

        pipe.generator.forward, pipe.vae.decode_to_pixel = forward, decode
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        mem0 = torch.cuda.memory_allocated(dev)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), torch.no_grad():
            _sync(dev)
            t0 = time.perf_counter()
            video, latents = pipe.inference(noise=noise, text_prompts=["benchmark"], return_latents=True,
                                            low_memory=False)
            _sync(dev)
            total = time.perf_counter() - t0
    finally:
        if hooked:
            del pipe.generator.forward, pipe.vae.decode_to_pixel     # back to the class methods
    res = dict(e2e_s=total, video_shape=list(video.shape), latent_shape=list(latents.shape))
    if dev.type == "cuda":
        res["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
        res["mem_before_gib"] = mem0 / 2 ** 30
    if hooked:
        ends = [t0] + marks
        res["chunk_s"] = [b - a for a, b in zip(ends, ends[1:])]
        res["dit_s"] = marks[-1] - t0
        res["vae_s"] = vae_t[0]
        res["other_s"] = total - res["dit_s"] - res["vae_s"]
    del video, latents
    return res


def worker(a) -> None:
    import torch
    ref = a.worker
    repo, local_attn_size, sink_size, _ = REFS[ref]
    root = Path(a.ref_root) / ref
    dev = torch.device(a.device)
    dtype = torch.bfloat16
    cfg = TINY if a.tiny else WAN_1_3B
    H, W = (32, 48) if a.tiny else (a.height, a.width)
    lh, lw = H // 8, W // 8
    fs = (lh // 2) * (lw // 2)
    frames_list = [int(f) for f in a.frames.split(",")]
    steps = [int(s) for s in a.steps.split(",")]
    commit = (root / "SOURCE_COMMIT").read_text().split() if (root / "SOURCE_COMMIT").exists() else ["?", "?"]
    meta = dict(ref=ref, repository=repo, commit=commit[-1], local_attn_size=local_attn_size,
                sink_size=sink_size, size=f"{W}x{H}", dtype="bfloat16", steps=steps, shift=5.0,
                frames_per_chunk=3, tiny=a.tiny, model=cfg, device=str(dev),
                device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                torch=torch.__version__, python=sys.version.split()[0])
    results = []

    def dump():
        Path(a.worker_out).write_text(json.dumps(dict(meta=meta, results=results), indent=1))

    sys.path.insert(0, str(root))
    os.chdir(root)
    meta["shims"] = _install_shims(root, dev.type)
    import wan.modules.attention as wattn
    import wan.modules.model as wmodel
    import wan.modules.causal_model as wcausal
    import wan.modules.vae as wvae
    import utils.wan_wrapper as wrapper_mod
    import pipeline.causal_inference as pipe_mod

    # R3
    meta["flash_attn_available"] = bool(wattn.FLASH_ATTN_2_AVAILABLE or wattn.FLASH_ATTN_3_AVAILABLE)
    if not meta["flash_attn_available"]:
        wmodel.flash_attention = wattn.attention
    meta["attention"] = "flash_attn" if meta["flash_attn_available"] else "reference attention() -> SDPA fallback"

    # R4
    CausalWanModel = wcausal.CausalWanModel
    build_dev = dev

    def random_from_pretrained(path, local_attn_size=-1, sink_size=0, **kw):
        torch.manual_seed(a.seed)
        with torch.device(build_dev):
            return CausalWanModel(**cfg, local_attn_size=local_attn_size, sink_size=sink_size)

    CausalWanModel.from_pretrained = staticmethod(random_from_pretrained)

    # R6
    g = torch.Generator(device="cpu").manual_seed(a.seed + 1)
    context = torch.randn(1, cfg["text_len"], cfg["text_dim"], generator=g).to(dev, dtype)

    class TextStub(torch.nn.Module):
        def forward(self, text_prompts):
            return {"prompt_embeds": context}

    # R7
    args = types.SimpleNamespace(
        denoising_step_list=steps, warp_denoising_step=True, num_frame_per_block=3,
        independent_first_frame=False, context_noise=0, checkpoint_path="checkpoints",
        model_kwargs=dict(timestep_shift=5.0, local_attn_size=local_attn_size, sink_size=sink_size))

    t_build = time.perf_counter()
    with _random_vae_checkpoint(wvae, a.seed + 2) as vae_cfg:     # R5
        pipe = pipe_mod.CausalInferencePipeline(args, device=dev, text_encoder=TextStub())
    meta["vae_config"] = {k: v for k, v in vae_cfg.items()}
    pipe = pipe.to(dtype=torch.bfloat16)                        # as inference.py
    pipe.generator.to(device=dev)
    pipe.vae.to(device=dev)
    meta["build_s"] = round(time.perf_counter() - t_build, 2)
    meta["warped_steps"] = [round(float(t), 3) for t in pipe.denoising_step_list]
    meta["dit_params"] = sum(p.numel() for p in pipe.generator.parameters())
    meta["vae_params"] = sum(p.numel() for p in pipe.vae.parameters())

    if a.tiny:                                                  # T_tiny_only
        n_heads, head_dim = cfg["num_heads"], cfg["dim"] // cfg["num_heads"]
        for m in pipe.generator.model.modules():
            if isinstance(m, wcausal.CausalWanSelfAttention):
                m.max_attention_size = m.max_attention_size // REF_FRAME_SEQ * fs
        pipe.num_transformer_blocks = cfg["num_layers"]
        pipe.frame_seq_length = fs
        orig_init = pipe._initialize_kv_cache

        def tiny_kv_cache(batch_size, dtype, device):
            orig_init(batch_size=batch_size, dtype=dtype, device=device)
            for c in pipe.kv_cache1:
                size = c["k"].shape[1]          # local*frame_seq_length (already fs) or hard-coded 32760
                if size % REF_FRAME_SEQ == 0:
                    size = size // REF_FRAME_SEQ * fs
                for key in ("k", "v"):
                    c[key] = torch.zeros([batch_size, size, n_heads, head_dim], dtype=dtype, device=device)

        pipe._initialize_kv_cache = tiny_kv_cache
    else:
        assert fs == REF_FRAME_SEQ, f"the references hard-code 1560 tokens per frame (832x480); got {fs}"
    dump()

    calls_per_chunk = len(steps) + 1
    for n_frames in frames_list:
        try:
            lat = 1 + (n_frames - 1) // 4
            assert lat % 3 == 0, f"{n_frames} frames = {lat} latent frames, not a multiple of 3"
            gn = torch.Generator(device="cpu").manual_seed(a.seed + 3)
            noise = torch.randn([1, lat, 16, lh, lw], generator=gn).to(dev, torch.bfloat16)
            repeats = a.repeats if n_frames <= 81 else a.repeats_long
            warm = a.warmup if n_frames <= 81 or not results else a.warmup_long
            for _ in range(warm):
                _run_once(pipe, noise, dev, calls_per_chunk, hooked=True)
            runs = [_run_once(pipe, noise, dev, calls_per_chunk, hooked=True) for _ in range(repeats)]
            plain = None if a.no_plain else _run_once(pipe, noise, dev, calls_per_chunk, hooked=False)
            best = min(runs, key=lambda r: r["e2e_s"])
            vf = best["video_shape"][1]
            cs = best["chunk_s"]
            row = dict(
                ref=ref, frames=vf, latent_frames=lat, chunks=len(cs), warmup=warm, repeats=repeats,
                chunk_kind="DiT only (decode runs once at the end)",
                e2e_s=round(best["e2e_s"], 4), fps_e2e=round(vf / best["e2e_s"], 2),
                dit_s=round(best["dit_s"], 4), fps_dit=round(vf / best["dit_s"], 2),
                vae_s=round(best["vae_s"], 4), other_s=round(best["other_s"], 4),
                vae_share=round(best["vae_s"] / best["e2e_s"], 3),
                peak_gib=round(best["peak_gib"], 3) if "peak_gib" in best else None,
                mem_before_gib=round(best["mem_before_gib"], 3) if "mem_before_gib" in best else None,
                chunk_first_s=round(cs[0], 4), chunk_last_s=round(cs[-1], 4),
                chunk_mean_after_first_s=round(sum(cs[1:]) / max(1, len(cs) - 1), 4),
                chunk_s=[round(c, 4) for c in cs],
                all_e2e_s=[round(r["e2e_s"], 4) for r in runs],
                e2e_plain_s=None if plain is None else round(plain["e2e_s"], 4),
                fps_e2e_plain=None if plain is None else round(vf / plain["e2e_s"], 2),
                peak_plain_gib=round(plain["peak_gib"], 3) if plain and "peak_gib" in plain else None,
                video_shape=best["video_shape"])
            results.append(row)
            print(f"[{ref}] {vf} frames: e2e {row['e2e_s']} s ({row['fps_e2e']} FPS), DiT {row['dit_s']} s, "
                  f"VAE {row['vae_s']} s, peak {row['peak_gib']} GiB", flush=True)
            del noise
        except Exception as e:  # keep going with the other lengths
            traceback.print_exc()
            results.append(dict(ref=ref, frames=n_frames, error=f"{type(e).__name__}: {e}"))
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        dump()


# ------------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------------
def _run_ours(a, policy: str, frames: int, outdir: Path, no_vae: bool, variant: str, vi: int) -> dict:
    out = outdir / f"ours_v{vi}_{policy}_{frames}{'_dit' if no_vae else ''}.json"
    cmd = [sys.executable, str(REPO / "bench" / "bench_stream.py"), "--policy", policy, "--frames", str(frames),
           "--json", str(out), "--repeats", str(a.repeats if frames <= 81 else a.repeats_long)]
    if no_vae:
        cmd.append("--no-vae")
    cmd += variant.split()
    if a.tiny:
        cmd += ["--model", "tiny", "--height", "32", "--width", "48"]
    print("$", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0 or not out.exists():
        print(p.stdout[-4000:], flush=True)
        return dict(policy=policy, frames=frames, vae=not no_vae, variant=variant,
                    error=f"bench_stream.py exited {p.returncode}")
    d = json.loads(out.read_text())
    return dict(policy=policy, frames=d["frames"], vae=not no_vae, variant=variant, command=" ".join(cmd[1:]),
                chunk_kind="DiT only" if no_vae else "DiT + streamed decode of the chunk", e2e_s=d["total_s"], fps_e2e=d["fps_end_to_end"],
                dit_s=d.get("dit_s"), vae_s=d.get("decode_s"), peak_gib=d["peak_gib"], ttff_s=d["ttff_s"],
                chunk_first_s=d["chunk_s"][0], chunk_last_s=d["chunk_s"][-1],
                chunk_mean_after_first_s=round(sum(d["chunk_s"][1:]) / max(1, len(d["chunk_s"]) - 1), 4),
                chunk_s=d["chunk_s"], attention_fn=d.get("attention_fn"), device=d.get("device"), raw=d)


def _fmt(x, nd=3):
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def print_table(report: dict) -> None:
    print(f"\n{'impl':40} {'frames':>6} {'e2e s':>8} {'FPS':>6} {'DiT s':>7} {'VAE s':>7} {'peak GiB':>8} "
          f"{'chunk first/mean/last s':>24}")
    rows = [(f"ref {r['ref']}", r) for r in report["reference"]] + \
           [(f"ours {r['policy']}" + ("" if r.get("vae", True) else " noVAE") + (f" [{r['variant']}]" if r.get("variant") else ""), r)
            for r in report.get("ours", [])]
    for name, r in rows:
        if "error" in r:
            print(f"{name:40} {r.get('frames', '?'):>6} ERROR {r['error']}")
            continue
        ch = f"{r['chunk_first_s']:.3f}/{r['chunk_mean_after_first_s']:.3f}/{r['chunk_last_s']:.3f}"
        print(f"{name:40} {r['frames']:>6} {r['e2e_s']:>8.3f} {r['fps_e2e']:>6.2f} {_fmt(r['dit_s']):>7} "
              f"{_fmt(r['vae_s']):>7} {_fmt(r['peak_gib'], 2):>8} {ch:>24}")
    print("chunk: ref = DiT only (it decodes the whole video at the end); ours = DiT + that chunk's decode, "
          "ours (no VAE) = DiT only")
    for c in report.get("ratios", []):
        v = f" [{c['variant']}]" if c.get("variant") else ""
        print(f"ratio ours{v}/ref {c['ref']:15} {c['frames']:>4} frames: FPS x{_fmt(c['fps_e2e_ratio'])}, "
              f"DiT time x{_fmt(c['dit_time_ratio'])}, VAE time x{_fmt(c['vae_time_ratio'])}, "
              f"peak memory x{_fmt(c['peak_ratio'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="combined report (written after every configuration)")
    ap.add_argument("--ref-root", default=str(REPO / ".ref"))
    ap.add_argument("--refs", default="reward_forcing,self_forcing")
    ap.add_argument("--rf-frames", default="81,477", help="video frames for Reward Forcing (4k+1, k+1 = 3m)")
    ap.add_argument("--sf-frames", default="81", help="video frames for Self-Forcing (at most 81: 21-frame cache)")
    ap.add_argument("--steps", default="1000,750,500,250")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--device", default=None, help="default: cuda if available")
    ap.add_argument("--tiny", action="store_true", help="smoke test: dim 64 / 2 heads / 2 layers, 48x32 px")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--warmup-long", type=int, default=0, help="warm-up runs for >81 frames after a shorter one")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs for <=81 frames (best is reported)")
    ap.add_argument("--repeats-long", type=int, default=1, help="timed runs for >81 frames")
    ap.add_argument("--no-plain", action="store_true", help="skip the extra un-hooked run")
    ap.add_argument("--ours", action="store_true", help="also run bench/bench_stream.py and report ratios")
    ap.add_argument("--ours-args", action="append", default=None,
                    help="with --ours: extra bench_stream.py arguments, one variant per use "
                         "(e.g. --ours-args='' --ours-args='--attention cudnn --compile'); default one plain variant")
    ap.add_argument("--no-ours-dit", action="store_true",
                    help="with --ours: skip the extra bench_stream --no-vae runs (per-chunk DiT) at <=81 frames")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--list-patches", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--frames", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.list_patches:
        print(json.dumps(PATCHES, indent=1))
        return
    if a.device is None:
        import torch
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.worker:
        worker(a)
        return

    report = dict(date=time.strftime("%Y-%m-%d %H:%M:%S"), command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                  protocol=dict(size=f"{a.width}x{a.height}" if not a.tiny else "48x32", steps=a.steps,
                                shift=5.0, frames_per_chunk=3, dtype="bfloat16", batch=1, tiny=a.tiny,
                                text_encoding="excluded (random context)",
                                end_to_end="reference pipeline.inference(): DiT + decode_to_pixel of all frames"),
                  patches=PATCHES, reference=[], reference_meta={}, ours=[], ratios=[])

    def save():
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(report, indent=1))

    tmp = Path(tempfile.mkdtemp(prefix="refbench_"))
    for ref in [r for r in a.refs.split(",") if r]:
        frames = a.rf_frames if ref == "reward_forcing" else a.sf_frames
        out = tmp / f"{ref}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", ref, "--worker-out", str(out),
               "--frames", frames, "--ref-root", a.ref_root, "--device", a.device, "--steps", a.steps,
               "--height", str(a.height), "--width", str(a.width), "--seed", str(a.seed),
               "--warmup", str(a.warmup), "--warmup-long", str(a.warmup_long), "--repeats", str(a.repeats),
               "--repeats-long", str(a.repeats_long)] + (["--tiny"] if a.tiny else []) + \
              (["--no-plain"] if a.no_plain else [])
        print(f"== reference {ref} ({REFS[ref][0]}), frames {frames}", flush=True)
        t = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO).returncode
        got = json.loads(out.read_text()) if out.exists() else dict(meta={}, results=[])
        report["reference_meta"][ref] = dict(got["meta"], worker_rc=rc, wall_s=round(time.perf_counter() - t, 1))
        done = {r["frames"] for r in got["results"] if "error" not in r}
        report["reference"] += got["results"]
        for f in frames.split(","):
            if int(f) not in done and not any(r.get("frames") == int(f) for r in got["results"]):
                report["reference"].append(dict(ref=ref, frames=int(f), error=f"worker exited {rc} before it ran"))
        save()

    if a.ours:
        for ref in [r for r in a.refs.split(",") if r]:
            policy = REFS[ref][3]
            for f in (a.rf_frames if ref == "reward_forcing" else a.sf_frames).split(","):
                for vi, variant in enumerate(a.ours_args or [""]):
                    for no_vae in ((False, True) if int(f) <= 81 and not a.no_ours_dit else (False,)):
                        try:
                            report["ours"].append(_run_ours(a, policy, int(f), tmp, no_vae, variant, vi))
                        except Exception as e:
                            traceback.print_exc()
                            report["ours"].append(dict(policy=policy, frames=int(f), vae=not no_vae,
                                                       variant=variant, error=repr(e)))
                        save()
        def ratio(x, y):
            return round(x / y, 3) if (x is not None and y) else None

        for r, o in [(r, o) for r in report["reference"] for o in report["ours"]]:
            if ("error" in r or "error" in o or not o.get("vae") or o.get("policy") != REFS[r["ref"]][3]
                    or o.get("frames") != r.get("frames")):
                continue
            report["ratios"].append(dict(ref=r["ref"], policy=o["policy"], variant=o["variant"], frames=r["frames"],
                                         fps_e2e_ratio=ratio(o["fps_e2e"], r["fps_e2e"]),
                                         dit_time_ratio=ratio(o["dit_s"], r["dit_s"]),
                                         vae_time_ratio=ratio(o["vae_s"], r["vae_s"]),
                                         peak_ratio=ratio(o["peak_gib"], r["peak_gib"])))
        save()
    print_table(report)
    save()
    if a.json:
        print("wrote", a.json)


if __name__ == "__main__":
    main()

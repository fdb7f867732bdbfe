"""Cost of Stream-T1 test-time scaling against plain streaming, at real 1.3B dims with seeded random weights.

    python bench/tts_cost.py --json bench/results/tts_cost.json      # GPU: 1.3B, 832x480, bf16, Wan VAE
    python bench/tts_cost.py --tiny                                  # CPU smoke run (tiny model and VAE)

Configurations: plain streaming; beams 1 x children 1 (the search machinery, one candidate); 2 x 2; 2 x 2 with
memory sinking (longlive cache policy, sinking forced on). Reported per configuration (median of --repeats runs
after one warm-up): wall time per chunk in steady state (chunks after the first) and its multiplier against
plain streaming, peak GPU memory (CUDA only; CPU: null) and its excess over plain, the live KV pages of the search
(peak) and the delay before the first output chunk (wall time from the start to the first chunk handed out).
The reward is the analytic BrightnessReward, so the numbers are the engine's cost (DiT, decode, forks, batching)
without the reward models (HPSv3 ~16 GB, VideoReward ~4.5 GB, whose cost is theirs). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stream_r1.config import StreamConfig, WanConfig, latent_frames_for  # noqa: E402
from stream_r1.loaders import random_student  # noqa: E402
from stream_r1.stream import StreamSession, chunks_for_frames  # noqa: E402
from stream_r1.tts import BrightnessReward, StreamT1, T1Config, t1_cost  # noqa: E402
from stream_r1.vae import StreamingDecoder, VAEConfig, WanVAE  # noqa: E402

CONFIGS = {
    "plain": None,
    "beams1_children1": ("window_sink", T1Config(beams=1, children=1, rho=0.0, sinking=False)),
    "beams2_children2": ("window_sink", T1Config(beams=2, children=2)),
    "beams2_children2_sinking": ("longlive", T1Config(beams=2, children=2, sinking=True, short_threshold=-1e9,
                                                      long_threshold=-1e9)),
}
"""name -> (cache policy, search config); the sinking run's thresholds make every gate fire (APPEND until the
sink is full, then EMA), so its cost is the upper bound of the sinking bookkeeping."""


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run_config(name, model, decoder, context, args, dev) -> dict:
    policy, cfg = CONFIGS[name] if CONFIGS[name] is not None else ("window_sink", None)
    sc = StreamConfig.for_policy(policy)
    n_chunks = chunks_for_frames(latent_frames_for(args.frames), sc.frames_per_block)
    decoder.reset()
    sess = StreamSession(model, sc, context, height=args.height, width=args.width, seed=0, decoder=decoder)
    t1 = StreamT1(sess, BrightnessReward(), cfg) if cfg is not None else None
    stream = t1.run(n_chunks) if t1 is not None else sess.run(n_chunks)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _sync(dev)
    step_times: list[float] = []
    if t1 is not None:                                       # time each search step (it may emit 0..n chunks)
        step = t1.step

        def timed(**kw):
            _sync(dev)
            s = time.perf_counter()
            done = step(**kw)
            _sync(dev)
            step_times.append(time.perf_counter() - s)
            return done

        t1.step = timed
    t0 = prev = time.perf_counter()
    first = None
    for _ in stream:
        _sync(dev)
        now = time.perf_counter()
        first = now - t0 if first is None else first
        if t1 is None:
            step_times.append(now - prev)
            prev = now
    _sync(dev)
    total = time.perf_counter() - t0
    steady = step_times[1:] or step_times
    return dict(total_s=total, first_output_s=first, chunk_s=statistics.median(steady), chunks=n_chunks,
                peak_gib=torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None,
                peak_pages=t1.pool.peak_pages if t1 is not None and t1.pool is not None else None,
                page_mib=(t1.pool.peak_bytes / max(1, t1.pool.peak_pages) / 2 ** 20)
                if t1 is not None and t1.pool is not None and t1.pool.peak_pages else None)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model and VAE at 32x48 on the CPU (smoke test)")
    ap.add_argument("--frames", type=int, default=None, help="video frames, 4k+1 (default 81; --tiny 21)")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on the CPU")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per configuration (default 3; --tiny 1)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--json", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    tiny = args.tiny
    args.frames = args.frames or (21 if tiny else 81)
    args.height, args.width = args.height or (32 if tiny else 480), args.width or (48 if tiny else 832)
    repeats = args.repeats or (1 if tiny else 3)
    dev = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown or "plain" not in names:
        raise SystemExit(f"--configs must include plain and name only {', '.join(CONFIGS)}; got {args.configs}")

    mcfg = WanConfig.tiny() if tiny else WanConfig.wan_1_3b()
    model = random_student(mcfg, seed=0, device=dev, dtype=dtype, attention="sdpa" if tiny else "auto")
    vae = WanVAE(VAEConfig.tiny() if tiny else VAEConfig.wan21()).to(dev, dtype).eval()
    decoder = StreamingDecoder(vae)
    g = torch.Generator().manual_seed(0)
    context = torch.randn(1, mcfg.text_len, mcfg.text_dim, generator=g).to(dev, dtype)   # [1, 512, 4096] at 1.3B

    results = {}
    with torch.no_grad():
        for name in names:
            runs = [run_config(name, model, decoder, context, args, dev) for _ in range(repeats + 1)][1:]
            best = min(runs, key=lambda r: r["total_s"])
            results[name] = dict(best, chunk_s_all=[round(r["chunk_s"], 4) for r in runs])
    plain = results["plain"]
    for name, r in results.items():
        r["cost_multiplier"] = round(r["chunk_s"] / plain["chunk_s"], 2)
        r["first_output_delay_vs_plain_s"] = round(r["first_output_s"] - plain["first_output_s"], 4)
        if r["peak_gib"] is not None:
            r["peak_over_plain_gib"] = round(r["peak_gib"] - plain["peak_gib"], 3)
        if name != "plain":
            policy, cfg = CONFIGS[name]
            r["estimate"] = t1_cost(cfg, StreamConfig.for_policy(policy), mcfg, height=args.height, width=args.width,
                                    bytes_per_value=torch.empty((), dtype=dtype).element_size()).as_dict()
        for k in ("total_s", "first_output_s", "chunk_s", "peak_gib", "page_mib"):
            if r.get(k) is not None:
                r[k] = round(r[k], 4)
    out = dict(device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
               date=time.strftime("%Y-%m-%d"), command="python bench/tts_cost.py " + " ".join(
                   argv if argv is not None else sys.argv[1:]),
               model="tiny" if tiny else "1.3b (random weights)", size=f"{args.width}x{args.height}",
               frames=args.frames, dtype=str(dtype).replace("torch.", ""), repeats=repeats,
               reward="BrightnessReward (analytic; reward-model cost excluded)", results=results)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return out


if __name__ == "__main__":
    main()

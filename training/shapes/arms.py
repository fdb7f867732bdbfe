"""The paired test of reward weighting in the shapes world: evaluate the arms and compare them prompt by prompt.

    python -m training.shapes.arms [--runs runs/shapes] [--seeds 0,1] [--prompts 128] [--json out.json]
    python -m training.shapes.arms --only stream_r1_s0 ...   # one student's videos, scored, kept beside it

Each student's scored videos are kept in <runs>/arms/<arm>_s<seed>/eval_rows.json (with the prompt count, frames
and the student file's size and time) and read back by a later run with the same settings, so several `--only`
processes can share one GPU (bench/shapes_arms.sh does) and the comparison run only merges.

Arms (recipes `shapes_arm_dmd`, `shapes_arm_stream_r1`, `shapes_arm_shuffled`; one run per arm and training seed
under <runs>/arms/<arm>_s<seed>/, all from the same ODE student; bench/shapes_arms.sh trains them): plain DMD;
Stream-R1 (W_inter and W_intra from the analytic shapes reward); the shuffled control (the same weights,
detached from their rollouts). Each student streams the same `--prompts` held-out prompts (`bundle.eval_prompts`:
scene seeds disjoint from the clip bank, the distillation prompts and the gate) with the same noise seed per
prompt, and the shapes checker scores every video. Reported: each arm's means; for each pair of arms the mean
paired difference over (prompt, training seed) with a 95 % interval (normal, from the paired standard error) and
the difference of each training seed apart; the targeted metrics (colour, motion: what the reward looks at)
apart from the collateral ones (shape, temporal consistency, background); and each reward arm's logged weight
statistics over its generator steps (metrics.jsonl: ESS, W_inter range, W_intra spread, Spearman(r, checker)).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

ARMS = ("dmd", "stream_r1", "shuffled")
PAIRS = (("stream_r1", "dmd"), ("stream_r1", "shuffled"), ("shuffled", "dmd"))
TARGETED = ("color", "motion")
COLLATERAL = ("shape", "temporal", "background")
METRICS = ("score", "pass") + TARGETED + COLLATERAL
LOGGED = ("ess", "w_inter_min", "w_inter_max", "w_intra_std", "r_checker")
log = logging.getLogger("training.shapes.arms")


def paired(a: list[dict], b: list[dict], key: str) -> dict[str, float]:
    """Mean of a - b over paired rows (same prompt, noise and training seed), its standard error and the 95 %
    normal interval. a, b: `score_videos(...)['videos']` rows in the same order."""
    from .bundle import paired_difference

    if len(a) != len(b):
        raise ValueError(f"paired rows differ in number: {len(a)} and {len(b)}")
    m, se = paired_difference({"videos": a}, {"videos": b}, (key,))[key]
    return {"mean": m, "se": se, "ci95": [m - 1.96 * se, m + 1.96 * se], "n": len(a)}


def compare(rows: dict[str, dict[int, list[dict]]], seeds: list[int]) -> dict:
    """{pair: {metric: pooled paired difference + per_seed means}} for every pair of arms present."""
    out = {}
    for a, b in PAIRS:
        if a not in rows or b not in rows:
            continue
        pooled_a = [r for s in seeds for r in rows[a][s]]
        pooled_b = [r for s in seeds for r in rows[b][s]]
        out[f"{a} - {b}"] = {k: paired(pooled_a, pooled_b, k) | {
            "per_seed": [float(np.mean([x[k] - y[k] for x, y in zip(rows[a][s], rows[b][s])])) for s in seeds]}
            for k in METRICS}
    return out


def logged_statistics(metrics_jsonl: Path) -> dict[str, float]:
    """Means over the generator steps of a run's metrics.jsonl (the weight statistics, r-checker correlation)."""
    if not metrics_jsonl.is_file():
        return {}
    steps = [json.loads(x) for x in metrics_jsonl.read_text().splitlines() if x.strip()]
    gen = [m for m in steps if m.get("generator_step")]
    out = {"generator_steps": len(gen)}
    for k in LOGGED:
        vals = [m[k] for m in gen if isinstance(m.get(k), (int, float)) and math.isfinite(m[k])]
        if vals:
            out[k] = float(np.mean(vals))
    return out


def markdown(result: dict) -> str:
    """The arms' means and the paired differences as tables (bench/SHAPES.md)."""
    lines = ["| arm | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for arm, m in result["means"].items():
        lines.append(f"| {arm} | " + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |")
    lines += ["", "| paired difference (95 % interval) | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for pair, d in result["paired"].items():
        lines.append(f"| {pair} | " + " | ".join(
            f"{d[k]['mean']:+.3f} [{d[k]['ci95'][0]:+.3f}, {d[k]['ci95'][1]:+.3f}]" for k in METRICS) + " |")
    if any(result["logged"].values()):
        lines += ["", "| arm, seed | " + " | ".join(LOGGED) + " |", "|---|" + "---|" * len(LOGGED)]
        for run, st in result["logged"].items():
            lines.append(f"| {run} | " + " | ".join(f"{st[k]:.3f}" if k in st else "–" for k in LOGGED) + " |")
    return "\n".join(lines)


def student_rows(student: Path, rows_path: Path, prompts: list[str], frames: int, sample_fn) -> list[dict]:
    """The scored videos of one student on `prompts`: read from `rows_path` when it was written for this student file
    (size and modification time), these prompts and frames; else sampled with `sample_fn(path)` -> sample(prompt, seed,
    frames), scored and written there. A rows file that does not match (or does not parse) is replaced, with a note."""
    from .bundle import score_videos

    st = student.stat()
    stamp = {"student_bytes": st.st_size, "student_mtime_ns": st.st_mtime_ns, "prompts": prompts, "frames": frames}
    if rows_path.is_file():
        try:
            kept = json.loads(rows_path.read_text())
            if {k: kept.get(k) for k in stamp} == stamp and len(kept["videos"]) == len(prompts) and all(
                    isinstance(r, dict) and all(isinstance(r.get(k), (int, float)) for k in METRICS)
                    for r in kept["videos"]):
                log.info("%s: %d scored videos read from %s", student.parent.parent.name, len(prompts), rows_path)
                return kept["videos"]
            log.info("%s: %s is from other settings or another student file; sampling again", student, rows_path)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("%s: unreadable (%s); sampling again", rows_path, e)
    sample = sample_fn(str(student))
    with torch.no_grad():                   # noise seed i for prompt i: the same in every arm and training seed
        videos = [sample(pr, i, frames).clamp(0, 1) for i, pr in enumerate(prompts)]
    rows = score_videos(videos, prompts)["videos"]
    tmp = rows_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stamp | {"videos": rows}))
    tmp.replace(rows_path)
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    from .bundle import eval_prompts, run_parts, student_sampler

    p = argparse.ArgumentParser(prog="python -m training.shapes.arms", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/shapes")
    p.add_argument("--seeds", default="0,1", help="training seeds (runs <runs>/arms/<arm>_s<seed>)")
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--frames", type=int, default=None, help="video frames per clip (4k+1; default the world's)")
    p.add_argument("--json", default="", help="default <runs>/arms/eval.json")
    p.add_argument("--only", default="", metavar="ARM_sSEED",
                   help="sample and score one student (e.g. dmd_s0), keep its rows beside it and stop")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [arms] %(message)s", datefmt="%H:%M:%S")
    runs = Path(args.runs)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"error: --seeds {args.seeds!r}: give training seeds as integers, e.g. 0,1") from None
    names = [(a, s) for a in ARMS for s in seeds]
    if args.only:
        arm, _, seed = args.only.rpartition("_s")
        if arm not in ARMS or not seed.isdigit():
            raise SystemExit(f"error: --only {args.only!r}: give one of {', '.join(ARMS)} with _s<seed>, e.g. dmd_s0")
        names = [(arm, int(seed))]
    missing = [f"{runs}/arms/{a}_s{s}" for a, s in names
               if not (runs / "arms" / f"{a}_s{s}" / "exports" / "student_latest.safetensors").is_file()]
    if missing:
        raise SystemExit(f"error: no trained arm in {', '.join(missing)}; train them with bash bench/shapes_arms.sh")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tcfg, enc, vae = run_parts(runs, device)
    world = tcfg.world
    frames = args.frames or world.frames
    prompts = eval_prompts(args.prompts)
    t0 = time.perf_counter()
    rows: dict[str, dict[int, list[dict]]] = {}
    for arm, s in names:
        run = runs / "arms" / f"{arm}_s{s}"
        rows.setdefault(arm, {})[s] = student_rows(
            run / "exports" / "student_latest.safetensors", run / "eval_rows.json", prompts, frames,
            lambda path: student_sampler(path, enc, vae, (world.height, world.width), device))
        log.info("%s seed %d: %d videos scored (%.0f s)", arm, s, len(prompts), time.perf_counter() - t0)
    if args.only:
        return 0
    result = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if device.type == "cuda"
              else "cpu", "prompts": len(prompts), "frames": frames, "seeds": seeds,
              "means": {a: {k: float(np.mean([r[k] for s in seeds for r in rows[a][s]])) for k in METRICS}
                        for a in ARMS},
              "paired": compare(rows, seeds),
              "logged": {f"{a}_s{s}": logged_statistics(runs / "arms" / f"{a}_s{s}" / "metrics.jsonl")
                         for a in ARMS for s in seeds},
              "videos": {a: {str(s): rows[a][s] for s in seeds} for a in ARMS}}
    out = Path(args.json) if args.json else runs / "arms" / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    (out.with_suffix(".md")).write_text(markdown(result) + "\n")
    print(markdown(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

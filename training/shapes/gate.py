"""Reward gate: does a reward rank the starting student's rollouts the way the analytic checker does?

    python -m training.shapes.gate --rollouts 64 --json out.json [--frames 21] [--batch 8] [--no-learned]
                                   [--runs runs/shapes] [--device auto]

Rolls out `--rollouts` videos of the bundle's student (streaming, 4 steps, as `training.shapes.bundle` samples it)
on shapes-world prompts (scene seeds `--seed`+i, one noise seed per batch of `--batch`), scores each video with the
analytic reward (`analytic_reward.AnalyticShapesReward`; r = mean of its z-scores, the 'Overall' signal) and with
the checker, and reports Spearman(r, checker) overall and per axis (TA-colour, MQ-motion, VQ-temporal) with a
pass/fail against `--threshold`. Collateral checker metrics (shape, background) are reported apart. The bundle's
learned reward is scored the same way for comparison (`--no-learned` skips it). `beta_half_ess`: the beta at which
W_inter = exp(beta r) of the analytic r keeps an effective sample size of half a `--train-batch` batch.
With `--runs`, the rollouts are the ODE student's of that training folder (the arms' starting point). Exit status 3
when the analytic reward fails the gate: no distillation run on it (bench/shapes_arms.sh stops there).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch

DEFAULT_JSON = "bench/results/2026-12-07_cpu_shapes_reward_gate.json"
GATE_SEED = 700000
"""First scene seed of the gate prompts (disjoint from the clip bank, the distillation prompts and the eval set)."""
AXIS_PAIRS = {"TA": "color", "MQ": "motion", "VQ": "temporal"}
"""Reward axis -> the checker metric it stands for."""
CHECKER_KEYS = ("score", "targeted", "color", "motion", "temporal", "shape", "background", "pass")


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get the average of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman's rho with average ranks for ties (Pearson of the ranks); nan when either side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def bootstrap_ci(a, b, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of Spearman over resampled videos."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    vals = [spearman(a[i], b[i]) for i in (rng.integers(0, len(a), len(a)) for _ in range(n))]
    vals = np.array([v for v in vals if np.isfinite(v)])
    return (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))) if len(vals) else (np.nan, np.nan)


def correlations(rows: list[dict], prefix: str, threshold: float) -> dict:
    """Spearman of `{prefix}r` (combined) and `{prefix}{axis}` against the checker metrics in `rows`."""
    col = {k: np.array([r[k] for r in rows], float) for k in rows[0] if k != "prompt"}
    out: dict = {"overall": {}, "axes": {}, "collateral": {}}
    for k in ("score", "targeted", "color", "motion", "temporal"):
        rho = spearman(col[f"{prefix}r"], col[k])
        out["overall"][k] = {"rho": rho, "ci95": bootstrap_ci(col[f"{prefix}r"], col[k])}
    for axis, k in AXIS_PAIRS.items():
        rho = spearman(col[f"{prefix}{axis}"], col[k])
        out["axes"][axis] = {"checker": k, "rho": rho, "ci95": bootstrap_ci(col[f"{prefix}{axis}"], col[k]),
                             "passed": bool(rho >= threshold)}
    for k in ("shape", "background"):
        out["collateral"][k] = {"rho_r": spearman(col[f"{prefix}r"], col[k])}
    out["passed"] = bool(out["overall"]["score"]["rho"] >= threshold)
    return out


def _source(runs: Optional[Path], device: torch.device) -> SimpleNamespace:
    """What the rollouts stream: the bundle's student (runs None), or a shapes training folder's ODE student with that
    folder's VAE and text encoder (`<runs>/ode_init/exports/student_latest.safetensors`, `<runs>/vae/vae.safetensors`,
    `<runs>/teacher/umt5.safetensors`, the size from `<runs>/teacher/config.json`): model, stream config, text
    encoder, VAE, height, width, the student's path and the folder that names it."""
    from stream_r1.loaders import load_student
    from stream_r1.shapes.bundle import load_bundle

    from .bundle import run_parts

    if runs is None:
        b = load_bundle(device=device, attention="sdpa")
        return SimpleNamespace(model=b.model, stream=b.info.stream_config, enc=b.text_encoder, vae=b.vae,
                               height=b.height, width=b.width, student=str(b.root / "student.safetensors"),
                               root=b.root)
    files = {"student": runs / "ode_init" / "exports" / "student_latest.safetensors", "vae": runs / "vae" / "vae.safetensors",
             "text encoder": runs / "teacher" / "umt5.safetensors", "teacher config": runs / "teacher" / "config.json"}
    missing = [f"{k} ({v})" for k, v in files.items() if not v.is_file()]
    if missing:
        raise SystemExit(f"error: {runs} lacks {', '.join(missing)}; train them first (bash bench/shapes_arms.sh start)")
    tcfg, enc, vae = run_parts(runs, device)
    model, info = load_student(str(files["student"]), device=device, dtype=torch.float32, attention="sdpa")
    return SimpleNamespace(model=model, stream=info.stream_config, enc=enc, vae=vae, height=tcfg.world.height,
                           width=tcfg.world.width, student=str(files["student"]), root=runs)


def rollouts(count: int, frames: int, batch: int, seed: int, progress: bool = True, runs: Optional[Path] = None,
             device: str = "cpu"):
    """`count` videos [T, 3, H, W] in [0, 1] of the bundle's student (or of `runs`' ODE student) and their prompts."""
    from stream_r1.stream import StreamSession, chunks_for_frames
    from stream_r1.vae import StreamingDecoder

    from .world import shapes_prompts

    dev = torch.device(device)
    b = _source(runs, dev)
    prompts = shapes_prompts(count, seed, frames=frames, size=b.height)
    latent = (frames - 1) // 4 + 1
    videos = []
    t0 = time.perf_counter()
    for i in range(0, count, batch):
        ps = prompts[i:i + batch]
        with torch.no_grad():
            sess = StreamSession(b.model, b.stream, b.enc.encode(ps).to(dev), height=b.height, width=b.width,
                                 seed=seed + i, decoder=StreamingDecoder(b.vae), device=dev, dtype=torch.float32)
            v = torch.cat([c.frames.float().cpu() for c in sess.run(chunks_for_frames(latent, b.stream.frames_per_block))],
                          dim=1)[:, :frames]
        videos.extend(v.clamp(0, 1).unbind(0))
        if progress:
            print(f"  rollouts {len(videos)}/{count}  {time.perf_counter() - t0:.0f}s", flush=True)
    return videos, prompts, {"student": b.student, "height": b.height, "width": b.width,
                             "bundle": b.root, "rollout_s": time.perf_counter() - t0}


def score_all(videos, prompts, learned: bool, bundle_root: Optional[Path] = None) -> list[dict]:
    from stream_r1.reward.model import compute_scores
    from stream_r1.shapes import check_many

    from .analytic_reward import AnalyticShapesReward

    ana = AnalyticShapesReward()
    lr = None
    if learned:
        from stream_r1.reward.model import load_video_reward
        p = Path(bundle_root) / "reward"
        lr = load_video_reward(p, device="cpu", dtype=torch.float32) if p.is_dir() else None
    rows = []
    for v, p, c in zip(videos, prompts, check_many(videos, prompts)):
        row = {"prompt": p, "score": c["score"], "color": c["color_score"], "motion": c["motion_score"],
               "temporal": c["temporal_consistency"], "shape": c["shape_score"], "background": c["background_score"],
               "pass": float(c["passed"])}
        row["targeted"] = (row["color"] + row["motion"]) / 2
        s = compute_scores(ana, v[None], [p])
        row |= {f"a_{a}": float(s.raw[0, j]) for j, a in enumerate(s.axes)}
        row["a_r"] = float(s.overall[0])
        if lr is not None:
            s = compute_scores(lr, v[None], [p])
            row |= {f"l_{a}": float(s.normalized[0, j]) for j, a in enumerate(s.axes)}
            row["l_r"] = float(s.overall[0])
        rows.append(row)
    return rows


def table(name: str, c: dict, threshold: float) -> str:
    o, ax = c["overall"], c["axes"]
    lines = [f"{name}: Spearman(r, checker score) = {o['score']['rho']:+.3f} "
             f"[{o['score']['ci95'][0]:+.2f}, {o['score']['ci95'][1]:+.2f}]  -> {'PASS' if c['passed'] else 'FAIL'}"
             f" (threshold {threshold})",
             f"  r vs targeted (colour+motion) {o['targeted']['rho']:+.3f}, colour {o['color']['rho']:+.3f}, "
             f"motion {o['motion']['rho']:+.3f}, temporal {o['temporal']['rho']:+.3f}"]
    for a, d in ax.items():
        lines.append(f"  {a} vs {d['checker']:<8} {d['rho']:+.3f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
                     f"  {'pass' if d['passed'] else 'fail'}")
    lines.append(f"  collateral: r vs shape {c['collateral']['shape']['rho_r']:+.3f}, "
                 f"r vs background {c['collateral']['background']['rho_r']:+.3f}")
    return "\n".join(lines)


def _finite(x):
    """nan/inf -> None, so the JSON is strict (a constant checker column gives an undefined Spearman)."""
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rollouts", type=int, default=64)
    p.add_argument("--frames", type=int, default=21, help="frames per rollout (4k+1; 21 = two streaming chunks)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=GATE_SEED)
    p.add_argument("--threshold", type=float, default=0.3)
    p.add_argument("--json", default=DEFAULT_JSON)
    p.add_argument("--no-learned", action="store_true", help="skip the bundle's learned reward")
    p.add_argument("--train-batch", type=int, default=16, help="the distillation batch that `beta_half_ess` (the "
                   "analytic r's beta keeping an effective sample size of half of it) is computed for")
    p.add_argument("--videos", default="", help="cache file (.pt) of the rollouts: read if present, else written")
    p.add_argument("--runs", default="", help="a shapes training folder (runs/shapes): roll out its ODE student "
                   "(ode_init) with its VAE and text encoder instead of the bundle's student, the gate before the "
                   "paired arms (bench/shapes_arms.sh gate)")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu or cuda")
    args = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    t0 = time.perf_counter()
    cache = Path(args.videos) if args.videos else None
    if cache is not None and cache.is_file():
        d = torch.load(cache)
        videos, prompts, info = list(d["videos"].float().unbind(0)), d["prompts"], d["info"]
    else:
        videos, prompts, info = rollouts(args.rollouts, args.frames, args.batch, args.seed,
                                         runs=Path(args.runs) if args.runs else None, device=device)
        info["bundle"] = str(info["bundle"])
        if cache is not None:       # fp16, not uint8: rounding to 8 bits moves a few of the checker's verdicts
            torch.save({"videos": torch.stack(videos).half(), "prompts": prompts, "info": info}, cache)
    t1 = time.perf_counter()
    rows = score_all(videos, prompts, not (args.no_learned or args.runs), Path(info["bundle"]))   # (the bundle's)
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    res = {"command": f"python -m training.shapes.gate {cmd}",
           "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "threads": torch.get_num_threads(),
           "torch": torch.__version__,
           "rollouts": len(videos), "frames": args.frames, "seed": args.seed, "threshold": args.threshold,
           "student": info["student"], "size": [info["height"], info["width"]],
           "seconds": {"rollouts": round(info.get("rollout_s", t1 - t0), 1), "scoring": round(time.perf_counter() - t1, 1)},
           "checker_means": {k: float(np.mean([r[k] for r in rows])) for k in CHECKER_KEYS},
           "analytic": correlations(rows, "a_", args.threshold)}
    if "l_r" in rows[0]:
        res["learned"] = correlations(rows, "l_", args.threshold)
    from stream_r1.reward.weights import beta_for_ess
    r = torch.tensor([row["a_r"] for row in rows])
    if len(rows) >= args.train_batch:          # the beta a distillation run wants: ESS half its batch (this pool)
        res["beta_half_ess"] = {"batch": args.train_batch, "beta": round(beta_for_ess(r, args.train_batch), 4)}
    res["videos"] = rows
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(res), indent=1, allow_nan=False))
    print(f"{len(videos)} rollouts x {args.frames} frames, checker means: " +
          ", ".join(f"{k} {v:.2f}" for k, v in res["checker_means"].items()))
    print(table("analytic reward", res["analytic"], args.threshold))
    if "learned" in res:
        print(table("learned reward (bundle)", res["learned"], args.threshold))
    if "beta_half_ess" in res:
        print(f"beta for an effective sample size of half a batch of {args.train_batch}: {res['beta_half_ess']['beta']}")
    print(f"wrote {out}  ({res['seconds']})")
    return 0 if res["analytic"]["passed"] else 3         # 3: the analytic reward fails the gate, no distillation


if __name__ == "__main__":
    raise SystemExit(main())

"""Summary of bench/train_scaling.sh: reads stop/resume/ref.json (+ walls.json) in a folder, writes scaling.json.

Both layouts draw the same exit step at every optimizer step (it follows the step and micro-step index), and a
step's time depends on it (a rollout stops at its exit step), so speed is compared over the same steps: the sum
of steps 1.. (step 0 is warm-up) in each layout. Generator and critic steps are reported apart as means.

    python3 bench/train_scaling_summary.py bench/results/<folder>
"""
import json
import statistics
import sys
from pathlib import Path


def summarize(out: Path) -> dict:
    stop, resume, ref = (json.loads((out / f"{n}.json").read_text()) for n in ("stop", "resume", "ref"))
    walls = json.loads((out / "walls.json").read_text()) if (out / "walls.json").is_file() else None
    wb, ws = stop["world_size"], ref["world_size"]
    big = {s["step"]: s for s in stop["steps"] + resume["steps"]}
    small = {s["step"]: s for s in ref["steps"]}
    first_resumed = resume["steps"][0]["step"]
    rows, worst = [], {"gen_loss": 0.0, "critic_loss": 0.0}
    for k in sorted(big):
        a, b = big[k], small.get(k, {})
        row = {"step": k, "kind": a["kind"], "resumed": k >= first_resumed,
               f"seconds_{wb}gpu": a["seconds"], f"seconds_{ws}gpu": b.get("seconds"),
               f"peak_gib_{wb}gpu": max(a["peak_mem_gib_per_gpu"]),
               f"peak_gib_{ws}gpu": max(b["peak_mem_gib_per_gpu"]) if b else None}
        for key in worst:
            if key in a and key in b:
                row[key] = [round(a[key], 5), round(b[key], 5)]
                if row["resumed"]:
                    worst[key] = max(worst[key], abs(a[key] - b[key]) / max(abs(b[key]), 1e-12))
        rows.append(row)
    common = [k for k in sorted(big) if k > 0 and k in small]

    def mean(d, kind):
        xs = [d[k]["seconds"] for k in common if d[k]["kind"] == kind]
        return round(statistics.fmean(xs), 3) if xs else None

    summary = {
        "device": stop["device"], "torch": stop["torch"], "teacher": stop["teacher"],
        "global_batch": stop["accumulation"] * wb * stop["micro_batch"],
        "layouts": {str(r["world_size"]): f"{r['world_size']} GPU x micro batch {r['micro_batch']} x accumulation "
                    f"{r['accumulation']}" for r in (stop, ref)},
        "launch_wall_s": walls, "stopped_after_step": stop["steps"][-1]["step"], "resumed_at_step": first_resumed,
        "worst_rel_diff_resumed_vs_reference": {k: float(f"{v:.3g}") for k, v in worst.items()},
        "mean_generator_step_s": {wb: mean(big, "generator+critic"), ws: mean(small, "generator+critic")},
        "mean_critic_step_s": {wb: mean(big, "critic"), ws: mean(small, "critic")},
        "peak_gib_per_gpu": {wb: max(r[f"peak_gib_{wb}gpu"] for r in rows),
                             ws: max((r[f"peak_gib_{ws}gpu"] or 0) for r in rows)},
        "steps": rows,
    }
    if common:
        t_big, t_small = (sum(d[k]["seconds"] for k in common) for d in (big, small))
        summary["same_steps"] = common
        summary["speedup"] = round(t_small / t_big, 3)
        summary["scaling_efficiency"] = round(t_small / t_big / (wb / ws), 3)
    g, c = summary["mean_generator_step_s"][wb], summary["mean_critic_step_s"][wb]
    if g and c:
        # the paper's schedule (spec-algorithm §2): 1000 optimizer steps of 8 GPUs x batch 1 x 8 accumulation,
        # generator on every 5th: 1,600 generator and 6,400 critic-only micro-steps per GPU, at the big run's
        # per-micro-step times (one rollout per GPU per micro-step there)
        a = stop["accumulation"] * stop["micro_batch"]
        summary["projected_paper_schedule_h_on_8gpu"] = round((1600 * g / a + 6400 * c / a) / 3600, 1)
    return summary


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    s = summarize(folder)
    (folder / "scaling.json").write_text(json.dumps(s, indent=1))
    print(json.dumps({k: v for k, v in s.items() if k != "steps"}, indent=1))

#!/usr/bin/env bash
# Issue #9 in one device call: the full Stream-R1 training step at real size on N GPUs (default 4, one rollout
# per GPU), stopped by SIGTERM part-way and resumed, then the same global batch on fewer GPUs (default 2, with
# N/SMALL rollouts per GPU per micro-step) for the scaling figure and as the reference losses of the resumed
# run: the trainer's draws depend on the global sample position and the micro-step index, not on the rank, so
# both layouts compute the same losses up to bf16 reduction order (tests/test_training_run.py checks it in fp32). Everything lands in $OUT: logs, one JSON per launch, and scaling.json (the summary).
#
#   bash bench/train_scaling.sh                          # 4 GPUs, then 2, global batch 4, 7 optimizer steps
#   NPROC=8 SMALL=4 GLOBAL_BATCH=8 bash bench/train_scaling.sh
#   STOP_AFTER=3 STEPS=7 ... (SIGTERM once step STOP_AFTER/STEPS is logged; the run saves after the step it is in)
#   SMOKE_ARGS="--teacher 1.3b -- --set rollout.latent_frames=6" ...   (extra bench/train_gpu_smoke.sh arguments)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
NPROC=${NPROC:-4}
SMALL=${SMALL:-2}
GLOBAL_BATCH=${GLOBAL_BATCH:-$NPROC}
STEPS=${STEPS:-7}
STOP_AFTER=${STOP_AFTER:-3}
CK=${CKPT_ROOT:-/tmp/train_scaling_ckpt}
read -r -a SMOKE <<< "${SMOKE_ARGS:-}"
rm -rf "$CK"
now() { date +%s.%N; }
declare -A WALL

launch() {   # name, then bench/train_gpu_smoke.sh arguments; JSON to $OUT/name.json, log to $OUT/name.log
  local name=$1; shift
  local t0; t0=$(now)
  bash bench/train_gpu_smoke.sh "$@" > "$OUT/$name.json" 2> "$OUT/$name.log" &
  LAUNCH_PID=$!
  LAUNCH_T0=$t0
}
finish() {   # name: wait for the launch, record its wall time and return code
  local name=$1 rc
  wait "$LAUNCH_PID"; rc=$?
  WALL[$name]=$(python3 -c "print(round($(now) - $LAUNCH_T0, 1))")
  echo "$name: rc $rc, wall ${WALL[$name]} s"; [[ $rc == 0 ]] || tail -25 "$OUT/$name.log"
  return $rc
}

# 1. N GPUs with checkpointing on; SIGTERM to every worker (as a cluster's preemption does) once step
#    STOP_AFTER has been logged: the trainer finishes the step it is in, saves and leaves.
launch stop --nproc "$NPROC" --global-batch "$GLOBAL_BATCH" --steps "$STEPS" --checkpoint "$CK" --tag stop "${SMOKE[@]}"
while kill -0 "$LAUNCH_PID" 2>/dev/null; do
  if grep -q "step $STOP_AFTER/$STEPS " "$OUT/stop.log"; then
    echo "step $STOP_AFTER logged at $(date +%T): SIGTERM to the workers"
    pkill -TERM -f -- "-u -m training.run"; break
  fi
  sleep 0.5
done
finish stop || exit 1
grep -E "stop requested|checkpoint /|exported" "$OUT/stop.log"

# 2. Resume on the same N GPUs from the newest checkpoint, to the end (no second save).
launch resume --nproc "$NPROC" --global-batch "$GLOBAL_BATCH" --steps "$STEPS" --resume "$CK" --tag resume "${SMOKE[@]}"
finish resume || exit 1
grep -E "resumed from" "$OUT/resume.log" || { echo "the resumed run did not load a checkpoint"; exit 1; }
rm -rf "$CK"

# 3. The same global batch on SMALL GPUs, uninterrupted: scaling, and the resumed run's reference losses.
export CUDA_VISIBLE_DEVICES; CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((SMALL - 1)))
launch ref --nproc "$SMALL" --global-batch "$GLOBAL_BATCH" --micro-batch $((NPROC / SMALL)) --steps "$STEPS" --tag ref "${SMOKE[@]}"
finish ref || exit 1

python3 - "$OUT" "${WALL[stop]}" "${WALL[resume]}" "${WALL[ref]}" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
stop, resume, ref = (json.loads((out / f"{n}.json").read_text()) for n in ("stop", "resume", "ref"))
walls = dict(zip(("stop", "resume", "ref"), map(float, sys.argv[2:5])))
big = {s["step"]: s for s in stop["steps"] + resume["steps"]}
small = {s["step"]: s for s in ref["steps"]}
rows, worst = [], 0.0
for k in sorted(big):
    a, b = big[k], small.get(k, {})
    row = {"step": k, "kind": a["kind"], f"seconds_{stop['world_size']}gpu": a["seconds"],
           f"seconds_{ref['world_size']}gpu": b.get("seconds"), f"peak_gib_{stop['world_size']}gpu": max(a["peak_mem_gib_per_gpu"]),
           f"peak_gib_{ref['world_size']}gpu": max(b["peak_mem_gib_per_gpu"]) if b else None,
           "resumed": k >= resume["steps"][0]["step"]}
    for key in ("gen_loss", "critic_loss"):
        if key in a and key in b:
            rel = abs(a[key] - b[key]) / max(abs(b[key]), 1e-12)
            row[key] = [round(a[key], 5), round(b[key], 5)]
            if row["resumed"]:
                worst = max(worst, rel)
    rows.append(row)

def steady(steps, kind):     # the last step of a kind, past the first (warm-up) one
    xs = [s["seconds"] for s in steps if s["kind"] == kind and s["step"] > 0]
    return xs[-1] if xs else None

g_big, c_big = steady(stop["steps"] + resume["steps"], "generator+critic"), steady(stop["steps"] + resume["steps"], "critic")
g_small, c_small = steady(ref["steps"], "generator+critic"), steady(ref["steps"], "critic")
summary = {"global_batch": stop["accumulation"] * stop["world_size"] * stop["micro_batch"],
           "layouts": {n: f"{r['world_size']} GPU x micro batch {r['micro_batch']} x accumulation {r['accumulation']}"
                       for n, r in (("big", stop), ("small", ref))}, "device": stop["device"], "torch": stop["torch"],
           "teacher": stop["teacher"], "launch_wall_s": walls, "steps": rows,
           "stopped_after_step": stop["steps"][-1]["step"], "resumed_at_step": resume["steps"][0]["step"],
           "worst_rel_loss_diff_resumed_vs_reference": worst,
           "steady_generator_step_s": {stop["world_size"]: g_big, ref["world_size"]: g_small},
           "steady_critic_step_s": {stop["world_size"]: c_big, ref["world_size"]: c_small}}
if None not in (g_big, c_big, g_small, c_small):
    per_cycle = {w: (g + 4 * c) / 5 for w, g, c in ((stop["world_size"], g_big, c_big), (ref["world_size"], g_small, c_small))}
    w_big, w_small = stop["world_size"], ref["world_size"]
    summary["speedup"] = round(per_cycle[w_small] / per_cycle[w_big], 3)
    summary["scaling_efficiency"] = round(per_cycle[w_small] / per_cycle[w_big] / (w_big / w_small), 3)
    # paper schedule (spec-algorithm §2): 1000 optimizer steps of global batch 64 (8 GPUs x 1 x 8 accumulation),
    # generator every 5th step; per-GPU micro-step time taken from the big run (1 rollout per GPU per micro-step)
    micro_g = g_big / stop["accumulation"]
    micro_c = c_big / stop["accumulation"]
    summary["projected_paper_schedule_h_on_8gpu"] = round((200 * 8 * micro_g + 800 * 8 * micro_c) / 3600, 2)
(out / "scaling.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
EOF

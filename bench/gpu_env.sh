# Sourced by the bench/gpu_*.sh scripts on the lent GPU machine: $OUT, carried wheels, PYTHONPATH.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:-}:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi: CPU run"
# bench_run NAME ARGS...: `python -m stream_r1 bench --label NAME ARGS --json $OUT/NAME.json`, log in $OUT/log_NAME.txt
# (at most $BENCH_TIMEOUT seconds, default 300); prints the log's tail if it fails.
bench_run() {
  local name=$1; shift
  timeout "${BENCH_TIMEOUT:-300}" python3 -m stream_r1 bench --label "$name" "$@" --json "$OUT/$name.json" \
    > "$OUT/log_$name.txt" 2>&1 || { echo "FAILED $name"; tail -15 "$OUT/log_$name.txt"; }
}
# weights_out SRC DEST: copy a weights file back through $OUT, which returns files of at most 16 MiB: over 15 MiB it
# goes fp16 (bench/half_weights.py), and if still over, in parts DEST.part00, .part01 ... (rejoin with cat).
weights_out() {
  if [ "$(stat -c %s "$1")" -gt 15728640 ]; then
    python3 bench/half_weights.py "$1" "$2.fp16" && mv "$2.fp16" "$2" || return
    if [ "$(stat -c %s "$2")" -gt 15728640 ]; then split -b 15M -d "$2" "$2.part" && rm "$2"; fi
  else
    cp "$1" "$2"
  fi
}

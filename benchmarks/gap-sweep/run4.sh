#!/usr/bin/env bash
# Issue "close the gap to LoRA", round 4: the same budget as rounds 2 and 3 (SST-2, the suite's
# sample, seed 0, up to 15 epochs, patience 4, batch 32, one torch thread per run) for the
# chosen rows, each with one change to how it trains: batches of mixed lengths
# (--no-group-by-length: the default batches texts of similar length together, so one step may
# see only short phrases) or a moving average of the trained tensors (--ema 0.995: evaluated,
# selected and saved in place of the live ones). Each line: run name, method, then its extra
# options. Resumes and shares its queue as run2.sh does.
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=${OUT:-benchmarks/gap-sweep/runs4}
jobs=${JOBS:-2}
queue=${QUEUE:-benchmarks/gap-sweep/queue4.txt}
mkdir -p "$out"
one() {  # name method options...
  local name=$1 method=$2; shift 2
  [ -f "$out/$name/classification.json" ] && return 0
  mkdir "$out/$name.lock" 2>/dev/null || return 0  # another copy runs it
  exotune bench classification --datasets sst2 --seeds 0 --epochs 15 --patience 4 \
    --methods "$method" "$@" --out-dir "$out/$name" > "$out/$name.log" 2>&1 \
    || echo "run $name failed: see $out/$name.log" >&2
  rmdir "$out/$name.lock"
}
export -f one; export out
grep -v '^#' "$queue" | xargs -P "$jobs" -L 1 bash -c 'one "$@"' _
python benchmarks/gap-sweep/summarize.py "$out"

#!/usr/bin/env bash
# Issue "close the gap to LoRA", round 6: seeds 1 and 2 of the rows rounds 4 and 5 chose on
# seed 0's validation, under the same budget (SST-2, the suite's sample, up to 15 epochs,
# patience 4, batch 32, one torch thread per run). Each line of the queue: run name, seed,
# method, then its options. Resumes and shares its queue as run2.sh does.
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=${OUT:-benchmarks/gap-sweep/runs6}
jobs=${JOBS:-2}
queue=${QUEUE:-benchmarks/gap-sweep/queue6.txt}
mkdir -p "$out"
one() {  # name seed method options...
  local name=$1 seed=$2 method=$3; shift 3
  [ -f "$out/$name/classification.json" ] && return 0
  mkdir "$out/$name.lock" 2>/dev/null || return 0  # another copy runs it
  exotune bench classification --datasets sst2 --seeds "$seed" --epochs 15 --patience 4 \
    --methods "$method" "$@" --out-dir "$out/$name" > "$out/$name.log" 2>&1 \
    || echo "run $name failed: see $out/$name.log" >&2
  rmdir "$out/$name.lock"
}
export -f one; export out
grep -v '^#' "$queue" | xargs -P "$jobs" -L 1 bash -c 'one "$@"' _
python benchmarks/gap-sweep/summarize.py "$out"

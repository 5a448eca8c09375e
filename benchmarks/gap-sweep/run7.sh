#!/usr/bin/env bash
# Issue "close the gap to LoRA", round 7 on: the rows chosen on SST-2 tried on other datasets,
# under the same long budget (up to 15 epochs, patience 4, batch 32, one torch thread per run).
# Each line of the queue: run name, dataset, seed (or seeds: 0,1,2), method, then its options.
# SUITE=retrieval runs the retrieval suite's lines (default: classification). Resumes and
# shares its queue as run2.sh does.
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=${OUT:-benchmarks/gap-sweep/runs7}
jobs=${JOBS:-1}
queue=${QUEUE:-benchmarks/gap-sweep/queue8.txt}
suite=${SUITE:-classification}
mkdir -p "$out"
one() {  # name dataset seed method options...
  local name=$1 dataset=$2 seed=$3 method=$4; shift 4
  [ -f "$out/$name/$suite.json" ] && return 0
  mkdir "$out/$name.lock" 2>/dev/null || return 0  # another copy runs it
  # shellcheck disable=SC2086  # the seeds: one word each
  exotune bench "$suite" --datasets "$dataset" --seeds ${seed//,/ } --epochs 15 --patience 4 \
    --methods "$method" "$@" --out-dir "$out/$name" > "$out/$name.log" 2>&1 \
    || echo "run $name failed: see $out/$name.log" >&2
  rmdir "$out/$name.lock"
}
export -f one; export out suite
grep -v '^#' "$queue" | xargs -P "$jobs" -L 1 bash -c 'one "$@"' _
python benchmarks/gap-sweep/summarize.py "$out"

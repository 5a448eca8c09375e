#!/usr/bin/env bash
# Issue "close the gap to LoRA", round 3: seeds 1 and 2 of the rows round 2 chose on
# validation (the best LoRA rate, the best dark-gray and the best light-gray settings), under
# round 2's budget (SST-2, the suite's sample, up to 15 epochs, patience 4, batch 32, one torch
# thread per run); round 2's seed-0 runs complete the three seeds. Each line: run name, seed,
# method, then its --lr settings. Resumes and shares its queue as run2.sh does.
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=${OUT:-benchmarks/gap-sweep/runs3}
jobs=${JOBS:-2}
mkdir -p "$out"
one() {  # name seed method lr...
  local name=$1 seed=$2 method=$3; shift 3
  [ -f "$out/$name/classification.json" ] && return 0
  mkdir "$out/$name.lock" 2>/dev/null || return 0  # another copy runs it
  exotune bench classification --datasets sst2 --seeds "$seed" --epochs 15 --patience 4 \
    --methods "$method" --lr "$@" --out-dir "$out/$name" > "$out/$name.log" 2>&1 \
    || echo "run $name failed: see $out/$name.log" >&2
  rmdir "$out/$name.lock"
}
export -f one; export out
grep -v '^#' <<'RUNS' | xargs -P "$jobs" -L 1 bash -c 'one "$@"' _
lora-1e-3-s1 1 lora lora=1e-3
lga-8-5e-3-s1 1 lga-8 dga=5e-3
dga-both-5e-3-tok2e-2-s1 1 dga-both dga=5e-3 dga.tokens=2e-2
lora-1e-3-s2 2 lora lora=1e-3
lga-8-5e-3-s2 2 lga-8 dga=5e-3
dga-both-5e-3-tok2e-2-s2 2 dga-both dga=5e-3 dga.tokens=2e-2
RUNS
python benchmarks/gap-sweep/summarize.py "$out"

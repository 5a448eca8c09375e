#!/usr/bin/env bash
# Issue "close the gap to LoRA", round 2: the fair longer budget with a patience that lets a
# run live through the cosine schedule. SST-2, seed 0, the suite's sample (4,000 training
# phrases, 2,000 validation), up to 15 epochs, early stopping with patience 4, batch 32, one
# torch thread per run, JOBS runs side by side (default 2). Each line: run name, method, then
# its --lr settings. A finished run's folder is skipped, so the script resumes. Selection reads
# val_accuracy only; each run also scores GLUE dev once, never used for a choice. Several
# copies may run at once (each takes a run by its lock folder, <name>.lock; after a crash,
# remove the locks left behind).
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=${OUT:-benchmarks/gap-sweep/runs2}
jobs=${JOBS:-2}
mkdir -p "$out"
one() {  # name method lr...
  local name=$1 method=$2; shift 2
  [ -f "$out/$name/classification.json" ] && return 0
  mkdir "$out/$name.lock" 2>/dev/null || return 0  # another copy runs it
  exotune bench classification --datasets sst2 --seeds 0 --epochs 15 --patience 4 \
    --methods "$method" --lr "$@" --out-dir "$out/$name" > "$out/$name.log" 2>&1 \
    || echo "run $name failed: see $out/$name.log" >&2
  rmdir "$out/$name.lock"
}
export -f one; export out
grep -v '^#' <<'RUNS' | xargs -P "$jobs" -L 1 bash -c 'one "$@"' _
lora-2e-3 lora lora=2e-3
dga-both-5e-3 dga-both dga=5e-3
lga-8-5e-3 lga-8 dga=5e-3
dga-both-5e-3-tok2e-2 dga-both dga=5e-3 dga.tokens=2e-2
lga-16-5e-3-tok2e-2 lga-16 dga=5e-3 dga.tokens=2e-2
dga-lowrank16-5e-3 dga-lowrank16 dga=5e-3
lora-1e-3 lora lora=1e-3
lga-8-5e-3-tok2e-2 lga-8 dga=5e-3 dga.tokens=2e-2
dga-lowrank16-rpt64-init-labels-5e-3 dga-lowrank16-rpt64-init-labels dga=5e-3
lga-4-upper-5e-3-tok2e-2 lga-4-upper dga=5e-3 dga.tokens=2e-2
dga-both-2e-3 dga-both dga=2e-3
full-ft-2e-4 full-ft full-ft=2e-4
lga-8-2e-3 lga-8 dga=2e-3
RUNS
python benchmarks/gap-sweep/summarize.py "$out"

#!/usr/bin/env bash
# Issue "close the gap to LoRA": a validation-only search on SST-2 (seed 0) under one longer
# budget for every gradient method: up to 15 epochs, patience 2, batch 32, the suite's sample
# (4,000 training phrases, 2,000 validation). Each line is one run; a finished run's folder is
# skipped, so the script resumes. Selection reads val_accuracy only; the bench also scores test
# once per run, which is not used for any choice. One torch thread per run.
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=${OUT:-benchmarks/gap-sweep/runs}
common=(classification --datasets sst2 --seeds 0 --epochs 15 "$@")
while read -r name methods lr; do
  [ -f "$out/$name/classification.json" ] && continue
  exotune bench "${common[@]}" --methods "$methods" --lr $lr --out-dir "$out/$name"
done <<'RUNS'
dga-both-1e-2 dga-both dga=1e-2
lora-2e-3 lora lora=2e-3
dga-lowrank16-5e-3 dga-lowrank16 dga=5e-3
dga-both-5e-3 dga-both dga=5e-3
dga-lowrank64-5e-3 dga-lowrank64 dga=5e-3
lga-8-5e-3 lga-8 dga=5e-3
dga-lowrank16-gelu-5e-3 dga-lowrank16-gelu dga=5e-3
dga-lowrank16-2e-3 dga-lowrank16 dga=2e-3
lora-5e-3 lora lora=5e-3
dga-both-2e-2 dga-both dga=2e-2
RUNS
python benchmarks/gap-sweep/summarize.py "$out"

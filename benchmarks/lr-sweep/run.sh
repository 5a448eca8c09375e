#!/usr/bin/env bash
# Learning-rate sweep on VALIDATION accuracy only (3000 training examples, 2 epochs, seed 0),
# to pick each gradient method's rate for the classification suite. Test numbers that the
# bench also writes are not used for the choice.
set -euo pipefail
export HF_HUB_OFFLINE=1
out=benchmarks/lr-sweep
for lr in 1e-3 2e-3 5e-3; do
  exotune bench classification --seeds 0 --epochs 2 --max-train 3000 --methods dga-both \
    --lr dga=$lr --out-dir $out/dga-$lr "$@"
done
for lr in 5e-4 1e-3 2e-3; do
  exotune bench classification --seeds 0 --epochs 2 --max-train 3000 --methods lora \
    --lr lora=$lr --out-dir $out/lora-$lr "$@"
done
for lr in 5e-5 1e-4 2e-4; do
  exotune bench classification --seeds 0 --epochs 2 --max-train 3000 --methods full-ft \
    --lr full-ft=$lr --out-dir $out/full-ft-$lr "$@"
done
python - <<'PY'
import json, pathlib
rows = []
for f in sorted(pathlib.Path("benchmarks/lr-sweep").glob("*/classification.json")):
    for r in json.loads(f.read_text())["records"]:
        if r["metric"] == "accuracy":
            rows.append((r["method"], r["lr"], r["val_accuracy"]))
lines = ["| method | lr | val accuracy |", "|---|---|---|"] + [f"| {m} | {lr:g} | {v:.4f} |" for m, lr, v in rows]
pathlib.Path("benchmarks/lr-sweep/README.md").write_text(
    "# Learning-rate sweep (validation only)\n\n`bash benchmarks/lr-sweep/run.sh --data-dir ../shared/datasets`\n\n"
    "3000 training examples, 2 epochs, seed 0, Banking77 validation split (10% of train).\n\n"
    + "\n".join(lines) + "\n")
print("\n".join(lines))
PY

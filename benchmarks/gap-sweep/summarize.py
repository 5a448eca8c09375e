"""Collect the gap sweep's runs into one table (validation accuracy decides; test shown only)."""

import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/gap-sweep/runs")
rows = []
for f in sorted(out.glob("*/classification.json")):
    for r in json.loads(f.read_text())["records"]:
        if r["metric"] == "accuracy":
            rows.append(
                (
                    f.parent.name,
                    r["method"],
                    r["variant"],
                    r["lr"],
                    r.get("val_accuracy"),
                    r["mean"],
                    r.get("best_epoch"),
                    r.get("steps"),
                    r.get("threads"),
                )
            )
rows.sort(key=lambda x: -(x[4] or 0))
lines = [
    "| run | method | variant | lr | val accuracy | test accuracy | best epoch | steps |",
    "|---|---|---|---|---|---|---|---|",
]
lines += [
    f"| {n} | {m} | {v} | {lr:g} | {va:.4f} | {te:.4f} | {be} | {st} |" for n, m, v, lr, va, te, be, st, _ in rows
]
print("\n".join(lines))
(out.with_name(out.name.replace("runs", "results") + ".md")).write_text("\n".join(lines) + "\n")

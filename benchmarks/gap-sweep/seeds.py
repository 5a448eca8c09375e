"""Three seeds of the rows round 2 chose on validation: seed 0 from runs2/, seeds 1 and 2 from
runs3/ (``<name>-s1``, ``<name>-s2``); writes results3.md (means ± std over the seeds found)."""

import json
import pathlib
import statistics
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/gap-sweep")
ROWS = ["lora-1e-3", "lga-8-5e-3", "dga-both-5e-3-tok2e-2"]


def record(folder: pathlib.Path) -> dict | None:
    f = folder / "classification.json"
    if not f.exists():
        return None
    return next(r for r in json.loads(f.read_text())["records"] if r["metric"] == "accuracy")


def spread(values: list[float]) -> str:
    sd = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


lines = [
    "| run | method | variant | seeds | val accuracy | test accuracy | best epochs | train s (mean) |",
    "|---|---|---|---|---|---|---|---|",
]
for name in ROWS:
    recs = [record(root / "runs2" / name)] + [record(root / "runs3" / f"{name}-s{s}") for s in (1, 2)]
    recs = [r for r in recs if r]
    if not recs:
        continue
    seeds = [r["seeds"][0] for r in recs]
    lines.append(
        f"| {name} | {recs[0]['method']} | {recs[0]['variant']} | {', '.join(map(str, seeds))} | "
        f"{spread([r['val_accuracy'] for r in recs])} | {spread([r['mean'] for r in recs])} | "
        f"{', '.join(str(r['best_epoch']) for r in recs)} | {statistics.mean(r['train_seconds'] for r in recs):.0f} |"
    )
print("\n".join(lines))
(root / "results3.md").write_text("\n".join(lines) + "\n")

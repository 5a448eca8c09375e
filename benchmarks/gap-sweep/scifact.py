"""SciFact under the long budget (round 10, runs10/): one row per run folder, the 3-seed mean of
the validation nDCG@10 each seed was selected at (the best of its curve) and of the test
nDCG@10 and Recall@100. Writes results10.md."""

import json
import pathlib
import statistics
import sys

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/gap-sweep/runs10")


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.pstdev(values):.4f}"


lines = [
    "| run | method | variant | seeds | val nDCG@10 | test nDCG@10 | per seed | Recall@100 | train s (mean) |",
    "|---|---|---|---|---|---|---|---|---|",
]
for f in sorted(out.glob("*/retrieval.json")):
    records = {r["metric"]: r for r in json.loads(f.read_text())["records"]}
    r = records["ndcg@10"]
    val = [max(curve) for curve in r["val_curves"].values()]
    lines.append(
        f"| {f.parent.name} | {r['method']} | {r['variant']} | {', '.join(map(str, r['seeds']))} | {spread(val)} | "
        f"{spread(r['values'])} | {', '.join(f'{v:.4f}' for v in r['values'])} | "
        f"{records['recall@100']['mean']:.4f} | {r['train_seconds']:.0f} |"
    )
print("\n".join(lines))
(out.with_name("results10.md")).write_text("\n".join(lines) + "\n")

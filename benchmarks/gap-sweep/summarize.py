"""Collect a gap-sweep folder's runs into tables (validation decides; test shown only):
classification runs one row per run, retrieval runs (SciFact, round 10) one row per run with the
mean of its seeds. Writes results<N>.md beside runs<N>/. ``spread`` is seeds.py's too."""

import json
import pathlib
import statistics
import sys


def spread(values: list[float]) -> str:
    """Mean ± population standard deviation (0 for one value)."""
    sd = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def classification_table(out: pathlib.Path) -> list[str]:
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
                    )
                )
    if not rows:
        return []
    rows.sort(key=lambda x: -(x[4] or 0))
    lines = [
        "| run | method | variant | lr | val accuracy | test accuracy | best epoch | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, m, v, lr, va, te, be, st in rows:
        lr = "" if lr is None else f"{lr:g}"  # a probe: no rate, epochs or steps
        lines.append(f"| {n} | {m} | {v} | {lr} | {va:.4f} | {te:.4f} | {be or ''} | {st or ''} |")
    return lines


def retrieval_table(out: pathlib.Path) -> list[str]:
    """Validation: the best of each seed's curve (the epoch selected); test nDCG@10 and
    Recall@100: means over the seeds."""
    lines = []
    for f in sorted(out.glob("*/retrieval.json")):
        records = {r["metric"]: r for r in json.loads(f.read_text())["records"]}
        r = records["ndcg@10"]
        val = [max(curve) for curve in r["val_curves"].values()]
        lines.append(
            f"| {f.parent.name} | {r['method']} | {r['variant']} | {', '.join(map(str, r['seeds']))} | {spread(val)} | "
            f"{spread(r['values'])} | {', '.join(f'{v:.4f}' for v in r['values'])} | "
            f"{records['recall@100']['mean']:.4f} | {r['train_seconds']:.0f} |"
        )
    if not lines:
        return []
    return [
        "| run | method | variant | seeds | val nDCG@10 | test nDCG@10 | per seed | Recall@100 | train s (mean) |",
        "|---|---|---|---|---|---|---|---|---|",
        *lines,
    ]


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/gap-sweep/runs")
    tables = [t for t in (classification_table(out), retrieval_table(out)) if t]
    text = "\n\n".join("\n".join(t) for t in tables)
    print(text)
    (out.with_name(out.name.replace("runs", "results") + ".md")).write_text(text + "\n")

"""Steps suite: seconds per training step and peak memory of every gradient method on one
fixed batch, each method in a fresh process, one after the other.

The classification suite's s/step is an average over whole training runs; this one isolates
the step (forward, backward, optimiser) on the same batch for every method, so that what a
method computes (adapter gradients only, or weight gradients too) is what the numbers show.
Run it on an otherwise idle machine: it measures time.
"""

from __future__ import annotations

import sys
from pathlib import Path

from exotune.bench import classification, graymethods
from exotune.bench.common import RESULTS_DIR, run_isolated, write_suite
from exotune.errors import ConfigError
from exotune.plotting import pyplot

METHODS = ("dga-output-only", "dga-input-only", "dga-both", "lga", "lora", "full-ft")


def run(args) -> int:
    datasets = args.datasets or ["banking77"]
    methods = args.methods or list(METHODS)
    bad = [x for x in datasets if x not in classification.DATASETS]
    if bad:
        raise ConfigError(f"suite 'steps' has no dataset {bad}; choose from {list(classification.DATASETS)}")
    for name in methods:  # the classification suite's gradient methods, gray-box names included
        if name not in METHODS and graymethods.parse(name) is None:
            raise ConfigError(
                f"suite 'steps' has no method {name!r}; choose from {list(METHODS)} or a gray-box "
                "name (dga-lowrank16, lga-8-upper, ...)"
            )
    budget = classification.Budget()
    steps = 5 if args.quick else 30
    if args.quick:
        budget = classification.Budget(batch_size=8, max_train=64, max_val=16)
    out_dir = Path(args.out_dir) if args.out_dir else (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    records = []
    for dataset in datasets:
        for name in methods:
            print(f"[bench] steps: {dataset} {name} ...", file=sys.stderr, flush=True)
            rec = run_isolated(classification.step_time, name, dataset, args.data_dir, budget, args.backbone, steps)
            print(
                f"[bench]   {rec['seconds_per_step']:.3f} s/step, peak {rec['peak_memory_mb']:.0f} MB", file=sys.stderr
            )
            records.append(rec)
    write_suite("steps", args, budget, out_dir, markdown, plot, steps_timed=steps, records=records)
    return 0


def markdown(doc: dict) -> str:
    lines = [
        f"# steps\n\n`{doc['command']}`\n",
        f"{doc['date']}, {doc['machine']}, backbone {doc['backbone']}. One fixed batch per dataset "
        f"(the same for every method); median of {doc['steps_timed']} steps after 3 warm-up steps; "
        "each method in a fresh process.\n",
        "| dataset | method | variant | access | batch | trainable params | s/step (median) | s/step (p90) | peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["records"]:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['variant']} | {r['access']} | {r['batch_size']} | "
            f"{r['trainable_params']:,} | {r['seconds_per_step']:.3f} | {r['seconds_per_step_p90']:.3f} | "
            f"{r['peak_memory_mb']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(doc: dict, out_dir: Path) -> None:
    plt = pyplot()
    if plt is None or not doc["records"]:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [f"{r['dataset']}\n{r['method']} ({r['variant']})" for r in doc["records"]]
    for ax, key, title in (
        (axes[0], "seconds_per_step", "seconds per step (median)"),
        (axes[1], "peak_memory_mb", "peak memory of the process (MB)"),
    ):
        ax.barh(labels, [r[key] for r in doc["records"]], color="tab:blue")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "steps.png", dpi=110)
    plt.close(fig)

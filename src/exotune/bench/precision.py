"""Precision suite: the same model evaluated on a test split in fp32 and in bf16 (the box's
no-gradient calls under autocast, ``load_box(precision=)``, ``--precision``), interleaved in one
process so that both see the same machine: metrics and seconds of each, and their ratio.

Methods: ``zero-shot`` (class-name prototypes, encoded in the precision under test) and
``dga-both`` (DGA trained in fp32 on the budget, then evaluated both ways). Times are of whole
evaluations (embedding, the box, the head) over the test split; on a busy machine read the
ratio, not the seconds. ``EXOTUNE_BENCH_DEVICE=cuda`` runs it on a GPU (benchmarks/gpu/check.sh).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from exotune.bench import classification
from exotune.bench.common import RESULTS_DIR, run_isolated, write_suite
from exotune.errors import ConfigError
from exotune.plotting import pyplot

METHODS = ("zero-shot", "dga-both")
PRECISIONS = ("fp32", "bf16")


def run(args) -> int:
    datasets = args.datasets or ["banking77"]
    methods = args.methods or list(METHODS)
    bad = [x for x in datasets if x not in classification.DATASETS] + [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(
            f"suite 'precision' has no dataset or method {bad}; datasets "
            f"{list(classification.DATASETS)}, methods {list(METHODS)}"
        )
    budget = classification.Budget(epochs=args.epochs or 1, max_train=args.max_train)
    device = os.environ.get("EXOTUNE_BENCH_DEVICE", "cpu")  # benchmarks/gpu/check.sh: cuda
    repeats = 3 if device.startswith("cuda") else 2
    if args.quick:
        budget, repeats = classification.Budget(epochs=1, max_train=128, max_val=64, max_test=256), 1
    out_dir = Path(args.out_dir) if args.out_dir else (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    records = []
    for dataset in datasets:
        for method in methods:
            print(f"[bench] precision: {dataset} {method} ...", file=sys.stderr, flush=True)
            rec = run_isolated(measure, method, dataset, args.data_dir, budget, args.backbone, repeats, device)
            print(
                f"[bench]   accuracy {rec['fp32']['accuracy']:.4f} vs {rec['bf16']['accuracy']:.4f}, "
                f"bf16 {rec['speedup']:.2f}x faster",
                file=sys.stderr,
            )
            records.append(rec)
    write_suite("precision", args, budget, out_dir, markdown, plot, repeats=repeats, records=records)
    return 0


def measure(method: str, dataset: str, data_dir, budget, backbone, repeats: int, device: str = "cpu") -> dict:
    """One method on one dataset: fp32 and bf16 evaluations of the test split, alternating which
    goes first; metrics of each and the median seconds. Meant for a fresh process."""
    import numpy as np
    import torch

    from exotune.boxes import load_box
    from exotune.graybox import DGAConfig
    from exotune.tasks.classification import ClassificationConfig, TextClassifier
    from exotune.tasks.metrics import classification_metrics
    from exotune.train import TrainConfig, Trainer, seed_everything

    seed_everything(0)
    train, val, test = classification.split_data(dataset, data_dir, budget, 0)
    task = ClassificationConfig(label_template=classification.LABEL_TEMPLATES.get(dataset, "{}"))
    box = load_box(backbone, device=device)
    trained, train_seconds = None, 0.0
    if method == "dga-both":
        trained = TextClassifier(box, train.label_names, DGAConfig(), task)
        cfg = TrainConfig(epochs=budget.epochs, batch_size=budget.batch_size, lr=budget.lr, patience=budget.patience)
        train_seconds = Trainer(cfg, progress=False, device=box.device).fit(trained, train, val).train_seconds
    test, classes = test.aligned_to(train.label_names)
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    predictions: dict[str, np.ndarray] = {}
    if box.device.type == "cuda":  # a GPU's first calls in a precision build its kernels: not timed
        for precision in PRECISIONS:
            box.precision = precision
            _predict(trained, box, train.label_names, task, test.head(64, 0).inputs)
    for r in range(repeats):
        for precision in PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]:
            box.precision = precision
            t = time.perf_counter()
            predictions[precision] = _predict(trained, box, train.label_names, task, test.inputs)
            seconds[precision].append(time.perf_counter() - t)
    rec = {
        "dataset": dataset,
        "split": "test",
        "method": method,
        "n_test": len(test),
        "n_train": len(train),
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "device": str(box.device),
        "bf16_fast_path": torch.backends.cpu.get_cpu_capability(),
    }
    for precision in PRECISIONS:
        metrics = classification_metrics(
            np.asarray(test.labels), predictions[precision], len(train.label_names), classes
        )
        rec[precision] = {
            **metrics,
            "seconds": statistics.median(seconds[precision]),
            "all_seconds": seconds[precision],
        }
    rec["speedup"] = rec["fp32"]["seconds"] / rec["bf16"]["seconds"]
    rec["accuracy_delta_points"] = 100 * (rec["bf16"]["accuracy"] - rec["fp32"]["accuracy"])
    rec["agreement"] = float((predictions["fp32"] == predictions["bf16"]).mean())  # same label for a text
    return rec


def _predict(trained, box, label_names, task, inputs):
    """Labels of ``inputs``; zero-shot encodes its prototypes too, in the precision under test."""
    from exotune.tasks.classification import TextClassifier

    model = trained if trained is not None else TextClassifier(box, label_names, config=task).to(box.device)
    return model.predict_proba(inputs).argmax(-1).numpy()


def markdown(doc: dict) -> str:
    lines = [
        f"# precision\n\n`{doc['command']}`\n",
        f"{doc['date']}, {doc['machine']}, backbone {doc['backbone']}. Each model evaluated on the test split "
        f"in fp32 and bf16 (autocast of the box's no-gradient calls), {doc['repeats']} time(s) each, "
        "alternating which goes first, in one process; seconds are medians. DGA is trained in fp32 "
        f"({doc['budget']['epochs']} epoch(s))."
        + (
            " On a GPU each precision first predicts 64 texts, untimed (its kernels are built on first use)."
            if any(str(r.get("device", "")).startswith("cuda") for r in doc["records"])
            else ""
        )
        + "\n",
        "| dataset | method | device | test | accuracy fp32 | accuracy bf16 | Δ points | macro-F1 fp32 | macro-F1 bf16 "
        "| same label | s fp32 | s bf16 | bf16 speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["records"]:
        a, b = r["fp32"], r["bf16"]
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r.get('device', 'cpu')} | {r['n_test']} | "
            f"{a['accuracy']:.4f} | {b['accuracy']:.4f} | "
            f"{r['accuracy_delta_points']:+.2f} | {a['macro_f1']:.4f} | {b['macro_f1']:.4f} | "
            f"{r['agreement']:.4f} | {a['seconds']:.1f} | {b['seconds']:.1f} | {r['speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def plot(doc: dict, out_dir: Path) -> None:
    plt = pyplot()
    if plt is None or not doc["records"]:
        return
    fig, ax = plt.subplots(figsize=(6, 3))
    labels = [f"{r['dataset']} {r['method']}" for r in doc["records"]]
    ax.barh(labels, [r["speedup"] for r in doc["records"]], color="tab:blue")
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_title("evaluation speed-up of bf16 over fp32 (same run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "precision.png", dpi=110)
    plt.close(fig)

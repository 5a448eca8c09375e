"""What every suite shares: isolated runs, the results format, Markdown and plots."""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import platform
import resource
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from exotune.plotting import pyplot

RESULTS_DIR = Path("benchmarks/results")


@dataclass
class BenchOptions:
    """What ``exotune bench SUITE`` was asked for; ``None`` and empty lists: the suite's defaults."""

    suite: str
    datasets: list[str] | None = None
    methods: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int | None = None
    patience: int | None = None
    max_train: int | None = None
    val_min_words: int | None = None  # classification: validation keeps phrases of this many words or more
    val_fraction: float | None = None  # classification: the share of train carved for validation
    max_val: int | None = None  # classification: validation's sample size (else the suite's caps)
    prototype_start: str | None = None  # classification: where every trained method's prototype head starts
    hard_negatives: int | None = None  # retrieval: the bare box's top non-relevant documents per query, each step
    lr: list[tuple[str, float]] = field(default_factory=list)  # (method, learning rate)
    data_dir: str | None = None
    backbone: str | None = None
    out_dir: str | None = None
    quick: bool = False
    fresh: bool = False
    ema: float | None = None  # TrainConfig.ema for every trained method
    no_group_by_length: bool = False
    # the user's own data (exotune.bench.sources): labelled text files, or a BEIR folder
    file: str | None = None
    val_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    beir_dir: str | None = None
    data: str | None = None  # vision: a caption file
    images: str | None = None  # vision: the images' folder (default: the caption file's)
    task: str | None = None  # vision: image-retrieval (default), video-retrieval or sketch-retrieval
    videos: str | None = None  # vision, video-retrieval: the videos' folder
    sketches: str | None = None  # vision, sketch-retrieval: Sketchy's root, or sketches' class folders
    photos: str | None = None  # vision, sketch-retrieval: the photos' class folders (with --sketches)
    unseen_classes: float | None = None  # vision, sketch-retrieval: the test classes' share
    class_seed: int = 0  # vision, sketch-retrieval: which classes are the test's
    skip_bad_images: bool | None = None  # vision, own data: leave out unreadable files (counted)


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    system = f"{platform.machine()}, Python {platform.python_version()}"
    return f"{os.cpu_count()} CPU cores, {mem:.0f} GiB, {gpu} ({system})"


def _status_kib(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def process_peak_mb(pid: int) -> float | None:
    """Peak resident memory of a process (Linux ``VmHWM``)."""
    return _status_kib(pid, "VmHWM")


def process_rss_mb(pid: int) -> float | None:
    """Resident memory of a process now (Linux ``VmRSS``)."""
    return _status_kib(pid, "VmRSS")


def open_fds(pid: int) -> int | None:
    """File descriptors a process holds open (sockets included)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def peak_memory_mb() -> float:
    """Peak resident memory of this process's own image: Linux ``VmHWM``. (``ru_maxrss`` is
    kept across exec, so a spawned worker would report at least its parent's resident memory
    at the spawn; it is the fallback where /proc is missing.)"""
    own = process_peak_mb(os.getpid())
    return own if own is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(fn, *args):
    """Run ``fn(*args)`` in a fresh process, so its peak memory is its own; the process ends
    with the suite (a killed suite leaves no run burning the cores)."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=1, mp_context=ctx, initializer=start_worker, initargs=(os.getpid(), _quiet())
    ) as pool:
        return pool.submit(fn, *args).result()


def _quiet() -> bool:
    """Whether this process shows only warnings (``--quiet``, or no log set up: a library call)."""
    import logging

    return not logging.getLogger("exotune").isEnabledFor(logging.INFO)


def start_worker(parent: int, quiet: bool) -> None:
    """A suite's worker process: its log lines as its parent's, and it ends with its parent."""
    from exotune.progress import setup_logging

    setup_logging(quiet)
    exit_with_parent(parent)


def exit_with_parent(parent: int, every: float = 1.0) -> None:
    """In a worker: a daemon thread that ends the process once ``parent`` is gone."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


class RunLog:
    """Finished runs, one JSON line each, so an interrupted suite resumes where it stopped."""

    def __init__(self, path: Path, fresh: bool = False) -> None:
        self.path = path
        self.runs: dict[str, dict] = {}
        if fresh and path.exists():
            path.unlink()
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.runs[entry["key"]] = entry["run"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by a crash: that run is simply redone

    @staticmethod
    def _key(key: dict) -> str:
        return json.dumps(key, sort_keys=True)

    def get(self, key: dict) -> dict | None:
        return self.runs.get(self._key(key))

    def add(self, key: dict, run: dict) -> None:
        k = self._key(key)
        self.runs[k] = run
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"key": k, "run": run}) + "\n")

    def matching(self, **fields) -> list[tuple[dict, dict]]:
        """(key, run) of every logged run whose key has these field values."""
        out = []
        for k, run in self.runs.items():
            key = json.loads(k)
            if all(key.get(f) == v for f, v in fields.items()):
                out.append((key, run))
        return out


def step_seconds(result) -> dict:
    """A training run's seconds per step, both ways: ``seconds_per_step`` the median step (what
    a step costs on a quiet machine), ``wall_seconds_per_step`` its training seconds over its
    steps (what the run paid, validation and any contention included)."""
    wall = result.train_seconds / result.steps if result.steps else None
    return {"seconds_per_step": result.seconds_per_step, "wall_seconds_per_step": wall}


def aggregate(runs: list[dict], metric: str) -> dict:
    """Mean and std over seeds of ``metric``; other numeric fields are averaged."""
    first = runs[0]
    values = [r["metrics"][metric] for r in runs]
    rec = {k: v for k, v in first.items() if k not in ("metrics", "seed", "note", "val_curve")}
    rec.update(
        metric=metric,
        mean=float(np.mean(values)),
        std=float(np.std(values)),
        seeds=[r["seed"] for r in runs],
        values=values,
    )
    curves = {str(r["seed"]): r["val_curve"] for r in runs if r.get("val_curve")}
    if curves:  # validation after each epoch, per seed: how a run rose, peaked and stopped
        rec["val_curves"] = curves
    notes = [f"seed {r['seed']}: {r['note']}" for r in runs if r.get("note")]
    if notes:  # what a reader must know about a run (added to its run-log entry by hand)
        rec["notes"] = notes
    for key in (
        "train_seconds",
        "seconds_per_step",
        "wall_seconds_per_step",
        "peak_memory_mb",
        "eval_examples_per_second",
    ):
        vals = [r[key] for r in runs if r.get(key) is not None]
        rec[key] = float(np.mean(vals)) if vals else None
    return rec


def run_record(dataset: str, seed: int, described: tuple[str, str, str], train, val, test) -> dict:
    """The fields a suite's run record starts with; ``described``: (method, variant, access)."""
    method, variant, access = described
    return {
        "dataset": dataset,
        "split": "test",
        "method": method,
        "variant": variant,
        "access": access,
        "seed": seed,
        "train_seconds": 0.0,
        "seconds_per_step": None,
        "lr": None,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
    }


def fit_record(model, train, val, budget, lrs: dict, seed: int, metric: str) -> dict:
    """The shared gradient protocol: the same Trainer, budget and selection (``metric`` on
    validation) for every method; ``lrs``: the ``TrainConfig`` rates (``lr`` and any per-group
    ``lr_tokens``, ...), ``budget.train_options`` the other options (ema, group_by_length).
    Returns the run record's training fields."""
    from exotune.train import TrainConfig, Trainer

    cfg = TrainConfig(
        epochs=budget.epochs,
        batch_size=budget.batch_size,
        patience=budget.patience,
        seed=seed,
        select_metric=metric,
        **lrs,
        **budget.train_options,
    )
    result = Trainer(cfg, progress="epochs").fit(model, train, val)  # a line per epoch in the suite's log
    rec = {
        "train_seconds": result.train_seconds,
        **step_seconds(result),
        "steps": result.steps,
        "lr": cfg.lr,
        "best_epoch": result.best_epoch,
        f"val_{metric.replace('@', '_at_')}": result.best_metric,
        "val_curve": val_curve(result, metric),
    }
    if len(lrs) > 1:
        rec["lr_groups"] = result.group_lr
    return rec


def val_curve(result, metric: str) -> list[float]:
    """The validation ``metric`` after each epoch of a ``TrainResult``."""
    return [round(float(h[f"val_{metric}"]), 4) for h in result.history if f"val_{metric}" in h]


def command_line() -> str:
    return "exotune " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "exotune"


def write_results(suite: str, records: list[dict], out_dir: Path, extra: dict, command: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "suite": suite,
        "command": command,
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        **extra,
        "records": records,
    }
    path = out_dir / f"{suite}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / f"{suite}.md").write_text(markdown_table(doc))
    plot(doc, out_dir)
    return path


def _fmt(v, digits=1):
    return "" if v is None else f"{v:,.{digits}f}"


def _dataset_line(records: list[dict]) -> str | None:
    """What the runs of one dataset saw: sample sizes and the label template."""
    r = next((r for r in records if r.get("n_train") is not None), None)
    if r is None:
        return None
    line = f"train {r['n_train']:,}, validation {r['n_val']:,}, test {r['n_test']:,} examples"
    if r.get("n_classes"):  # the head grows with the classes: the parameter counts hold for this many
        line += f"; {r['n_classes']} classes (trainable parameters count a head for {r['n_classes']})"
    by_threads: dict = {}  # training seconds depend on it
    for x in records:
        by_threads.setdefault(x.get("threads"), []).append(x["method"])
    if len(by_threads) == 1 and None not in by_threads:
        line += f"; torch threads {next(iter(by_threads))}"
    elif len(by_threads) > 1:
        parts = [f"{n} for {', '.join(dict.fromkeys(ms))}" for n, ms in by_threads.items() if n is not None]
        if None in by_threads:
            parts.append("not recorded for the others (the default: one per core)")
        line += f"; torch threads {'; '.join(parts)}"
    template = next((x["label_template"] for x in records if x.get("label_template")), None)
    return line + (f"; class names encoded as `{template}`." if template else ".")


def markdown_table(doc: dict) -> str:
    lines = [
        f"# {doc['suite']}",
        "",
        f"`{doc['command']}`",
        "",
        f"{doc['date']}, {doc['machine']}, backbone {doc.get('backbone', '')}.",
        "",
    ]
    if doc.get("budget"):
        lines += [f"Budget: {doc['budget']}", ""]
    lines += [
        "s/step (median): the median training step, what a step costs without contention; s/step (wall): "
        "train s over the run's steps, validation and any contention included.",
        "",
    ]
    datasets = list(dict.fromkeys(r["dataset"] for r in doc["records"]))
    for ds in datasets:
        records = [r for r in doc["records"] if r["dataset"] == ds]
        lines += [f"## {ds}", ""]
        about = _dataset_line(records)
        if about:
            lines += [about, ""]
        lines += [
            "| method | variant | access | metric | mean ± std | trainable params | lr | train s | s/step "
            "(median) | s/step (wall) | peak MB | eval ex/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in records:
            lr = "" if r.get("lr") is None else f"{r['lr']:g}"
            lines.append(
                f"| {r['method']} | {r['variant']} | {r['access']} | {r['metric']} | "
                f"{r['mean']:.4f} ± {r['std']:.4f} | {r['trainable_params']:,} | {lr} | {_fmt(r['train_seconds'])} | "
                f"{_fmt(r['seconds_per_step'], 3)} | {_fmt(r.get('wall_seconds_per_step'), 3)} | "
                f"{_fmt(r['peak_memory_mb'], 0)} | {_fmt(r.get('eval_examples_per_second'), 0)} |"
            )
        lines.append("")
        notes = [
            f"- {r['method']} ({r['variant']}), {n}"
            for r in records
            if r["metric"] == records[0]["metric"]
            for n in r.get("notes", [])
        ]
        if notes:
            lines += ["Notes:", "", *notes, ""]
    return "\n".join(lines)


PLOTS = (  # x axis key, label, file suffix; the y axis is the suite's first metric
    ("trainable_params", "trainable parameters", "params"),
    ("train_seconds", "training seconds", "time"),
    ("seconds_per_step", "median seconds per training step (same batch size)", "step_time"),
)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h")


def plot(doc: dict, out_dir: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    if not doc["records"]:
        return
    metric = doc["records"][0]["metric"]
    records = [r for r in doc["records"] if r["metric"] == metric]
    datasets = sorted({r["dataset"] for r in records})
    for xkey, xlabel, name in PLOTS:
        fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
        for ax, ds in zip(axes[0], datasets, strict=True):
            for i, r in enumerate(r for r in records if r["dataset"] == ds):
                x = r.get(xkey)
                if xkey == "seconds_per_step":
                    if not x:
                        continue  # no training steps (zero-shot, linear probe): nothing to place
                else:
                    x = max(x or 0, 1e-1 if xkey == "train_seconds" else 1)  # log axis: 0 sits at the left
                ax.errorbar(
                    x,
                    r["mean"],
                    yerr=r["std"],
                    fmt=MARKERS[i % len(MARKERS)],
                    capsize=3,
                    label=f"{r['method']} ({r['variant']}, {r['access']})",
                )
            ax.set_xscale("log")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="best")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(metric)
            ax.set_title(f"{doc['suite']}: {ds}")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / f"{doc['suite']}_{name}.png", dpi=110)
        plt.close(fig)


def suite_header(suite: str, args, budget) -> dict:
    """What every suite's document starts with: the suite, the command, date, machine, backbone,
    budget and whether it was a quick run."""
    return {
        "suite": suite,
        "command": command_line(),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "backbone": args.backbone or "all-MiniLM-L6-v2",
        "budget": asdict(budget),
        "quick": args.quick,
    }


def write_suite(suite: str, args, budget, out_dir: Path, markdown, plot, **fields) -> dict:
    """A suite with its own driver: ``<suite>.json`` (the command, date, machine, backbone,
    budget and ``fields``), its Markdown table (printed) and its plots; returns the document."""
    doc = {**suite_header(suite, args, budget), **fields}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{suite}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / f"{suite}.md").write_text(markdown(doc))
    plot(doc, out_dir)
    print((out_dir / f"{suite}.md").read_text())
    return doc

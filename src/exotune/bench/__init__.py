"""Comparison suites that write JSON, Markdown tables and plots to benchmarks/results/."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from exotune.bench import (
    classification,
    ea,
    graymethods,
    precision,
    reliability,
    remote,
    retrieval,
    serving,
    steps,
    vision,
)
from exotune.bench.common import (
    RESULTS_DIR,
    BenchOptions,
    RunLog,
    aggregate,
    command_line,
    run_isolated,
    write_results,
)
from exotune.bench.sources import user_data
from exotune.defaults import TASK_DEFAULTS
from exotune.errors import ConfigError

SUITES = {
    "classification": classification,
    "retrieval": retrieval,
    "remote": remote,
    "ea": ea,
    "steps": steps,
    "reliability": reliability,
    "precision": precision,
    "serve": serving,
    "vision": vision,
}


def _write(suite_name: str, suite, log: RunLog, extra: dict, budget, out_dir: Path, datasets) -> Path:
    """The results file from every logged run with these settings (earlier invocations too:
    methods and datasets may be run in separate calls); the commands are listed."""
    groups: dict[tuple, list[dict]] = {}
    budgets = {}
    for dataset in datasets:
        for key, run in log.matching(**extra, dataset=dataset, budget=budget.for_dataset(dataset)):
            groups.setdefault((key["dataset"], key["method"]), []).append(run)
            budgets[dataset] = key["budget"]
    order = {m: i for i, m in enumerate(suite.METHODS)}
    records = []
    for (_, _), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
        runs = sorted(runs, key=lambda r: r["seed"])
        records += [aggregate(runs, metric) for metric in _metrics(suite, runs[0])]
    commands = list(dict.fromkeys(r.get("command", "") for runs in groups.values() for r in runs))
    for rec in records:
        rec.pop("command", None)
    one = list(dict.fromkeys(json.dumps(b, sort_keys=True) for b in budgets.values()))
    doc_budget = next(iter(budgets.values())) if len(one) == 1 else budgets
    # what the suite runs without --lr and --epochs
    defaults = getattr(suite, "DEFAULTS", None) or TASK_DEFAULTS[suite_name]
    defaults = defaults.to_dict()
    return write_results(
        suite_name,
        records,
        out_dir,
        {**extra, "budget": doc_budget, "defaults": defaults},
        " && ".join(c for c in commands if c),
    )


def _metrics(suite, run: dict) -> tuple[str, ...]:
    """The metrics of a suite's run: the suite's, or those of the run's task (``run_metrics``)."""
    return suite.run_metrics(run) if hasattr(suite, "run_metrics") else suite.METRICS


# options only one suite reads (classification, retrieval: fields of the suite's Budget, set from them)
SUITE_ONLY = {
    "vision": ("task", "videos", "images", "unseen_classes", "skip_bad_images"),
    "classification": ("val_min_words", "val_fraction", "max_val", "prototype_start"),
    "retrieval": ("hard_negatives",),
}


def check_options(args: BenchOptions) -> None:
    """Options another suite would quietly ignore, and an output folder that cannot be one."""
    for suite, names in SUITE_ONLY.items():
        given = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) is not None]
        if given and args.suite != suite:
            raise ConfigError(
                f"{', '.join(given)}: the {suite} suite's options; the {args.suite} suite does not take them"
            )
    if args.out_dir and Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise ConfigError(f"--out-dir {args.out_dir} is a file, not a folder")


def run_suite(args: BenchOptions) -> int:
    """Run (or reuse from the suite's log) every dataset x method x seed asked for, then write the results."""
    suite = SUITES[args.suite]
    check_options(args)
    own = user_data(args)  # the user's files or BEIR folder, else None: the suite's datasets
    if hasattr(suite, "run"):  # a suite with its own driver
        return suite.run(args)
    if hasattr(suite, "check"):  # what a suite needs beyond the generic options
        suite.check(args)
    default = suite.default_datasets(args) if hasattr(suite, "default_datasets") else suite.DATASETS[:1]
    datasets = [own.name] if own else args.datasets or list(default)
    methods = args.methods or list(suite.METHODS)
    checks = [] if own else [("dataset", datasets, suite.DATASETS)]
    for kind, given, known in checks:
        bad = [x for x in given if x not in known]
        if bad:
            raise ConfigError(f"suite {args.suite!r} has no {kind} {bad}; choose from {list(known)}")
    for name in methods:
        graymethods.describe(name, suite.METHODS)  # a clear error for an unknown name
    sized = {k: v for k, v in (("epochs", args.epochs), ("patience", args.patience)) if v}
    budget = suite.Budget(**sized, max_train=args.max_train)
    seeds = args.seeds
    if args.quick:  # the smoke test's sizes; an --epochs or --patience given still holds
        budget = replace(suite.quick_budget(), **sized)
        seeds = seeds[:1]
    for name in SUITE_ONLY.get(args.suite, ()):  # fields of its budget, under the full one or the smoke test's
        if getattr(args, name):
            setattr(budget, name, getattr(args, name))
    for method, lr in args.lr:
        if "." in method:
            graymethods.check_group_key(method)
            budget.group_lr[method] = lr
        elif method == "dga" or not hasattr(budget, "method_lr"):
            budget.lr = lr
        else:
            budget.method_lr[method] = lr
    if hasattr(budget, "train_options"):
        options = {"ema": args.ema} if args.ema else {}
        budget.train_options.update(options, **({"group_by_length": False} if args.no_group_by_length else {}))
    out_dir = Path(args.out_dir) if args.out_dir else (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    extra = {
        "backbone": args.backbone or getattr(suite, "DEFAULT_BACKBONE", "all-MiniLM-L6-v2"),
        "quick": args.quick,
        **({"data": own.key()} if own else {}),
    }
    source = own or args.data_dir  # where run_one finds the data: the user's, or a data root
    command = command_line()
    log = RunLog(out_dir / f".{args.suite}.runs.jsonl", fresh=args.fresh)
    for dataset in datasets:
        for name in methods:
            for seed in seeds:
                key = {"dataset": dataset, "method": name, "seed": seed, **extra, "budget": budget.for_dataset(dataset)}
                run = log.get(key)
                if run is None:
                    print(f"[bench] {dataset} {name} seed {seed} ...", file=sys.stderr, flush=True)
                    run = run_isolated(suite.run_one, name, dataset, seed, source, budget, args.backbone)
                    log.add(key, {**run, "command": command})
                else:
                    print(f"[bench] {dataset} {name} seed {seed}: logged earlier, reused", file=sys.stderr)
                main = _metrics(suite, run)[0]
                print(f"[bench]   {main} {run['metrics'][main]:.4f}, {run['train_seconds']:.0f} s", file=sys.stderr)
            # after each method: nothing lost
            path = _write(args.suite, suite, log, extra, budget, out_dir, datasets if own else suite.DATASETS)
    print(path.with_suffix(".md").read_text())
    print(f"results written to {path}", file=sys.stderr)
    return 0

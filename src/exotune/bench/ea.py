"""EA suite: Easy Adaptation around MiniLM served at level ``black``, against LoRA.

The LM is ``exotune serve --level black`` in its own process, as an API would be: the
user's process pays neither its memory nor its weights. Two settings, as in the issue:
``label-only`` (the LM answers with a label, zero-shot by similarity to the label names, in
the classification suite's label template) and ``embeddings`` (it returns embeddings, which the
SSMs may read; EA keeps the SSMs chosen out of fold and on validation, see
:mod:`exotune.ea.selection`). Each setting is fitted once per seed in a fresh process (probe
included in its training seconds); the budgets are then chosen again on validation
(``EasyAdapter.recalibrate``), which is all a budget changes. Datasets, samples, the linear
probe and LoRA are the classification suite's (its logged runs reused where the budget is the
same). Test is touched only to report; latency is measured on the first seed
(:mod:`exotune.bench.ea_latency`).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from exotune.bench import classification, ea_latency
from exotune.bench.common import (
    RESULTS_DIR,
    RunLog,
    aggregate,
    peak_memory_mb,
    run_isolated,
    suite_header,
)
from exotune.bench.sources import user_data
from exotune.defaults import CLASSIFICATION
from exotune.errors import ConfigError
from exotune.plotting import pyplot

DATASETS = classification.DATASETS
METRICS = ("accuracy", "macro_f1")
#: the embeddings setting's candidates: TF-IDF, LR on whitened PCA of the embeddings at three
#: widths, and a plain LR on the raw embeddings
CANDIDATES = ("tfidf-lr", "embedding-lr", "embedding-lr-128", "embedding-lr-all", "embedding-lr-raw")
SETTINGS = {
    # setting: (what the served box returns, the SSMs)
    "label-only": ("labels", ("tfidf-lr",)),
    "embeddings": ("embeddings", CANDIDATES),
}


@dataclass
class Budget:
    val_fraction: float = 0.1
    budgets: tuple[float, ...] = (0.1, 0.3, 0.5, 1.0)
    policies: tuple[str, ...] = ("ssm-first", "lm-first")
    n_clusters: int = 8
    cv_folds: int = 3  # every row still gets an out-of-fold prediction; 3 fits per pass, not 5
    max_train: int | None = None  # else the classification suite's caps (SST-2: 4,000 train, 2,000 val)
    max_val: int | None = None
    max_test: int | None = None
    latency_inputs: int = 200
    # the classification suite's LoRA budget (exotune.defaults)
    lora: dict = field(
        default_factory=lambda: {"epochs": CLASSIFICATION.epochs, "method_lr": {"lora": CLASSIFICATION.lr_for("lora")}}
    )

    def points(self) -> list[tuple[str, float]]:
        return [
            (policy, share) for policy in self.policies for share in (self.budgets if policy == "ssm-first" else (1.0,))
        ]


def class_budget(budget: Budget) -> classification.Budget:
    """The classification suite's budget these runs share: samples, LoRA's, the probe's."""
    return classification.Budget(
        **budget.lora,
        val_fraction=budget.val_fraction,
        max_train=budget.max_train,
        max_val=budget.max_val,
        max_test=budget.max_test,
    )


def ea_run(
    setting: str, dataset: str, url: str, token: str, seed: int, source, budget: Budget, latency: bool = False
) -> dict:
    """Fit EA for one setting (a cold cache: the probe is paid and timed), then report every
    policy and budget; LM alone and the SSMs alone come from the same fit."""
    from exotune.ea import EasyAdapter, Ledger, ResponseCache, ServedBoxClient
    from exotune.ea.model import LMAnswers
    from exotune.ea.report import evaluation
    from exotune.ea.ssm import full_proba
    from exotune.tasks.metrics import classification_metrics

    returns, ssms = SETTINGS[setting]
    train, val, test = classification.split_data(dataset, source, class_budget(budget), seed)
    template = classification.LABEL_TEMPLATES.get(dataset, "{}")
    base = {
        "dataset": dataset,
        "split": "test",
        "access": "black",
        "seed": seed,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "label_template": template,
        "lm": "all-MiniLM-L6-v2 served at level black",
    }
    with tempfile.TemporaryDirectory() as tmp:

        def client(cached: bool = True):
            cache = ResponseCache(Path(tmp) / "cache.sqlite") if cached else None
            return ServedBoxClient(url, token, returns=returns, label_template=template, cache=cache)

        lm = client()
        t0 = time.perf_counter()
        model = EasyAdapter(
            lm=lm,
            ssms=ssms,
            n_clusters=budget.n_clusters,
            cv_folds=budget.cv_folds,
            policy="ssm-first",
            budget=1.0,
            random_state=seed,
        ).fit(train, val)
        fit_seconds = time.perf_counter() - t0
        fit_peak = peak_memory_mb()  # training memory: before the test evaluation below
        probe = model.ledgers_["probe"].to_dict()
        kept = "+".join(r["name"] for r in model.ssm_selection_ if r["kept"]) if model.ssm_selection_ else ssms[0]
        out, alone = [], None
        for policy, share in budget.points():
            model.recalibrate(share, policy)
            report = evaluation(model, test, compare=True)
            alone = alone or report
            out.append(
                {
                    **base,
                    "method": "ea",
                    "variant": f"{setting}, {policy}, budget={share:g}",
                    "setting": setting,
                    "policy": policy,
                    "budget": share,
                    "metrics": report["ea"],
                    "lm_call_share": report["lm_call_share"],
                    "lm_answer_share": report["lm_answer_share"],
                    "ssms": kept,
                    "val_accuracy": model.val_accuracy_,
                    "curve": report.get("curve"),
                    "seconds_per_input": report["seconds_per_input"],
                }
            )
        eval_peak = peak_memory_mb()  # after every policy's test evaluation
        for r in out:
            r.update(
                train_seconds=fit_seconds,
                probe_seconds=probe["seconds"],
                probe_calls=probe["calls"],
                trainable_params=None,
                seconds_per_step=None,
                peak_memory_mb=fit_peak,
                peak_memory_mb_with_eval=eval_peak,
            )
        lone = {**base, "setting": setting, "trainable_params": None, "seconds_per_step": None}
        out.append(
            {
                **lone,
                "method": "lm",
                "variant": setting,
                "metrics": alone["lm"],
                "train_seconds": 0.0,
                "trainable_params": 0,
                "lm_call_share": 1.0,
                "peak_memory_mb": None,
            }
        )
        out.append(
            {
                **lone,
                "method": "ssm",
                "variant": f"{setting}: {kept} (kept)",
                "metrics": alone["ssm"],
                "train_seconds": fit_seconds,
                "lm_call_share": 0.0,
                "peak_memory_mb": fit_peak,
                "regions": alone["regions"],
            }
        )
        if model.ssm_candidates_:  # each candidate alone on test (the box's embeddings from the cache)
            answers = LMAnswers.ask(lm, test.texts, model.label_names_, Ledger())
            views = {"text": list(test.texts), "embedding": answers.embeddings}
            c = len(model.label_names_)
            for name, m in model.ssm_candidates_.items():
                pred = full_proba(m, views[m.input_kind], c).argmax(1)
                out.append(
                    {
                        **lone,
                        "method": "ssm",
                        "variant": f"{setting}: {name} alone",
                        "metrics": classification_metrics(test.labels, pred, c),
                        "train_seconds": None,
                        "lm_call_share": 0.0,
                        "peak_memory_mb": None,
                    }
                )
        lat = []
        if latency:
            texts = list(test.texts[: budget.latency_inputs])
            lat = ea_latency.ea_latency(
                model, client(cached=False), texts, budget.points(), {"dataset": dataset, "setting": setting}
            )
    return {"runs": out, "latency": lat, "selection": model.ssm_selection_}


def logged_run(method: str, dataset: str, seed: int, budget: Budget, backbone, log_path: Path) -> dict | None:
    """The classification suite's run of ``method`` (lora or linear-probe) on this dataset and
    seed under the same budget (samples, and LoRA's epochs, batch and learning rate, or the
    probe's grid), if its run log holds one: the same run, not paid twice. Other methods'
    learning rates do not matter here."""
    if not log_path.is_file():
        return None
    want = class_budget(budget).for_dataset(dataset)

    def relevant(b: dict) -> dict:
        own = {"lora_lr": b.get("method_lr", {}).get("lora")} if method == "lora" else {"probe_cs": b.get("probe_cs")}
        return {**{k: v for k, v in b.items() if k not in ("lr", "method_lr", "probe_cs")}, **own}

    for key, run in RunLog(log_path).matching(
        dataset=dataset, method=method, seed=seed, quick=False, backbone=backbone or "all-MiniLM-L6-v2"
    ):
        if relevant(key["budget"]) == relevant(want):
            return run
    return None


def _records(runs: list[dict]) -> list[dict]:
    """Mean and spread over seeds per (dataset, method, variant), with the shares averaged."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["method"], r["variant"]), []).append(r)
    out = []
    for group in groups.values():
        group = sorted(group, key=lambda r: r["seed"])
        for metric in METRICS:
            rec = aggregate(group, metric)
            for key in ("lm_call_share", "lm_answer_share", "peak_memory_mb_with_eval", "probe_seconds"):
                vals = [r[key] for r in group if r.get(key) is not None]
                rec[key] = float(np.mean(vals)) if vals else None
            rec.pop("curve", None)
            rec.pop("regions", None)
            rec.pop("command", None)
            out.append(rec)
    return out


def run(args) -> int:
    from exotune.bench.common import process_peak_mb
    from exotune.bench.served import served_box

    own = user_data(args)  # the user's files: one dataset under its own name
    source = own or args.data_dir
    datasets = [own.name] if own else args.datasets or list(DATASETS[:1])
    bad = [] if own else [d for d in datasets if d not in DATASETS]
    if bad:
        raise ConfigError(f"suite 'ea' has no dataset {bad}; choose from {list(DATASETS)}")
    budget = Budget(max_train=args.max_train)
    if args.quick:
        budget = Budget(
            max_train=args.max_train or 600,
            max_val=200,
            max_test=300,
            budgets=(0.3, 1.0),
            cv_folds=3,
            n_clusters=4,
            latency_inputs=20,
            lora={"epochs": 1, "method_lr": {"lora": CLASSIFICATION.lr_for("lora")}},
        )
    if "lora" in dict(args.lr):
        budget.lora["method_lr"] = {"lora": dict(args.lr)["lora"]}
    seeds = args.seeds[:1] if args.quick else args.seeds
    out_dir = Path(args.out_dir) if args.out_dir else Path("benchmarks/results") / ("quick" if args.quick else "")
    runs, latency, selection = [], [], {}
    # finished EA runs are logged: an interrupted call, or one with more seeds, redoes none of them
    ea_log = RunLog(out_dir / ".ea.runs.jsonl", fresh=getattr(args, "fresh", False))
    extra = {
        "backbone": args.backbone or "all-MiniLM-L6-v2",
        "quick": args.quick,
        "budget": asdict(budget),
        **({"data": own.key()} if own else {}),
    }
    with served_box(args.backbone, level="black") as server:
        for seed in seeds:  # seed by seed: a call cut short still has every dataset on its first seeds
            for dataset in datasets:
                for setting in SETTINGS:
                    key = {"dataset": dataset, "setting": setting, "seed": seed, "latency": seed == seeds[0], **extra}
                    got = ea_log.get(key)
                    if got is None:
                        print(f"[bench] EA, {dataset}, {setting}, seed {seed} ...", file=sys.stderr, flush=True)
                        got = run_isolated(
                            ea_run, setting, dataset, server.url, server.token, seed, source, budget, seed == seeds[0]
                        )
                        ea_log.add(key, got)
                    else:
                        print(f"[bench] EA, {dataset}, {setting}, seed {seed}: logged earlier, reused", file=sys.stderr)
                    runs += got["runs"]
                    latency += got["latency"]
                    if got["selection"]:
                        selection[f"{dataset}, {setting}, seed {seed}"] = got["selection"]
        server_peak = process_peak_mb(server.proc.pid)
    log = RESULTS_DIR / ".classification.runs.jsonl"
    for dataset in datasets:
        for seed in seeds:
            for method in ("linear-probe", "lora"):
                got = None if args.quick or own else logged_run(method, dataset, seed, budget, args.backbone, log)
                how = "the classification suite's run with this budget, reused"
                if got is None:
                    how = "run"
                    got = run_isolated(
                        classification.run_one, method, dataset, seed, source, class_budget(budget), args.backbone
                    )
                print(f"[bench] {dataset} {method} seed {seed}: {how}", file=sys.stderr, flush=True)
                runs.append({k: v for k, v in got.items() if k != "command"})
        train, _, test = classification.split_data(dataset, source, class_budget(budget), seeds[0])
        latency.append(
            run_isolated(
                ea_latency.lora_latency,
                dataset,
                list(test.texts[: budget.latency_inputs]),
                train.label_names,
                classification.LABEL_TEMPLATES.get(dataset, "{}"),
                args.backbone,
            )
        )
    for r in runs:
        print(
            f"[bench]   {r['dataset']:9} {r['method']:12} {r['variant']:48} accuracy {r['metrics']['accuracy']:.4f}",
            file=sys.stderr,
        )
    curves = {f"{r['dataset']}: {r['variant']}": r["curve"] for r in runs if r.get("curve") and r["seed"] == seeds[0]}
    doc = {
        **suite_header("ea", args, budget),
        "defaults": {"lora": {"epochs": CLASSIFICATION.epochs, "lr": CLASSIFICATION.lr_for("lora")}},
        **({"data": own.key()} if own else {}),
        "datasets": datasets,
        "seeds": seeds,
        "lm": "all-MiniLM-L6-v2 served by exotune serve --level black in its own process (loopback)",
        "lm_server_peak_memory_mb": server_peak,
        "records": _records(runs),
        "latency": latency,
        "ssm_selection": selection,
        "test_curves": curves,
        "regions": {
            f"{r['dataset']}, {r['setting']}": r["regions"] for r in runs if r.get("regions") and r["seed"] == seeds[0]
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ea.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "ea.md").write_text(markdown(doc))
    plot(doc, out_dir)
    print((out_dir / "ea.md").read_text())
    return 0


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def markdown(doc: dict) -> str:
    seeds = doc.get("seeds", [])
    lines = [
        f"# ea\n\n`{doc['command']}`\n",
        f"{doc['date']}, {doc['machine']}. LM: {doc['lm']}. Mean ± std over seeds {', '.join(map(str, seeds))}.\n",
    ]
    by: dict[str, dict] = {}
    for r in doc["records"]:
        by.setdefault(r["dataset"], {}).setdefault((r["method"], r["variant"]), {})[r["metric"]] = r
    for dataset, rows in by.items():
        first = next(iter(rows.values()))["accuracy"]
        lines += [
            f"## {dataset}",
            "",
            f"train {first.get('n_train')}, validation {first.get('n_val')}, "
            f"test {first.get('n_test')} examples; the LM's label template {first.get('label_template')!r}.",
            "",
            "| method | variant | accuracy | macro-F1 | LM-call share | train s | peak MB (user process, training) "
            "| peak MB (with test evaluation) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for (method, variant), m in rows.items():
            a, f = m["accuracy"], m["macro_f1"]
            lines.append(
                f"| {method} | {variant} | {a['mean']:.4f} ± {a['std']:.4f} | {f['mean']:.4f} | "
                f"{_fmt(a.get('lm_call_share'), '.2f')} | {_fmt(a.get('train_seconds'), '.0f')} | "
                f"{_fmt(a.get('peak_memory_mb'), '.0f')} | {_fmt(a.get('peak_memory_mb_with_eval'), '.0f')} |"
            )
        if not any(method == "lora" for method, _ in rows):
            lines.append("| lora | r=8 | missing: no logged run under this budget | | | | | |")
        lines.append("")
    lines += [
        "EA's training memory is the user process's peak when `fit` returns (probe, small models, "
        "router); the last column adds evaluating every policy on the test split. LoRA's is its process's "
        "peak, evaluation included (below its training peak). The linear probe: logistic regression on the "
        "box's raw outputs, C chosen on validation (the classification suite's)."
    ]
    if doc.get("ssm_selection"):
        lines += [
            "",
            "## SSMs kept (chosen out of fold, checked on validation)",
            "",
            "| run | SSM | out-of-fold acc. | validation acc. | kept | why |",
            "|---|---|---|---|---|---|",
        ]
        for run, table in doc["ssm_selection"].items():
            for row in table:
                lines.append(
                    f"| {run} | {row['name']} | {row['oof_accuracy']:.4f} | "
                    f"{_fmt(row.get('val_accuracy'), '.4f')} | {'yes' if row['kept'] else ''} | {row['why']} |"
                )
    lines += ea_latency.markdown(doc.get("latency", []))
    return "\n".join(lines) + "\n"


def plot(doc: dict, out_dir: Path) -> None:
    """Cost-quality per dataset: accuracy against the share of inputs sent to the LM."""
    plt = pyplot()
    if plt is None:
        return
    datasets = list(dict.fromkeys(r["dataset"] for r in doc["records"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    curves = doc.get("test_curves") or {}
    for ax, dataset in zip(axes[0], datasets, strict=True):
        acc = [r for r in doc["records"] if r["metric"] == "accuracy" and r["dataset"] == dataset]
        for (setting, marker), colour in zip(
            (("label-only", "o"), ("embeddings", "s")), ("tab:blue", "tab:orange"), strict=True
        ):
            # the whole trade-off: the router's least confident inputs sent to the LM, share by share
            curve = next((c for name, c in curves.items() if name.startswith(f"{dataset}: {setting}, ssm-first")), None)
            if curve:
                ax.plot(
                    [p["share"] for p in curve],
                    [p["accuracy"] for p in curve],
                    "-",
                    color=colour,
                    alpha=0.7,
                    label=f"EA, forced LM share ({setting}, first seed)",
                )
            pts = sorted(
                (r["lm_call_share"], r["mean"])
                for r in acc
                if r["method"] == "ea" and r["variant"].startswith(f"{setting}, ssm-first")
            )
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    marker,
                    color=colour,
                    markersize=8,
                    label=f"EA ssm-first, budgets chosen on validation ({setting})",
                )
            for r in acc:
                if r["method"] == "lm" and r["variant"] == setting:
                    ax.axhline(r["mean"], ls="--", color="gray", alpha=0.6)
        for r in acc:
            if r["method"] in ("lora", "linear-probe"):
                ax.axhline(
                    r["mean"],
                    ls=":" if r["method"] == "lora" else "-.",
                    color="black",
                    label="LoRA (white-box)" if r["method"] == "lora" else "linear probe (raw box outputs)",
                )
        ax.set_xlabel("share of test inputs sent to the LM (cost); dashed: the LM alone")
        ax.set_ylabel(f"accuracy, {dataset} test")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "ea_cost_quality.png", dpi=110)
    plt.close(fig)

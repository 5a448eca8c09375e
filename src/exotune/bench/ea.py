"""EA suite: Easy Adaptation around MiniLM served at level ``black``, against LoRA.

The LM is ``exotune serve --level black`` in its own process, as an API would be: the
user's process pays neither its memory nor its weights. Two settings, as in the issue:
``label-only`` (the LM answers with a label, zero-shot by similarity to the label names)
and ``embeddings`` (it returns embeddings, which the SSMs may read). Each setting is fitted
once in a fresh process (probe included in its training seconds); the budgets are then
chosen again on validation (``EasyAdapter.recalibrate``), which is all a budget changes.
Test is touched only to report.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from exotune.bench.common import RESULTS_DIR, command_line, machine, peak_memory_mb, run_isolated
from exotune.bench.sources import splits, user_data
from exotune.defaults import CLASSIFICATION
from exotune.plotting import pyplot

SETTINGS = {
    # setting: (what the served box returns, the SSMs)
    "label-only": ("labels", ("tfidf-lr",)),
    "embeddings": ("embeddings", ("tfidf-lr", "embedding-lr")),
}
DATASET = "banking77"  # without --file


@dataclass
class Budget:
    val_fraction: float = 0.1
    budgets: tuple[float, ...] = (0.1, 0.3, 0.5, 1.0)
    policies: tuple[str, ...] = ("ssm-first", "lm-first")
    n_clusters: int = 8
    cv_folds: int = 3  # every row still gets an out-of-fold prediction; 3 fits per pass, not 5
    max_train: int | None = None
    max_val: int | None = None
    max_test: int | None = None
    # the classification suite's LoRA budget (exotune.defaults)
    lora: dict = field(default_factory=lambda: {"epochs": CLASSIFICATION.epochs,
                                                "method_lr": {"lora": CLASSIFICATION.lr_for("lora")}})


def _data(source, budget: Budget, seed: int):
    """(train, validation, test): Banking77 under the data root ``source``, or the user's
    ``UserFiles``; then the budget's samples."""
    from exotune.data import load_dataset

    def known(root):
        return load_dataset(DATASET, "train", root), None, load_dataset(DATASET, "test", root)

    train, val, test = splits(source, budget.val_fraction, seed, known)
    if budget.max_train:
        train = train.head(budget.max_train, seed)
    if budget.max_val:
        val = val.head(budget.max_val, seed)
    if budget.max_test:
        test = test.head(budget.max_test, 0)
    return train, val, test


def ea_run(setting: str, url: str, token: str, seed: int, source, budget: Budget, dataset: str = "banking77") -> list[dict]:
    """Fit EA for one setting (a cold cache: the probe is paid and timed), then report every
    policy and budget; LM alone and SSM alone come from the same evaluation."""
    from exotune.ea import EasyAdapter, ResponseCache, ServedBoxClient
    from exotune.ea.report import evaluation

    returns, ssms = SETTINGS[setting]
    train, val, test = _data(source, budget, seed)
    base = {"dataset": dataset, "split": "test", "access": "black", "seed": seed, "n_train": len(train),
            "n_val": len(val), "n_test": len(test), "lm": "all-MiniLM-L6-v2 served at level black"}
    with tempfile.TemporaryDirectory() as tmp:
        lm = ServedBoxClient(url, token, returns=returns, cache=ResponseCache(Path(tmp) / "cache.sqlite"))
        t0 = time.perf_counter()
        model = EasyAdapter(lm=lm, ssms=ssms, n_clusters=budget.n_clusters, cv_folds=budget.cv_folds,
                            policy="ssm-first", budget=1.0, random_state=seed).fit(train, val)
        fit_seconds = time.perf_counter() - t0
        fit_peak = peak_memory_mb()  # training memory: before the test evaluation below
        probe = model.ledgers_["probe"].to_dict()
        out, alone = [], None
        for policy in budget.policies:
            for share in budget.budgets if policy == "ssm-first" else (1.0,):
                model.recalibrate(share, policy)
                report = evaluation(model, test, compare=True)
                if alone is None:
                    alone = report
                out.append({**base, "method": "ea", "variant": f"{setting}, {policy}, budget={share:g}",
                            "setting": setting, "policy": policy, "budget": share,
                            "metrics": report["ea"], "lm_call_share": report["lm_call_share"],
                            "lm_answer_share": report["lm_answer_share"],
                            "val_accuracy": model.val_accuracy_, "curve": report.get("curve"),
                            "seconds_per_input": report["seconds_per_input"]})
        eval_peak = peak_memory_mb()  # after every policy's test evaluation
        for r in out:
            r.update(train_seconds=fit_seconds, probe_seconds=probe["seconds"], probe_calls=probe["calls"],
                     trainable_params=None, seconds_per_step=None, peak_memory_mb=fit_peak,
                     peak_memory_mb_with_eval=eval_peak)
        out.append({**base, "method": "lm", "variant": setting, "setting": setting, "metrics": alone["lm"],
                    "train_seconds": 0.0, "trainable_params": 0, "seconds_per_step": None, "lm_call_share": 1.0,
                    "peak_memory_mb": None})
        out.append({**base, "method": "ssm", "variant": f"{setting}: {'+'.join(ssms)}", "setting": setting,
                    "metrics": alone["ssm"], "train_seconds": fit_seconds, "trainable_params": None,
                    "seconds_per_step": None, "lm_call_share": 0.0, "peak_memory_mb": fit_peak,
                    "regions": alone["regions"]})
    return out


def _lora_budget(budget: Budget):
    from exotune.bench import classification

    return classification.Budget(**budget.lora, max_train=budget.max_train, max_val=budget.max_val,
                                 max_test=budget.max_test)


def lora_run(seed: int, source, budget: Budget, backbone, dataset: str = "banking77") -> dict:
    from exotune.bench import classification

    return classification.run_one("lora", dataset, seed, source, _lora_budget(budget), backbone)


def logged_lora(seed: int, budget: Budget, backbone, log_path: Path) -> dict | None:
    """The classification suite's LoRA run on Banking77 with this seed and the same LoRA budget
    (epochs, batch, LoRA learning rate, split and samples), if its run log holds one: the
    same run, not paid twice. The DGA learning rate and other methods' do not matter here."""
    from exotune.bench.common import RunLog

    if not log_path.is_file():
        return None
    want = _lora_budget(budget).for_dataset("banking77")

    def relevant(b: dict) -> dict:
        return {**{k: v for k, v in b.items() if k not in ("lr", "method_lr", "probe_cs")},
                "lora_lr": b.get("method_lr", {}).get("lora")}

    for key, run in RunLog(log_path).matching(dataset="banking77", method="lora", seed=seed, quick=False,
                                              backbone=backbone or "all-MiniLM-L6-v2"):
        if relevant(key["budget"]) == relevant(want):
            return run
    return None


def _record(run: dict, metric: str) -> dict:
    rec = {k: v for k, v in run.items() if k not in ("metrics", "seed", "curve", "regions")}
    value = run["metrics"][metric]
    return {**rec, "metric": metric, "mean": value, "std": 0.0, "seeds": [run["seed"]], "values": [value]}


def run(args) -> int:
    from exotune.bench.common import process_peak_mb
    from exotune.bench.served import served_box

    own = user_data(args)  # the user's files, else Banking77
    source, dataset = (own, own.name) if own else (args.data_dir, DATASET)

    budget = Budget(max_train=args.max_train)
    if args.quick:
        budget = Budget(max_train=600, max_val=200, max_test=300, budgets=(0.3, 1.0), cv_folds=3,
                        n_clusters=4, lora={"epochs": 1, "method_lr": {"lora": CLASSIFICATION.lr_for("lora")}})
    if "lora" in dict(args.lr):
        budget.lora["method_lr"] = {"lora": dict(args.lr)["lora"]}
    seed = args.seeds[0]
    out_dir = Path(args.out_dir) if args.out_dir else Path("benchmarks/results") / ("quick" if args.quick else "")
    runs: list[dict] = []
    with served_box(args.backbone, level="black") as server:
        for setting in SETTINGS:
            print(f"[bench] EA, {setting} ...", file=sys.stderr, flush=True)
            runs += run_isolated(ea_run, setting, server.url, server.token, seed, source, budget, dataset)
        server_peak = process_peak_mb(server.proc.pid)
    lora = None if args.quick or own else logged_lora(seed, budget, args.backbone, RESULTS_DIR / ".classification.runs.jsonl")
    if lora is None:
        print("[bench] LoRA ...", file=sys.stderr, flush=True)
        lora = run_isolated(lora_run, seed, source, budget, args.backbone, dataset)
    else:
        print("[bench] LoRA: the classification suite's run with this budget, reused", file=sys.stderr)
    runs.append({k: v for k, v in lora.items() if k != "command"})
    for r in runs:
        print(f"[bench]   {r['method']:4} {r['variant']:40} accuracy {r['metrics']['accuracy']:.4f}", file=sys.stderr)
    records = [_record(r, m) for r in runs for m in ("accuracy", "macro_f1")]
    curves = {r["variant"]: r["curve"] for r in runs if r.get("curve")}
    regions = {r["setting"]: r["regions"] for r in runs if r.get("regions")}
    doc = {"suite": "ea", "command": command_line(), "date": time.strftime("%Y-%m-%d"), "machine": machine(),
           "backbone": args.backbone or "all-MiniLM-L6-v2", "budget": asdict(budget), "quick": args.quick,
           "defaults": {"lora": {"epochs": CLASSIFICATION.epochs, "lr": CLASSIFICATION.lr_for("lora")}},
           **({"data": own.key()} if own else {}),
           "lm": "all-MiniLM-L6-v2 served by exotune serve --level black in its own process (loopback)",
           "lm_server_peak_memory_mb": server_peak, "records": records, "test_curves": curves,
           "regions": regions}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ea.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "ea.md").write_text(markdown(doc))
    plot(doc, out_dir)
    print((out_dir / "ea.md").read_text())
    return 0


def markdown(doc: dict) -> str:
    lines = [f"# ea\n\n`{doc['command']}`\n", f"{doc['date']}, {doc['machine']}. LM: {doc['lm']}.\n",
             "| method | variant | accuracy | macro-F1 | LM-call share | train s | peak MB (user process, training) "
             "| peak MB (with test evaluation) |",
             "|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in doc["records"]:
        by.setdefault((r["method"], r["variant"]), {})[r["metric"]] = r
    for (method, variant), m in by.items():
        a, f = m["accuracy"], m["macro_f1"]
        share = a.get("lm_call_share")
        lines.append(f"| {method} | {variant} | {a['mean']:.4f} | {f['mean']:.4f} | "
                     f"{'' if share is None else f'{share:.2f}'} | {a['train_seconds']:.0f} | "
                     f"{'' if a.get('peak_memory_mb') is None else format(a['peak_memory_mb'], '.0f')} | "
                     f"{'' if a.get('peak_memory_mb_with_eval') is None else format(a['peak_memory_mb_with_eval'], '.0f')} |")
    lines += ["", "EA's training memory is the user process's peak when `fit` returns (probe, small models, "
              "router); the last column adds evaluating every policy on the test split. LoRA's is its process's "
              "peak, evaluation included (below its training peak)."]
    return "\n".join(lines) + "\n"


def plot(doc: dict, out_dir: Path) -> None:
    """Cost-quality: accuracy against the share of inputs sent to the LM, per setting."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    acc = [r for r in doc["records"] if r["metric"] == "accuracy"]
    curves = doc.get("test_curves") or {}
    for (setting, marker), colour in zip((("label-only", "o"), ("embeddings", "s")), ("tab:blue", "tab:orange"),
                                         strict=True):
        # the whole trade-off: the router's least confident inputs sent to the LM, share by share
        curve = next((c for name, c in curves.items() if name.startswith(f"{setting}, ssm-first")), None)
        if curve:
            ax.plot([p["share"] for p in curve], [p["accuracy"] for p in curve], "-", color=colour, alpha=0.7,
                    label=f"EA, forced LM share ({setting})")
        pts = sorted((r["lm_call_share"], r["mean"]) for r in acc
                     if r["method"] == "ea" and r.get("setting") == setting and r.get("policy") == "ssm-first")
        if pts:
            ax.plot(*zip(*pts, strict=True), marker, color=colour, markersize=8,
                    label=f"EA ssm-first, budgets chosen on validation ({setting})")
        for r in acc:
            if r["method"] == "lm" and r.get("setting") == setting:
                ax.axhline(r["mean"], ls="--", color="gray", alpha=0.6)
    for r in acc:
        if r["method"] == "lora":
            ax.axhline(r["mean"], ls=":", color="black", label="LoRA (white-box)")
    ax.set_xlabel("share of test inputs sent to the LM (cost); dashed: the LM alone")
    ax.set_ylabel(f"accuracy, {doc['records'][0]['dataset'] if doc['records'] else ''} test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "ea_cost_quality.png", dpi=110)
    plt.close(fig)

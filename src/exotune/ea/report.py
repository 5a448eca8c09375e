"""Evaluation and the report: metrics of LM alone, SSM alone and EA; the cost-quality curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from exotune.plotting import pyplot
from exotune.tasks.metrics import classification_metrics


def evaluation(model, data, compare: bool = True, classes: list[int] | None = None) -> dict:
    """``data``'s labels numbered as the model's; metrics over ``classes`` (default: all)."""
    y = np.asarray(data.labels)
    c = len(model.label_names_)
    r = model.route(data.texts, ask_all=compare)
    out = {
        "n": len(y),
        "ea": classification_metrics(y, r.labels, c, classes),
        "ssm": classification_metrics(y, r.ssm_labels, c, classes),
        "lm_call_share": float(r.asked_lm.mean()),
        "lm_answer_share": float(r.used_lm.mean()),
        "policy": model.policy,
        "budget": model.budget,
        "seconds": r.seconds,
        "seconds_per_input": r.seconds / max(len(y), 1),
        "ledger": r.ledger.to_dict(),
    }
    if compare:
        out["lm"] = classification_metrics(y, r.lm_labels, c, classes)
        out["lm_unparseable_share"] = float((r.lm_labels < 0).mean())
        calls = max(r.ledger.calls + r.ledger.cache_hits, 1)
        cost_per_call = r.ledger.cost / calls
        # the curve asks nothing new: every input's LM answer is known here
        out["curve"] = _curve(model, data.texts, y, r, cost_per_call)
    out["regions"] = model.regions_.table_
    out["ssm_selection"] = getattr(model, "ssm_selection_", None)  # which SSMs were kept, and why
    return out


def _curve(model, texts, y, r, cost_per_call) -> list[dict]:
    from exotune.ea.inputs import make_views
    from exotune.ea.router import full_features, gate_features

    if model.needs_embeddings():
        return []  # embedding SSMs: the curve would need the embeddings again; see the val curve
    clusters = model.regions_.assign(texts)
    P = model.system_proba(model.ssms_system_, make_views(texts, None), clusters)
    acc = model.regions_.lm_accuracy(P.argmax(1), clusters)
    G, F = gate_features(P, acc), full_features(P, acc, r.lm_labels)
    curve = model.router_.curve(G, F, P.argmax(1) == y, r.lm_labels == y)
    for point in curve:
        point["cost"] = point["share"] * len(y) * cost_per_call
    return curve


def markdown(report: dict) -> str:
    lines = ["| system | accuracy | macro-F1 |", "|---|---|---|"]
    for key in ("lm", "ssm", "ea"):
        if key in report:
            lines.append(f"| {key.upper()} | {report[key]['accuracy']:.4f} | {report[key]['macro_f1']:.4f} |")
    lines += [
        "",
        f"LM-call share {report['lm_call_share']:.3f} (policy {report['policy']}, budget "
        f"{report['budget']}); cost {report['ledger']['cost']:.4f}; "
        f"{1000 * report['seconds_per_input']:.1f} ms per input",
        "",
        "| region | n | LM acc | LM 95% CI | SSM cv acc | underfit |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["regions"]:
        lines.append(
            f"| {row['kind']}: {row['name']} | {row['n']} | {row['lm_accuracy']:.3f} | "
            f"[{row['lm_low']:.3f}, {row['lm_high']:.3f}] | {row['ssm_cv_accuracy']:.3f} | "
            f"{'yes' if row['underfit'] else ''} |"
        )
    if report.get("ssm_selection"):
        lines += ["", "| SSM | out-of-fold acc. | validation acc. | kept | why |", "|---|---|---|---|---|"]
        for row in report["ssm_selection"]:
            val = row.get("val_accuracy")
            lines.append(
                f"| {row['name']} | {row['oof_accuracy']:.4f} | {'' if val is None else f'{val:.4f}'} | "
                f"{'yes' if row['kept'] else ''} | {row['why']} |"
            )
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    if report.get("curve"):
        plot_curve(report, out / "cost_quality.png")
    return out


def plot_curve(report: dict, path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs = [p["share"] for p in report["curve"]]
    ax.plot(xs, [p["accuracy"] for p in report["curve"]], "o-", ms=3, label="EA")
    for key, style in (("lm", "--"), ("ssm", ":")):
        if key in report:
            ax.axhline(report[key]["accuracy"], ls=style, color="gray", label=f"{key.upper()} alone")
    ax.axvline(report["lm_call_share"], color="red", alpha=0.4, label="chosen budget")
    ax.set_xlabel("share of inputs sent to the LM (cost)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Latency at inference, one input at a time: EA, the LM alone and LoRA served locally.

Each system answers ``n`` test inputs one by one (a batch of 1, as a user's request would come),
after a few warm-up calls; the LM client has no response cache, so every call EA or the LM makes
reaches the served box. Reported: p50 and p99 milliseconds per input, the share of inputs EA
routed to the LM, and the share that called the box at all (embedding SSMs call it for every
input, for the embedding).
"""

from __future__ import annotations

import time

import numpy as np

WARMUP = 5


def summary(seconds: list[float]) -> dict:
    ms = 1000 * np.asarray(seconds)
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "n": len(ms),
    }


def _timed(fn, texts: list[str]) -> tuple[list[float], list]:
    for t in texts[:WARMUP]:
        fn(t)
    seconds, outs = [], []
    for t in texts:
        t0 = time.perf_counter()
        outs.append(fn(t))
        seconds.append(time.perf_counter() - t0)
    return seconds, outs


def ea_latency(model, client, texts: list[str], points, base: dict) -> list[dict]:
    """EA at each (policy, budget) of ``points``, and the LM alone, with ``client`` (uncached)."""
    from exotune.ea import Ledger

    model.lm = client
    rows = []
    for policy, share in points:
        model.recalibrate(share, policy)
        seconds, routes = _timed(lambda t: model.route([t]), texts)
        rows.append(
            {
                **base,
                "system": "ea",
                "variant": f"{base['setting']}, {policy}, budget={share:g}",
                **summary(seconds),
                "lm_call_share": float(np.mean([r.asked_lm[0] for r in routes])),
                "box_call_share": float(np.mean([r.ledger.calls > 0 for r in routes])),
            }
        )
    label_names = model.label_names_
    seconds, _ = _timed(lambda t: client.run([t], label_names, Ledger()), texts)
    rows.append(
        {
            **base,
            "system": "lm",
            "variant": base["setting"],
            **summary(seconds),
            "lm_call_share": 1.0,
            "box_call_share": 1.0,
        }
    )
    return rows


def lora_latency(dataset: str, texts: list[str], label_names: list[str], label_template: str, backbone) -> dict:
    """LoRA (r=8) in this process, one input at a time. Its weights are fresh, not trained: the
    latency of a forward pass does not depend on their values. Meant for a fresh process."""
    import torch

    from exotune.tasks.classification import ClassificationConfig
    from exotune.whitebox import WhiteBoxClassifier, WhiteBoxConfig

    model = WhiteBoxClassifier.from_backbone(
        backbone, label_names, WhiteBoxConfig.lora(r=8), ClassificationConfig(label_template=label_template)
    )
    model.eval()
    with torch.no_grad():
        seconds, _ = _timed(lambda t: model.predict_proba([t]), texts)
    return {
        "dataset": dataset,
        "setting": "white-box",
        "system": "lora",
        "variant": "r=8, served locally",
        **summary(seconds),
        "lm_call_share": 0.0,
        "box_call_share": 0.0,
        "threads": torch.get_num_threads(),
    }


def markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## Latency per input (batch of 1)",
        "",
        f"{rows[0]['n']} test inputs per system, one at a time, first seed; the LM uncached, over loopback. "
        "LM-call share: inputs EA routed to the LM; box-call share: inputs that called the served box at all.",
        "",
        "| dataset | system | variant | p50 ms | p99 ms | LM-call share | box-call share |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['system']} | {r['variant']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['lm_call_share']:.2f} | {r['box_call_share']:.2f} |"
        )
    return lines

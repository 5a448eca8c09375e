"""Which SSMs EA keeps: chosen out of fold on train, checked on validation.

Every candidate is scored alone on out-of-fold predictions (rows it never saw the label of, as
the router learns from). The ensemble (the mean of the kept SSMs' probabilities) starts from the
best single candidate and takes the next one only while that raises the out-of-fold accuracy.
Validation then has the last word: should a single candidate, fitted on all of train, beat the
chosen ensemble there, EA falls back to it, so that its validation score is never below the best
single SSM's (the router can always keep the SSM's answer).
"""

from __future__ import annotations

import numpy as np

from exotune.errors import ArtifactError


def accuracy(P: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(P).argmax(1) == np.asarray(y)).mean()) if len(y) else float("nan")


def choose_ssms(names: list[str], oofs: list[np.ndarray], y) -> tuple[list[int], list[dict]]:
    """Forward selection over out-of-fold probabilities ``oofs`` (one (N, C) per candidate):
    the indices kept (in the order taken) and one record per candidate saying why."""
    y = np.asarray(y)
    alone = [accuracy(P, y) for P in oofs]
    order = sorted(range(len(oofs)), key=lambda i: (-alone[i], i))
    kept = [order[0]]
    total = oofs[order[0]].astype(np.float64)
    best = alone[order[0]]
    why = {order[0]: "best out-of-fold accuracy alone"}
    for i in order[1:]:
        with_it = accuracy(total + oofs[i], y)  # the mean's argmax: the sum's
        if with_it > best + 1e-12:
            why[i] = f"raised the ensemble's out-of-fold accuracy {best:.4f} -> {with_it:.4f}"
            kept.append(i)
            total += oofs[i]
            best = with_it
        else:
            why[i] = f"not kept: the ensemble with it {with_it:.4f}, without {best:.4f} (out of fold)"
    table = [{"name": names[i], "oof_accuracy": alone[i], "kept": i in kept, "why": why[i]} for i in range(len(oofs))]
    return kept, table


def fallback(table: list[dict], val_scores: list[float], ensemble_val: float) -> int | None:
    """The candidate to fall back to when one alone beats the chosen ensemble on validation
    (else None); ``table`` (from :func:`choose_ssms`) gets every candidate's validation score
    and, on a fall back, the new reasons."""
    for row, v in zip(table, val_scores, strict=True):
        row["val_accuracy"] = float(v)
    b = int(np.argmax(val_scores))
    if not val_scores[b] > ensemble_val + 1e-12:
        return None
    for i, row in enumerate(table):
        if i == b:
            row["why"] = (
                f"fallback: alone it beats the chosen ensemble on validation ({val_scores[b]:.4f} > {ensemble_val:.4f})"
            )
        elif row["kept"]:
            row["why"] = (
                f"dropped on validation: {table[b]['name']} alone scores {val_scores[b]:.4f} above the ensemble"
            )
        row["kept"] = i == b
    return b


def check_selection(rows, file) -> list[dict] | None:
    """A saved selection table as :func:`choose_ssms` writes it (or None), else a clear error."""
    if rows is None:
        return None
    fields = {"name": str, "oof_accuracy": (int, float), "kept": bool, "why": str}
    ok = isinstance(rows, list) and all(
        isinstance(r, dict)
        and all(isinstance(r.get(k), t) for k, t in fields.items())
        and isinstance(r.get("val_accuracy", 0.0), (int, float))
        for r in rows
    )
    if not ok:
        raise ArtifactError(
            f"{file}: ssm_selection must be a list of rows with name, oof_accuracy, kept and why, got {rows!r:.80}"
        )
    return rows

"""Classification and retrieval metrics."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import f1_score

from exotune.errors import DataError


def classification_metrics(y_true, y_pred, num_classes: int) -> dict[str, float]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "macro_f1": float(
            f1_score(y_true, y_pred, average="macro", labels=list(range(num_classes)), zero_division=0)
        ),
    }


# -- retrieval ------------------------------------------------------------------------------

RETRIEVAL_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


def ndcg_at_k(ranking: list[str], qrels: dict[str, int], k: int) -> float:
    """nDCG@k with the qrels grade as gain (linear, as trec_eval / BEIR): DCG / ideal DCG."""
    dcg = sum(qrels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranking: list[str], qrels: dict[str, int], k: int) -> float:
    """Share of the relevant documents (grade > 0) found in the top ``k``."""
    relevant = {d for d, g in qrels.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def mrr_at_k(ranking: list[str], qrels: dict[str, int], k: int) -> float:
    """Reciprocal rank of the first relevant document in the top ``k`` (0 if none)."""
    return next((1.0 / (i + 1) for i, d in enumerate(ranking[:k]) if qrels.get(d, 0) > 0), 0.0)


def retrieval_metrics(rankings: list[list[str]], qrels: list[dict[str, int]]) -> dict[str, float]:
    """Mean over queries of nDCG@10, Recall@10, Recall@100 and MRR@10 (BEIR's definitions)."""
    if len(rankings) != len(qrels):
        raise DataError(f"{len(rankings)} rankings but {len(qrels)} qrels")
    if not rankings:
        return dict.fromkeys(RETRIEVAL_METRICS, float("nan"))
    per_query = {
        "ndcg@10": [ndcg_at_k(r, q, 10) for r, q in zip(rankings, qrels, strict=True)],
        "recall@10": [recall_at_k(r, q, 10) for r, q in zip(rankings, qrels, strict=True)],
        "recall@100": [recall_at_k(r, q, 100) for r, q in zip(rankings, qrels, strict=True)],
        "mrr@10": [mrr_at_k(r, q, 10) for r, q in zip(rankings, qrels, strict=True)],
    }
    return {name: float(np.mean(values)) for name, values in per_query.items()}

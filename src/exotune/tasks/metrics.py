"""Classification and retrieval metrics."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import f1_score

from exotune.errors import DataError

SKETCH_METRICS = ("map@all", "precision@100", "acc@1")  # sketch-to-photo retrieval's (Sketchy's protocol)

if TYPE_CHECKING:  # torch only where tensors come in: EA's metrics run without it
    import torch


def classification_metrics(y_true, y_pred, num_classes: int, classes: list[int] | None = None) -> dict[str, float]:
    """Accuracy and macro-F1 over ``classes`` (default: all ``num_classes``; a file holding a
    subset of a model's classes is scored over its own)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    labels = sorted(classes) if classes is not None else list(range(num_classes))
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)),
    }


def class_report(
    y_true, y_pred, label_names: list[str], classes: list[int] | None = None
) -> tuple[list[dict], np.ndarray]:
    """Per class of ``classes`` (default: all): precision, recall, F1 and support; and the
    confusion matrix (C, C) over all ``label_names``, rows true, columns predicted."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    n = len(label_names)
    labels = sorted(classes) if classes is not None else list(range(n))
    if len(y_true) == 0:
        raise DataError("a class report needs at least one example")
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    rows = [
        {"label": label_names[c], "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    ]
    return rows, confusion_matrix(y_true, y_pred, labels=list(range(n)))


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


# -- image-text retrieval -------------------------------------------------------------------

RECALL_KS = (1, 5, 10)
IMAGE_TEXT_METRICS = (*(f"{d}_recall@{k}" for d in ("t2i", "i2t") for k in RECALL_KS), "mean_recall")
_CHUNK = 1024  # rows of the similarity matrix held at once


def image_text_recalls(texts: torch.Tensor, images: torch.Tensor, caption_image: list[int]) -> dict[str, float]:
    """Recall@1/5/10 both ways, from L2-normalised caption (N, O) and image (M, O) embeddings.

    Text to image: is the caption's image among its top k images. Image to text (the COCO /
    Flickr30K protocol): is any of the image's captions among its top k captions; images
    without a caption are left out of that direction. ``mean_recall``: the mean of the six.
    """
    if not len(texts) and len(caption_image) == 0:
        return dict.fromkeys(IMAGE_TEXT_METRICS, float("nan"))
    out = _recalls(*text_item_ranks(texts, images, caption_image), ("t2i", "i2t"))
    out["mean_recall"] = float(np.mean(list(out.values())))
    return out


VIDEO_TEXT_METRICS = (
    *(f"{d}_recall@{k}" for d in ("t2v", "v2t") for k in RECALL_KS),
    *(f"{d}_{s}_rank" for d in ("t2v", "v2t") for s in ("median", "mean")),
    "mean_recall",
)


def video_text_metrics(texts: torch.Tensor, videos: torch.Tensor, caption_video: list[int]) -> dict[str, float]:
    """Text-video retrieval as video papers report it: Recall@1/5/10, median and mean rank (1 =
    first), text to video and video to text (a video's best-ranked caption), and ``mean_recall``."""
    if not len(texts) and len(caption_video) == 0:
        return dict.fromkeys(VIDEO_TEXT_METRICS, float("nan"))
    ranks = text_item_ranks(texts, videos, caption_video)
    out = _recalls(*ranks, ("t2v", "v2t"))
    recalls = list(out.values())
    for direction, r in zip(("t2v", "v2t"), ranks, strict=True):
        one_based = r.double() + 1
        out[f"{direction}_median_rank"] = float(one_based.median()) if len(r) else float("nan")
        out[f"{direction}_mean_rank"] = float(one_based.mean()) if len(r) else float("nan")
    out["mean_recall"] = float(np.mean(recalls))
    return out


def _recalls(forward, backward, names: tuple[str, str]) -> dict[str, float]:
    out = {}
    for direction, ranks in zip(names, (forward, backward), strict=True):
        for k in RECALL_KS:
            out[f"{direction}_recall@{k}"] = float((ranks < k).float().mean()) if len(ranks) else float("nan")
    return out


def text_item_ranks(texts: torch.Tensor, items: torch.Tensor, caption_item: list[int]):
    """0-based ranks (N,) of each caption's item among all items, and (M',) of each item's best
    caption among all captions (items without a caption left out): how many candidates score
    strictly higher than the best true one. Embeddings L2-normalised, (N, O) and (M, O)."""
    if len(texts) != len(caption_item):
        raise DataError(f"{len(texts)} caption embeddings but {len(caption_item)} caption links")
    import torch

    target = torch.as_tensor(caption_item)
    t2i = []
    for chunk, t in zip(texts.split(_CHUNK), target.split(_CHUNK), strict=True):
        scores = chunk @ items.T  # (n, M)
        t2i.append((scores > scores.gather(1, t.unsqueeze(1))).sum(1))
    i2t = []
    for start in range(0, len(items), _CHUNK):
        scores = items[start : start + _CHUNK] @ texts.T  # (m, N)
        own = target.unsqueeze(0) == torch.arange(start, start + len(scores)).unsqueeze(1)  # (m, N)
        best = scores.masked_fill(~own, float("-inf")).max(1, keepdim=True).values  # (m, 1)
        i2t.append(((scores > best).sum(1))[own.any(1)])
    return torch.cat(t2i), torch.cat(i2t) if i2t else torch.zeros(0, dtype=torch.long)

"""Files the commands write for users: embeddings (.npy, .jsonl, .parquet) and predictions
(.csv, .jsonl), the format chosen by the file's suffix."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from exotune.errors import ConfigError

EMBEDDING_SUFFIXES = (".npy", ".jsonl", ".parquet")
PREDICTION_SUFFIXES = (".csv", ".jsonl")


def _suffix(path: Path, allowed: tuple[str, ...], what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise ConfigError(f"--output {path}: {what} are written as {', '.join(allowed)}; got {suffix or 'no suffix'!r}")
    return suffix


def check_embeddings_output(path: str | Path) -> Path:
    """``path``, refused before anything loads when its format cannot be written here."""
    path = Path(path)
    if _suffix(path, EMBEDDING_SUFFIXES, "embeddings") == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"--output {path}: writing parquet needs pyarrow (pip install pyarrow); or write .npy or .jsonl"
            ) from None
    return path


def write_embeddings(path: str | Path, texts: list[str], vectors: np.ndarray) -> Path:
    """``vectors`` (N, D) as .npy (the array alone, float32), .jsonl (``{"text", "embedding"}``
    per line) or .parquet (columns text and embedding)."""
    path = check_embeddings_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vectors = np.asarray(vectors, dtype=np.float32)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, vectors, allow_pickle=False)
    elif suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for text, row in zip(texts, vectors.tolist(), strict=True):
                f.write(json.dumps({"text": text, "embedding": row}, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": texts, "embedding": vectors.tolist()}), path)
    return path


def check_predictions_output(path: str | Path) -> Path:
    path = Path(path)
    _suffix(path, PREDICTION_SUFFIXES, "predictions")
    return path


def prediction_rows(texts: list[str], label_names: list[str], probs, top_k: int) -> list[dict]:
    """Per text: its label, that label's probability and the ``top_k`` best as [{label, probability}]."""
    k = max(1, min(top_k, len(label_names)))
    rows = []
    for text, p in zip(texts, probs, strict=True):
        top = p.topk(k)
        best = [
            {"label": label_names[i], "probability": round(float(v), 6)}
            for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ]
        rows.append({"text": text, "label": best[0]["label"], "probability": best[0]["probability"], "top_k": best})
    return rows


def write_predictions(path: str | Path, rows: list[dict]) -> Path:
    """``rows`` as .jsonl (one object a line) or .csv (``top_k`` as a JSON list in its cell)."""
    path = check_predictions_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label", "probability", "top_k"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "top_k": json.dumps(r["top_k"], ensure_ascii=False)})
    return path


REPORT_FILES = ("metrics.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png")


def write_class_report(
    folder: str | Path, metrics: dict, rows: list[dict], matrix: np.ndarray, label_names: list[str]
) -> Path:
    """``metrics.json``, the per-class report (``per_class.csv``) and the confusion matrix
    (``confusion_matrix.csv``, rows true and columns predicted; ``.png`` when matplotlib is
    installed) in ``folder``."""
    from exotune.plotting import pyplot

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with (folder / "per_class.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["label", "precision", "recall", "f1", "support"])
        writer.writeheader()
        writer.writerows(rows)
    with (folder / "confusion_matrix.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *label_names])
        writer.writerows([name, *map(int, row)] for name, row in zip(label_names, matrix, strict=True))
    plt = pyplot()
    if plt is not None:
        n = len(label_names)
        size = min(4 + 0.25 * n, 30)
        fig, ax = plt.subplots(figsize=(size, size))
        ax.imshow(matrix, cmap="Blues")
        ticks = range(n) if n <= 60 else []  # beyond that, names would overlap
        ax.set_xticks(list(ticks), [label_names[i] for i in ticks], rotation=90, fontsize=7)
        ax.set_yticks(list(ticks), [label_names[i] for i in ticks], fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.tight_layout()
        fig.savefig(folder / "confusion_matrix.png", dpi=100)
        plt.close(fig)
    return folder

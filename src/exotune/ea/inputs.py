"""What EasyAdapter's small models read: checked inputs, and row views of them taken without
copies where numpy allows.

A set of *views* maps "text" (a list) and "embedding" (an array or None) to row-aligned inputs,
and, during fit, the i-th global SSM's encoded inputs to key i (see :func:`encode_views`). Each
model takes the rows it needs of its own view only, when it needs them.
"""

from __future__ import annotations

from exotune.data.text import TextLabelData
from exotune.ea.ssm import make_ssm
from exotune.errors import DataError
from exotune.memory import release_memory


def check_data(data, name: str) -> TextLabelData:
    if not isinstance(data, TextLabelData):
        raise DataError(f"{name} must be a TextLabelData, got {type(data).__name__}")
    if len(data) == 0:
        raise DataError(f"{name} is empty")
    check_texts(data.texts, name)
    return data


def check_texts(texts, name: str = "texts") -> list[str]:
    if isinstance(texts, str) or not hasattr(texts, "__len__"):
        raise DataError(f"{name} must be a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{name}[{i}] must be a non-empty string, got {t!r}")
    return texts


def make_views(texts, emb) -> dict:
    return {"text": list(texts), "embedding": emb}


def take_rows(view, rows):
    """Some rows of one view: ``rows`` a slice (numpy: no copy) or integer indices."""
    if isinstance(rows, slice) and rows == slice(None):  # all of them: no copy, sparse matrices included
        return view
    if view is None or isinstance(rows, slice):
        return None if view is None else view[rows]
    return [view[i] for i in rows] if isinstance(view, list) else view[rows]


def view_of(views: dict, i, model):
    """The view global SSM ``i`` (or a specialist of SSM 0) reads, and whether it is encoded."""
    return (views[i], True) if i in views else (views[model.input_kind], False)


def encode_views(specs, views: dict, n_fit: int) -> dict:
    """Fit each global SSM's label-free encoder once, on the first ``n_fit`` rows (training),
    and encode every row into ``views[i]``; returns the fitted encoders by SSM index. The folds'
    SSMs then fit only their heads, on rows of these matrices, instead of refitting TF-IDF
    vocabularies (or scalers) fold after fold. The encoders see held-out folds' inputs, never
    their labels."""
    encoders = {}
    ssms = [make_ssm(spec) for spec in specs]
    reads_embeddings = [i for i, m in enumerate(ssms) if getattr(m, "input_kind", "text") == "embedding"]
    # embeddings first: once encoded, their raw copy can go before the text encoders run
    for i in sorted(range(len(ssms)), key=lambda i: i not in reads_embeddings):
        if not hasattr(ssms[i], "encode"):  # a registered class outside SSMBase: fitted on raw inputs
            continue
        encoder, Z = ssms[i].encode(views[ssms[i].input_kind], n_fit)
        if encoder is not None:
            views[i], encoders[i] = Z, encoder
            if all(j in encoders for j in reads_embeddings):  # (specialists read SSM 0's view)
                views["embedding"] = None
        del Z
        release_memory(collect=False)
    return encoders

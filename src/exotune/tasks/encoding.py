"""``encode(texts)`` of an adapted text encoder, as sentence-transformers users know it:
batches, an optional L2 normalisation, numpy or torch out; one text gives one vector."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from exotune.boxes.base import encode_sorted_in_eval
from exotune.errors import ConfigError, DataError

CONVERT_TO = ("numpy", "torch")


def encode_texts(
    model: nn.Module,
    tower: Callable[[list[str]], torch.Tensor],
    texts: str | list[str],
    *,
    batch_size: int,
    max_batch: int,
    dim: int,
    normalize: bool,
    convert_to: str,
    progress: bool = False,
):
    """``tower`` over ``texts`` with ``model`` in eval mode and no gradients, at most
    ``max_batch`` texts per call: (N, dim) rows in the input order, or (dim,) for one string."""
    if convert_to not in CONVERT_TO:
        raise ConfigError(f"convert_to must be one of {CONVERT_TO}, got {convert_to!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    single = isinstance(texts, str)
    items = [texts] if single else list(texts)
    bad = next((t for t in items if not isinstance(t, str)), None)
    if bad is not None:
        raise DataError(f"encode takes texts (str), got a {type(bad).__name__}: {bad!r:.80}")
    out = encode_sorted_in_eval(model, tower, items, min(batch_size, max_batch), dim, progress)  # (N, dim)
    if normalize:
        out = nn.functional.normalize(out, dim=-1)
    if single:
        out = out[0]
    return out.numpy() if convert_to == "numpy" else out


class TextEncoderMixin:
    """``encode(texts)`` for a task model over a text box: its ``encoding_tower`` (an adapted
    tower, texts -> (B, O)) within the limits of its ``box``."""

    def encode(
        self,
        texts: str | list[str],
        batch_size: int = 32,
        normalize: bool = False,
        convert_to: str = "numpy",
        progress: bool = False,
    ):
        """The ``encoding_tower``'s embeddings of ``texts``: (N, O) as numpy (or torch,
        ``convert_to="torch"``), L2-normalised with ``normalize``; one text: (O,)."""
        return encode_texts(
            self,
            self.encoding_tower,
            texts,
            batch_size=batch_size,
            max_batch=self.box.spec.limits.max_batch,
            dim=self.box.spec.output_dim,
            normalize=normalize,
            convert_to=convert_to,
            progress=progress,
        )

"""Batches of texts of similar length: padding is most of the compute on short texts."""

from __future__ import annotations

import numpy as np
import torch


def length_sorted(texts: list, batch_size: int) -> list[np.ndarray]:
    """Index batches in order of text length (for inference; callers restore the order).
    Items that are not strings (images) count as equally long: they keep their order."""
    order = np.argsort([len(t) if isinstance(t, str) else 0 for t in texts], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def grouped_batches(lengths, batch_size: int, generator: torch.Generator, group: int = 50) -> list[np.ndarray]:
    """Random batches whose members have similar lengths.

    Shuffle, cut into groups of ``group`` batches, sort each group by length, cut it into
    batches, then shuffle the batch order: every example once per epoch, batches still
    random in content and order, but with little padding.
    """
    n = len(lengths)
    order = torch.randperm(n, generator=generator).numpy()
    lengths = np.asarray(lengths)
    batches = []
    span = batch_size * group
    for start in range(0, n, span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]

"""Test doubles for EA: the scripted OpenAI-compatible server and the colour task (they live in
``exotune.ea.testing``, which the reliability drills share), and a BLAS fixture."""

from __future__ import annotations

import pytest

from exotune.ea.testing import COLOURS, FakeOpenAI, colour_of, colour_task, embed

__all__ = ["COLOURS", "FakeOpenAI", "colour_of", "colour_task", "embed", "one_blas_thread"]


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """Small matrices, busy machine: BLAS threads only fight each other (SVD 5 s -> 20 ms)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def write_csv(path, data):
    """``data`` (texts, labels, label names) as a ``text,label`` CSV at ``path``."""
    rows = "".join(f"{t},{data.label_names[y]}\n" for t, y in zip(data.texts, data.labels, strict=True))
    path.write_text("text,label\n" + rows)
    return path


FAST_FIT = ["--clusters", "2", "--cv-folds", "2", "--val-fraction", "0.3"]  # small and quick


def ea_fit(train, lm: list[str], out, *extra: str) -> int:
    """``exotune ea fit`` of the CSV ``train`` with the LM arguments ``lm`` into ``out``, at the
    tests' small settings (``FAST_FIT``); its exit code."""
    from exotune.cli import main

    return main(["ea", "fit", "--file", str(train), *lm, "--output-dir", str(out), *FAST_FIT, *extra])

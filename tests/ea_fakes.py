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

"""The training loop's contract with a model, as a ``typing.Protocol``: what ``Trainer.fit``
calls, and nothing more. Task models satisfy it by shape (no base class needed); most get the
generic half from :class:`exotune.tasks.model.AdapterModelMixin`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Trainable(Protocol):
    """A model ``Trainer.fit`` can train, evaluate, checkpoint and save. ``data`` is any
    collection with ``len`` and ``subset(indices)``; ``state_dict`` holds only the user's
    tensors (the box is never in it)."""

    def trainable_parameters(self) -> list: ...

    def loss(self, data) -> Any:
        """A scalar tensor for one batch of ``data``, differentiable in the trainable tensors."""

    def evaluate(self, data, batch_size: int = 128) -> dict[str, float]:
        """Metrics on ``data``; the training config names the one early stopping follows."""

    def save_pretrained(self, path: str | Path) -> Path: ...

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def to(self, device) -> Any:
        """Move the user's tensors to ``device`` (``Trainer(device=)``; a box stays where it is)."""

"""An exponential moving average of the user's trainable tensors (``TrainConfig.ema``).

Adapters trained from outside a frozen box at the rates they need swing from step to step; the
average of the recent steps is steadier. The trainer keeps the average beside the live tensors,
evaluates and saves with the average in place, and trains on with the live ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from exotune.errors import ArtifactError


class ParameterAverage:
    """``avg = decay * avg + (1 - decay) * p`` after every step, for every trainable tensor of
    ``model`` (by name). The first steps average over fewer steps (``min(decay, (1 + n) / (10 + n))``
    as is usual), so an early evaluation does not read a mostly-initial average."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def _live(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(model.named_parameters())
        return {name: params[name] for name in self.shadow}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in self._live(model).items():
            self.shadow[name].lerp_(p.detach(), 1.0 - decay)

    @contextmanager
    def swapped(self, model: nn.Module) -> Iterator[None]:
        """Inside: ``model`` holds the average (to evaluate or save it); after: its live tensors."""
        live = self._live(model)
        saved = {name: p.detach().clone() for name, p in live.items()}
        with torch.no_grad():
            for name, p in live.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in live.items():
                    p.copy_(saved[name])

    def state_dict(self) -> dict:
        return {"updates": torch.tensor(self.updates), "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict, where: str) -> None:
        shadow = state.get("shadow") if isinstance(state, dict) else None
        updates = state.get("updates") if isinstance(state, dict) else None
        if not isinstance(shadow, dict) or set(shadow) != set(self.shadow) or not isinstance(updates, torch.Tensor):
            raise ArtifactError(f"{where}: the parameter average does not match the model's trainable tensors")
        for name, t in shadow.items():
            mine = self.shadow[name]
            if not isinstance(t, torch.Tensor) or t.shape != mine.shape or not bool(torch.isfinite(t).all()):
                raise ArtifactError(f"{where}: the average of {name} does not fit it")
            mine.copy_(t)
        self.updates = int(updates)

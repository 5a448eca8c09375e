"""The model's own dropout on the calls that train an adapter, at the owner's choice.

A box runs its model in evaluation mode, so none of the model's dropout acts while a user
trains against it (a white-box method, LoRA, trains with it). An owner who allows it lets the
calls that carry gradients (the user's training steps) pass through the model's dropout layers
as in training; every other call (encode, evaluation) is exactly as before. The hooks act only
in the calling thread (``exotune.boxes.hooks``), so other calls running meanwhile are untouched.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from exotune.boxes.hooks import removed_after, this_thread


@contextmanager
def model_dropout(model: nn.Module, active: bool):
    """Within the block, and in this thread only, every dropout layer of ``model`` with p > 0
    drops as in training (``active=False``: nothing changes)."""
    if not active:
        yield
        return

    def hook(module, args, out):
        return nn.functional.dropout(args[0], module.p, training=True)

    drops = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    with removed_after(m.register_forward_hook(this_thread(hook)) for m in drops):
        yield


def trains(*tensors: torch.Tensor) -> bool:
    """Whether a call carries gradients back to the user (a training step): any of its inputs
    asks for them."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)

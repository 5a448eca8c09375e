"""The model's own dropout on the calls that train an adapter, at the owner's choice.

A box runs its model in evaluation mode, so none of the model's dropout acts while a user
trains against it (a white-box method, LoRA, trains with it). An owner who allows it lets the
calls that carry gradients (the user's training steps) pass through the model's dropout layers
as in training; every other call (encode, evaluation) is exactly as before. The hooks act only
in the calling thread, as entry tokens' do, so other calls running meanwhile are untouched.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def model_dropout(model: nn.Module, active: bool):
    """Within the block, and in this thread only, every dropout layer of ``model`` with p > 0
    drops as in training (``active=False``: nothing changes)."""
    if not active:
        yield
        return
    caller = threading.get_ident()

    def hook(module, args, out):
        if threading.get_ident() != caller:
            return None
        return nn.functional.dropout(args[0], module.p, training=True)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def trains(*tensors: torch.Tensor) -> bool:
    """Whether a call carries gradients back to the user (a training step): any of its inputs
    asks for them."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)

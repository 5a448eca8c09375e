"""Entry points of a text-encoder box: where its layers are, and tokens injected at their inputs.

Entry point ``"layer.<i>"`` is the input of transformer layer i. Tokens occupy n reserved
positions right after [CLS]; at each entry layer a forward pre-hook overwrites those positions'
hidden states with that layer's tokens (VPT-deep).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from exotune.boxes.spec import EntryPoint
from exotune.errors import ConfigError

ENTRY_PREFIX = "layer."
# Where BERT-family models in transformers keep their list of transformer layers.
_LAYER_PATHS = ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "layer")


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's transformer layers, found by the usual attribute paths."""
    for path in _LAYER_PATHS:
        node = model
        for attr in path.split("."):
            node = getattr(node, attr, None)
        if isinstance(node, nn.ModuleList) and len(node) > 0:
            return node
    raise ConfigError(
        f"entry_points: cannot find a list of transformer layers in this backbone (looked for "
        f"{', '.join(_LAYER_PATHS)}); it can only be served without entry points (dark-gray)"
    )


def entry_layers(entry_points, n_layers: int) -> tuple[int, ...]:
    """``"all"`` or layer indices -> sorted, checked indices."""
    if entry_points == "all":
        return tuple(range(n_layers))
    if isinstance(entry_points, (str, bytes)) or not isinstance(entry_points, Sequence) or not entry_points:
        raise ConfigError(f"entry_points must be 'all' or a non-empty list of layer indices, got {entry_points!r}")
    bad = [i for i in entry_points if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_layers]
    if bad:
        raise ConfigError(f"entry_points must be layer indices in [0, {n_layers - 1}], got {bad!r}")
    if len(set(entry_points)) != len(entry_points):
        raise ConfigError(f"entry_points lists a layer twice: {list(entry_points)!r}")
    return tuple(sorted(entry_points))


def entry_point_options(entry_points: Sequence[EntryPoint]) -> dict:
    """Constructor options that rebuild a box exposing ``entry_points`` (e.g. from a saved spec)."""
    if not entry_points:
        return {}
    layers, limits = [], {e.max_tokens for e in entry_points}
    for e in entry_points:
        index = e.name[len(ENTRY_PREFIX):]
        if not e.name.startswith(ENTRY_PREFIX) or not index.isdigit():
            raise ConfigError(f"entry point {e.name!r} is not a text-encoder layer ('{ENTRY_PREFIX}<index>')")
        layers.append(int(index))
    if len(limits) != 1:
        raise ConfigError(f"entry points with different max_tokens {sorted(limits)} cannot be rebuilt")
    return {"entry_points": layers, "entry_tokens_max": limits.pop()}


@contextmanager
def inject(layers: Mapping[str, nn.Module], entry_tokens: Mapping[str, torch.Tensor], n: int):
    """Overwrite positions 1..n at the input of each entry layer, for the duration of one call.

    The hooks act only in the calling thread, so a forward that another thread runs on the
    same model meanwhile (a served box) passes through them untouched.
    """
    caller = threading.get_ident()

    def hook_for(tokens: torch.Tensor):
        def hook(module, args, kwargs):
            if threading.get_ident() != caller:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]  # (B, n + T, H)
            rows = tokens.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], n, -1)  # (B, n, H)
            hidden = torch.cat([hidden[:, :1], rows, hidden[:, 1 + n :]], dim=1)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook

    handles = [
        layers[name].register_forward_pre_hook(hook_for(tokens), with_kwargs=True)
        for name, tokens in entry_tokens.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()

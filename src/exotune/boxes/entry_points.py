"""Entry points of a transformer box (text or vision): where its layers are, and tokens
injected at their inputs.

Entry point ``"layer.<i>"`` is the input of transformer layer i. A box with an owner secret
names the layers it exposes ``"point.0"`` .. ``"point.<k-1>"`` instead (in layer order), so
that the names reveal neither which layers they are nor how many the model has. Tokens occupy
n reserved positions right after the first token ([CLS], or a text's start token); at each
entry layer a forward pre-hook overwrites those positions' hidden states with that layer's
tokens (VPT-deep), or, with the owner's ``entry_mode="add"``, adds the tokens to them: the
positions then carry what earlier layers read from the input, so the prefixes each layer's
attention sees depend on the input. With ``entry_mode="shift"`` no positions are reserved:
each entry layer adds the sum of its tokens to every position's hidden state; with
``entry_mode="affine"`` it scales every position's state by 1 + its first token and adds the
sum of the others. A text box reserves the positions in its input embeddings (``reserve``); a
vision box, whose input is pixels, inserts them at the input of its first layer (``insert``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from exotune.boxes.hooks import removed_after, this_thread
from exotune.boxes.spec import ENTRY_MODES, BoxSpec, EntryPoint
from exotune.errors import BoxLimitError, ConfigError

ENTRY_PREFIX = "layer."
OPAQUE_PREFIX = "point."
# Where BERT-family, CLIP, ViT and DINOv2 models in transformers keep their transformer layers.
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


def expose(
    model: nn.Module,
    entry_points,
    entry_tokens_max: int,
    access: str | None,
    opaque: bool = False,
    entry_mode: str = "replace",
):
    """The owner's entry point options, checked: (access, entry layers by name, spec entry points).

    Without ``entry_points`` the box is dark-gray (unless ``access`` says otherwise) and
    exposes nothing; with them it must be light-gray. ``opaque``: names ``point.<j>``, not
    ``layer.<i>``. ``entry_mode`` (``ENTRY_MODES``) is checked here with them.
    """
    if entry_mode not in ENTRY_MODES:
        raise ConfigError(f"entry_mode must be one of {ENTRY_MODES}, got {entry_mode!r}")
    if entry_points is None:
        if entry_mode != "replace":
            raise ConfigError(f"entry_mode={entry_mode!r} needs entry_points (a light-gray box)")
        return access or "dark-gray", {}, ()
    access = access or "light-gray"
    if access != "light-gray":
        raise ConfigError(f"entry_points need access='light-gray', got access={access!r}")
    if isinstance(entry_tokens_max, bool) or not isinstance(entry_tokens_max, int) or entry_tokens_max < 1:
        raise ConfigError(f"entry_tokens_max must be an integer >= 1, got {entry_tokens_max!r}")
    layers = find_layers(model)
    chosen = entry_layers(entry_points, len(layers))
    named = {f"{OPAQUE_PREFIX}{j}" if opaque else f"{ENTRY_PREFIX}{i}": layers[i] for j, i in enumerate(chosen)}
    return access, named, tuple(EntryPoint(name, entry_tokens_max) for name in named)


def reserved(mode: str, n: int) -> int:
    """Sequence positions that n tokens per entry point take: n, none when they act on every
    position (``"shift"``, ``"affine"``)."""
    return 0 if mode in ("shift", "affine") else n


def check_entry_tokens(spec: BoxSpec, entry_tokens: Mapping[str, torch.Tensor], length: int | None = None) -> int:
    """Validate names, shapes and counts against ``spec``; return n, the tokens per entry point.

    ``length`` (a text box's sequence length) is checked, with the tokens, against the
    owner's ``max_length``.
    """
    if not isinstance(entry_tokens, Mapping):
        raise ConfigError(f"entry_tokens must map entry point names to tensors, got {type(entry_tokens).__name__}")
    points = {e.name: e for e in spec.entry_points}
    dim = spec.entry_dim
    counts = {}
    for name, tokens in entry_tokens.items():
        if name not in points:
            raise ConfigError(
                f"entry_tokens: unknown entry point {name!r}; this box exposes {sorted(points) or 'none'}"
            )
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.shape[1] != dim or not len(tokens):
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise BoxLimitError(f"entry_tokens[{name!r}] must have shape (n, {dim}) with n >= 1, got {shape}")
        if len(tokens) > points[name].max_tokens:
            raise BoxLimitError(
                f"entry_tokens[{name!r}] has {len(tokens)} tokens; the entry point takes at most "
                f"{points[name].max_tokens}"
            )
        counts[name] = len(tokens)
    if len(set(counts.values())) > 1:
        raise BoxLimitError(f"entry_tokens must give the same number of tokens to every entry point, got {counts}")
    n = next(iter(counts.values()))
    if length is not None and length + reserved(spec.entry_mode, n) > spec.limits.max_length:
        raise BoxLimitError(
            f"sequence of {length} tokens plus {n} entry tokens exceeds the box's max_length {spec.limits.max_length}"
        )
    return n


def reserve(embeds: torch.Tensor, mask: torch.Tensor, n: int, at: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """n zero positions at ``at`` (right after the first token), unmasked: where entry tokens will ride."""
    b = embeds.shape[0]
    slots = embeds.new_zeros(b, n, embeds.shape[2])  # (B, n, D): zeros until a layer gives tokens
    embeds = torch.cat([embeds[:, :at], slots, embeds[:, at:]], dim=1)  # (B, n + T, D)
    full_mask = torch.cat([mask[:, :at], mask.new_ones(b, n), mask[:, at:]], dim=1)  # (B, n + T)
    return embeds, full_mask


def entry_point_options(entry_points: Sequence[EntryPoint], entry_mode: str = "replace") -> dict:
    """Constructor options that rebuild a box exposing ``entry_points`` in ``entry_mode`` (e.g.
    from a saved spec)."""
    if not entry_points:
        return {}
    layers, limits = [], {e.max_tokens for e in entry_points}
    for e in entry_points:
        index = e.name[len(ENTRY_PREFIX) :]
        if not e.name.startswith(ENTRY_PREFIX) or not index.isdigit():
            raise ConfigError(
                f"entry point {e.name!r} is not a transformer layer ('{ENTRY_PREFIX}<index>'); "
                "a box whose owner hides its layers cannot be rebuilt here: connect to it"
            )
        layers.append(int(index))
    if len(limits) != 1:
        raise ConfigError(f"entry points with different max_tokens {sorted(limits)} cannot be rebuilt")
    mode = {} if entry_mode == "replace" else {"entry_mode": entry_mode}
    return {"entry_points": layers, "entry_tokens_max": limits.pop(), **mode}


def _hidden_of(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, hidden: torch.Tensor):
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@contextmanager
def insert(first_layer: nn.Module, n: int, at: int = 1):
    """Insert n zero positions at ``at`` (after [CLS]; 0 for a model without one) at the input
    of ``first_layer``, for one call.

    Registered before ``inject``'s hooks, so that an entry token set for that layer lands in
    them. As in VPT-deep the positions get no position embedding. Calling thread only.
    """

    def hook(module, args, kwargs):
        hidden = _hidden_of(args, kwargs)  # (B, at + P, H)
        slots = hidden.new_zeros(hidden.shape[0], n, hidden.shape[2])  # (B, n, H)
        return _with_hidden(args, kwargs, torch.cat([hidden[:, :at], slots, hidden[:, at:]], dim=1))

    with removed_after([first_layer.register_forward_pre_hook(this_thread(hook), with_kwargs=True)]):
        yield


@contextmanager
def inject(
    layers: Mapping[str, nn.Module],
    entry_tokens: Mapping[str, torch.Tensor],
    n: int,
    at: int = 1,
    mode: str = "replace",
):
    """Overwrite positions at..at+n-1 (1..n) at the input of each entry layer, for one call
    (``mode="add"``: add the tokens to what those positions hold; ``"shift"``: add their sum to
    every position, n unused; ``"affine"``: scale every position by 1 + the first token, then
    add the sum of the others).

    The hooks act only in the calling thread, so a forward that another thread runs on the
    same model meanwhile (a served box) passes through them untouched.
    """

    def hook_for(tokens: torch.Tensor):
        def hook(module, args, kwargs):
            hidden = _hidden_of(args, kwargs)  # (B, n + T, H)
            if mode == "shift":
                return _with_hidden(args, kwargs, hidden + tokens.sum(0).to(hidden.dtype))  # (B, T, H)
            if mode == "affine":
                t = tokens.to(hidden.dtype)
                return _with_hidden(args, kwargs, hidden * (1 + t[0]) + t[1:].sum(0))  # (B, T, H)
            rows = tokens.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], n, -1)  # (B, n, H)
            if mode == "add":
                rows = hidden[:, at : at + n] + rows  # (B, n, H): the positions' own states, moved
            return _with_hidden(args, kwargs, torch.cat([hidden[:, :at], rows, hidden[:, at + n :]], dim=1))

        return this_thread(hook)

    handles = [
        layers[name].register_forward_pre_hook(hook_for(tokens), with_kwargs=True)
        for name, tokens in entry_tokens.items()
    ]
    with removed_after(handles):
        yield

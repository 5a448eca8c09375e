"""The adapted model: input adapter -> hidden box (+ entry tokens, LGA) -> output adapter.

A text box takes texts (embedded by the box, then adapted); an image box takes images
(paths or PIL images, preprocessed by the box into pixels, then adapted).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from exotune.boxes.base import BoxBase, TokenBatch, encode_sorted_in_eval
from exotune.errors import ConfigError
from exotune.graybox.config import DGAConfig
from exotune.graybox.entry_tokens import EntryTokens
from exotune.graybox.registry import build_adapter
from exotune.graybox.tokens import word_embeddings

_CACHE_LIMIT = 500_000


class GrayBoxModel(nn.Module):
    """DGA (or LGA) around a box. Holds the box as a plain attribute: its backbone is not a submodule,
    so ``parameters()`` and ``state_dict()`` hold only what the user trains."""

    def __init__(self, box: BoxBase, config: DGAConfig | None = None) -> None:
        super().__init__()
        box.require("dark-gray", "light-gray")
        self.box = box
        self.config = config or DGAConfig.variant("both", modality=box.spec.modality)
        spec = box.spec
        cfg = self.config
        self.input_adapter = None if cfg.input_adapter is None else build_adapter("input", cfg.input_adapter, spec)
        self.output_adapter = None if cfg.output_adapter is None else build_adapter("output", cfg.output_adapter, spec)
        self.entry_tokens = None if cfg.entry_tokens is None else EntryTokens(cfg.entry_tokens, spec)
        self.images = spec.modality == "image"
        if cfg.input_dropout and self.images:
            raise ConfigError("input_dropout acts on token embeddings; an image box takes pixels")
        # no parameters: the saved state stays the adapters'
        self.input_drop = nn.Dropout(cfg.input_dropout) if cfg.input_dropout else None
        # With nothing trained before or inside the box, and no dropout on its inputs, its
        # outputs for an input never change: cache them (texts by their text, images by path).
        frozen_box = self.input_adapter is None and self.entry_tokens is None and self.input_drop is None
        self._cache: dict[str, torch.Tensor] | None = {} if frozen_box else None
        self._contexts: dict[str, torch.Tensor] = {}  # text -> the plain box's output (takes_context)
        # Follows ``.to(device)`` (not saved): where the user's side runs, so that each batch
        # moves there once, whatever device (or machine) the box answers from.
        self.register_buffer("device_anchor", torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        """The user's device: that of the adapters (the box's may differ)."""
        return self.device_anchor.device

    @property
    def added_tokens(self) -> int:
        """Sequence positions the adapters add to each text (input tokens and entry tokens)."""
        return sum(getattr(m, "added_tokens", 0) for m in (self.input_adapter, self.entry_tokens) if m is not None)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable tensors by component (``PARAMETER_GROUPS``: the keys with any): ``input``
        (the input adapter's maps), ``tokens`` (its extra tokens and the entry tokens),
        ``output`` (the output adapter); each can get its own learning rate."""
        groups: dict[str, list[nn.Parameter]] = {}
        if self.input_adapter is not None:
            tokens = getattr(self.input_adapter, "token_parameters", list)()
            ids = {id(p) for p in tokens}
            groups["input"] = [p for p in self.input_adapter.parameters() if id(p) not in ids]
            groups["tokens"] = list(tokens)
        if self.entry_tokens is not None:
            groups.setdefault("tokens", []).extend(self.entry_tokens.parameters())
        if self.output_adapter is not None:
            groups["output"] = list(self.output_adapter.parameters())
        return {k: [p for p in ps if p.requires_grad] for k, ps in groups.items() if ps}

    @torch.no_grad()
    def init_tokens_from_words(self, words: list[str]) -> int:
        """Set the extra tokens and entry tokens to the box's own embeddings of ``words`` (class
        names, or a task's frequent words), cycling through them; returns how many were set."""
        vectors = word_embeddings(self.box, words)  # (W, D)
        sets = []
        extra = getattr(self.input_adapter, "extra", None)
        if isinstance(extra, nn.Parameter):
            sets.append(extra)
        if self.entry_tokens is not None:
            if self.box.spec.entry_dim != vectors.shape[1]:
                raise ConfigError(
                    f"entry tokens of width {self.box.spec.entry_dim} cannot start from input "
                    f"embeddings of width {vectors.shape[1]}"
                )
            sets.extend(self.entry_tokens.tokens)
        start = 0
        for tokens in sets:
            idx = torch.arange(start, start + tokens.shape[0]) % len(vectors)
            tokens.copy_(vectors[idx].to(tokens.dtype))
            start += tokens.shape[0]
        return start

    def embed(self, texts: list[str]) -> TokenBatch:
        spec = self.box.spec
        room = min(spec.text_max_length, spec.limits.max_length - self.added_tokens)
        return self.box.embed(texts, max_length=room)

    def backbone_outputs(self, inputs: list) -> torch.Tensor:
        """Box outputs (B, O) for ``inputs`` (texts, or images), gradients flowing into the input
        adapter and entry tokens."""
        keys = [_cache_key(x) for x in inputs] if self._cache is not None else None
        if keys is not None and None not in keys:

            def compute(missing: list[str]) -> torch.Tensor:  # only when some key is not kept
                first = dict(zip(keys, inputs, strict=True))  # key -> an input it stands for
                return self._box_outputs([first[k] for k in missing])

            return _through_cache(self._cache, keys, compute)
        return self._box_outputs(inputs)

    def _box_outputs(self, inputs: list) -> torch.Tensor:
        tokens = None if self.entry_tokens is None else self.entry_tokens()  # name -> (n, D)
        if self.images:
            pixels = self.box.preprocess(inputs).to(self.device)  # (B, C, H, W), the owner's preprocessing
            if self.input_adapter is not None:
                pixels = self.input_adapter(pixels)  # (B, C, H, W)
            return self.box.forward(pixels, tokens).to(self.device)  # a box elsewhere may answer there
        batch = self.embed(inputs)
        embeds, mask = batch.embeds.to(self.device), batch.mask.to(self.device)  # (B, T, D), (B, T)
        if getattr(self.input_adapter, "takes_context", False):
            context = self._plain_outputs(inputs, embeds, mask)  # (B, O)
            embeds, mask = self.input_adapter(embeds, mask, context)  # (B, T + k, D)
        elif self.input_adapter is not None:
            embeds, mask = self.input_adapter(embeds, mask)  # (B, T + k, D)
        if self.input_drop is not None:  # training only (evaluation mode: identity)
            embeds = self.input_drop(embeds)
        return self.box.forward(embeds, mask, tokens).to(self.device)

    def _plain_outputs(self, texts: list[str], embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The plain box's outputs (B, O) for ``texts`` (embedded as ``embeds``, ``mask``), for an
        input adapter that takes them: one call without gradient, kept per text."""

        def plain(missing: list[str]) -> torch.Tensor:  # only when some text is not kept
            row = {t: i for i, t in enumerate(texts)}  # text -> a row that holds it
            index = torch.tensor([row[t] for t in missing], device=embeds.device)
            return self.box.forward(embeds[index], mask[index]).to(self.device)

        return _through_cache(self._contexts, texts, plain)

    def forget_plain_outputs(self) -> None:
        """Drop the plain box's outputs kept per text (``takes_context``): the next call of each
        text pays its gradient-free box call again, as in its first epoch."""
        self._contexts.clear()

    @property
    def caches_box_outputs(self) -> bool:
        """Nothing trained before or inside the box: its output for a text never changes."""
        return self._cache is not None

    def remember(self, texts: list[str], outputs: torch.Tensor) -> None:
        """Seed the box-output cache with outputs (N, O) computed earlier by this box, e.g. a
        corpus saved to disk, so that those texts are not sent through the box again."""
        if self._cache is None:
            raise ConfigError("only a tower with nothing trained before or inside the box caches box outputs")
        if outputs.ndim != 2 or outputs.shape != (len(texts), self.box.spec.output_dim):
            raise ConfigError(
                f"expected outputs of shape ({len(texts)}, {self.box.spec.output_dim}), got {tuple(outputs.shape)}"
            )
        if len(self._cache) + len(texts) > _CACHE_LIMIT:
            raise ConfigError(f"the box-output cache holds at most {_CACHE_LIMIT:,} texts")
        self._cache.update(zip(texts, outputs.detach().to(self.device), strict=True))

    def forward(self, inputs: list) -> torch.Tensor:
        z = self.backbone_outputs(inputs)  # (B, O)
        if self.output_adapter is not None:
            z = self.output_adapter(z)
        return z

    def encode(self, inputs: list, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        batch_size, dim = min(batch_size, self.box.spec.limits.max_batch), self.box.spec.output_dim
        return encode_sorted_in_eval(self, self, inputs, batch_size, dim, progress)  # (N, O)


def _through_cache(cache: dict[str, torch.Tensor], keys: list[str], compute) -> torch.Tensor:
    """Outputs (B, O) for ``keys`` from ``cache``; ``compute(missing keys)`` (called without
    gradient, once per key) gives the others, kept while the cache holds fewer than
    ``_CACHE_LIMIT``."""
    missing = [k for k in dict.fromkeys(keys) if k not in cache]
    if not missing:
        return torch.stack([cache[k] for k in keys])
    with torch.no_grad():
        fresh = dict(zip(missing, compute(missing), strict=True))
    if len(cache) + len(missing) <= _CACHE_LIMIT:
        cache.update(fresh)
    return torch.stack([cache[k] if k in cache else fresh[k] for k in keys])


def _cache_key(item) -> str | None:
    """A text is its own key, an image file its path; an in-memory image has none (not cached)."""
    if isinstance(item, str):
        return item
    return str(item) if isinstance(item, Path) else None


def folded_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` as an adapter is saved: every re-parameterised token set (a part
    with ``folded_tokens()``) replaced by its plain tokens, so the artifact loads into the
    configuration's ``folded()`` form and the box sees the same tokens."""
    state = model.state_dict()
    for name, part in model.named_modules():
        folded = part.folded_tokens() if callable(getattr(part, "folded_tokens", None)) else {}
        if folded:
            prefix = f"{name}." if name else ""
            for key in [k for k in state if k.startswith(tuple(prefix + r for r in part.reparam_keys))]:
                del state[key]
            state.update({prefix + k: v for k, v in folded.items()})
    return state

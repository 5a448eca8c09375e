"""The text families a box serves, and each one's conventions.

A family says what the box must do for the model to see its inputs as its own tokenizer and
forward would give them: how many positions it can take (RoBERTa, XLM-RoBERTa and MPNet
reserve the first ``padding_idx + 1`` position rows, so 514 rows hold 512 tokens), whether it
is a decoder (causal attention: position ids follow the mask, so the extra tokens a user inserts
after the first token and the entry-token slots run on as part of the text; padding never moves
the text's positions) and the poolings that make sense for it (a decoder's ``"last"``: the
state at each text's last real token).

Token types need nothing: every encoder here, given embeddings and no token type ids, uses type
0, as its tokenizer does for one text. A model whose family is not listed is refused at load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from exotune.errors import ConfigError


@dataclass(frozen=True)
class TextFamily:
    name: str  # as messages show it
    model_types: tuple[str, ...]  # the transformers ``config.model_type`` values it covers
    poolings: tuple[str, ...] = ("mean", "cls")  # the first is the default
    decoder: bool = False
    offset_by_pad: bool = False  # positions start at padding_idx + 1

    def max_positions(self, config) -> int:
        """Tokens a sequence may hold (specials, extra and entry tokens included)."""
        rows = int(getattr(config, "max_position_embeddings", 512))
        if self.offset_by_pad:
            rows -= int(getattr(config, "pad_token_id", None) or 0) + 1
        return rows

    def forward_kwargs(self, mask: torch.Tensor) -> dict:
        """What the model's forward takes besides embeddings and the mask."""
        if not self.decoder:
            return {}
        # the i-th real token is at position i, whatever padding or inserted tokens precede it
        return {"position_ids": (mask.cumsum(1) - 1).clamp(min=0)}  # (B, T)


FAMILIES = (
    TextFamily("BERT", ("bert",)),
    TextFamily("RoBERTa", ("roberta",), offset_by_pad=True),
    TextFamily("XLM-RoBERTa", ("xlm-roberta",), offset_by_pad=True),
    TextFamily("MPNet", ("mpnet",), offset_by_pad=True),
    TextFamily("DeBERTa-v2", ("deberta-v2",)),
    TextFamily("ModernBERT", ("modernbert",)),
    TextFamily("Qwen2", ("qwen2", "qwen3"), poolings=("last", "mean"), decoder=True),
    TextFamily("Llama", ("llama", "mistral"), poolings=("last", "mean"), decoder=True),
)


def supported() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES)


def family_of(model_type: str) -> TextFamily:
    """The family of a ``config.model_type``; a ConfigError that names it and the supported ones."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ConfigError(
        f"a text box cannot serve a {model_type or 'model without a model_type'!r} model: its family is not "
        f"supported. Supported text families: {supported()}"
    )

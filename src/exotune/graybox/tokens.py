"""Training aids for learnable tokens (extra tokens, entry tokens): a residual re-parameterisation
used while training only, and initial tokens from the box's own embeddings of words."""

from __future__ import annotations

import re
from collections import Counter

import torch
from torch import nn

from exotune.errors import ConfigError

TOKEN_INITS = ("random", "labels", "frequent")
FREQUENT_WORDS = 64  # words the tokens start from with "frequent"
# Words that say nothing about a task; left out of its frequent words.
_STOPWORDS = frozenset(
    re.findall(
        r"[a-z]+",
        "the and for that this with are was were you your have has had not but can could would should will "
        "from they them their there what when where which who how why all any our out get got its "
        "been being into than then too very just also more most some such only own same about over",
    )
)


class TokenMLP(nn.Module):
    """``p + up(relu(down(p)))`` over free token parameters ``p`` (n, D), row by row (Residual
    Prompt Tuning). ``up`` starts at zero: the tokens start as ``p``; only the optimisation path
    differs. Folded into plain tokens when an adapter is saved."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, free: torch.Tensor) -> torch.Tensor:
        return free + self.up(torch.relu(self.down(free)))  # (n, D)


def frequent_words(texts: list[str], n: int) -> list[str]:
    """The ``n`` most frequent words (3 letters or more, no stop words) of ``texts``."""
    counts = Counter(w for t in texts for w in re.findall(r"[a-z]{3,}", t.lower()) if w not in _STOPWORDS)
    words = [w for w, _ in counts.most_common(n)]
    if not words:
        raise ConfigError("the texts hold no words to initialise tokens from")
    return words


def init_tokens(tower, how: str, label_names: list[str] | None, texts: list[str]) -> None:
    """Start a gray-box tower's tokens (``GrayBoxModel.init_tokens_from_words``) as ``how``
    (``TOKEN_INITS``) says: random (as built), from the class names, or from the ``FREQUENT_WORDS``
    most frequent words of the training texts."""
    if how not in TOKEN_INITS:
        raise ConfigError(f"token initialisation must be one of {TOKEN_INITS}, got {how!r}")
    if how == "labels" and not label_names:
        raise ConfigError("initialising tokens from class names needs a task with classes")
    if how != "random":
        tower.init_tokens_from_words(list(label_names) if how == "labels" else frequent_words(texts, FREQUENT_WORDS))


def word_embeddings(box, words: list[str]) -> torch.Tensor:
    """The box's own input embedding of each word (W, D): the mean over its word pieces (the
    first and last positions, the tokenizer's [CLS] and [SEP], left out when there are more)."""
    words = [w.replace("_", " ").strip() for w in words]
    if not words or not all(words):
        raise ConfigError("token initialisation needs non-empty words")
    batch = box.embed(words)
    out = []
    for row, mask in zip(batch.embeds, batch.mask, strict=True):
        real = row[mask.bool()]  # (L, D)
        out.append((real[1:-1] if len(real) > 2 else real).mean(0))
    return torch.stack(out)

"""The classification prompt, and turning a free-text answer (and its logprobs) into a label."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field

from exotune.errors import ConfigError

SYSTEM = "You are a text classifier. Answer with exactly one label from the list and nothing else."
TEMPLATE = "Labels:\n{labels}\n\n{examples}Text: {text}\nLabel:"


@dataclass
class PromptTemplate:
    """``template`` has the fields {labels}, {examples} and {text}; examples are (text, label) pairs."""

    template: str = TEMPLATE
    system: str = SYSTEM
    examples: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if "{text}" not in self.template:
            raise ConfigError(f"the prompt template must contain '{{text}}', got {self.template!r}")
        self.examples = [(str(t), str(y)) for t, y in self.examples]

    def render(self, text: str, label_names: list[str]) -> list[dict]:
        labels = "\n".join(f"- {name}" for name in label_names)
        shots = "".join(f"Text: {t}\nLabel: {y}\n\n" for t, y in self.examples)
        user = self.template.format(labels=labels, examples=shots, text=text)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def normalise(s: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", s.lower()).split())


def parse_label(answer: str | None, label_names: list[str], cutoff: float = 0.85) -> int | None:
    """Exact match, then normalised match, then a label named inside the answer, then fuzzy."""
    if not answer or not answer.strip():
        return None
    exact = {name: i for i, name in enumerate(label_names)}
    stripped = answer.strip().strip("\"'`.").strip()
    if stripped in exact:
        return exact[stripped]
    norm = {normalise(name): i for i, name in enumerate(label_names)}
    a = normalise(re.sub(r"^\s*(the\s+)?label\s*(is)?\s*[:=]?", "", answer, flags=re.I))
    if a in norm:
        return norm[a]
    contained = [n for n in norm if n and re.search(rf"\b{re.escape(n)}\b", a)]
    if contained:
        best = max(contained, key=len)
        if all(n in best for n in contained):  # "card" inside "card arrival" is no rival
            return norm[best]
        return None  # two labels named: ambiguous
    close = difflib.get_close_matches(a, list(norm), n=1, cutoff=cutoff)
    return norm[close[0]] if close else None


def scores_from_logprobs(top: list[tuple[str, float]], label_names: list[str]) -> list[float] | None:
    """Label scores from the first answer token's alternatives: each token's probability is
    shared by the labels whose normalised name starts with it. None when no token names a label."""
    norm = [normalise(n) for n in label_names]
    scores = [0.0] * len(label_names)
    for token, logprob in top:
        t = normalise(token)
        if not t:
            continue
        hits = [i for i, n in enumerate(norm) if n.startswith(t)]
        for i in hits:
            scores[i] += math.exp(logprob) / len(hits)
    total = sum(scores)
    return [s / total for s in scores] if total > 0 else None

"""What the boxes said and what the adapter decided, as arrays: the LM's answers to a probe
(gathered chunk by chunk) and the routing of each input."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from exotune.ea.blackbox import BlackBoxOutput, Ledger


@dataclass
class LMAnswers:
    """The LM's outputs for some inputs, as arrays."""

    labels: np.ndarray  # (N,) int, -1 where unparseable
    scores: np.ndarray | None  # (N, C), NaN rows where none
    confidence: np.ndarray  # (N,), NaN where none
    embeddings: np.ndarray | None = None

    @classmethod
    def from_outputs(cls, outs: list[BlackBoxOutput], num_classes: int) -> LMAnswers:
        labels = np.array([-1 if o.label is None else o.label for o in outs], dtype=int)
        scores = None
        if any(o.scores is not None for o in outs):
            scores = np.array(
                [
                    o.scores if o.scores is not None and len(o.scores) == num_classes else [np.nan] * num_classes
                    for o in outs
                ],
                dtype=np.float32,
            )
        conf = np.array([np.nan if o.confidence is None else o.confidence for o in outs], dtype=float)
        emb = None
        if outs and all(o.embedding is not None for o in outs):
            emb = np.asarray([o.embedding for o in outs], dtype=np.float32)  # the wire's precision
        return cls(labels, scores, conf, emb)

    @classmethod
    def ask(cls, client, texts: list[str], label_names: list[str], ledger: Ledger, chunk: int = 2048) -> LMAnswers:
        """The client's answers for ``texts``, collected ``chunk`` texts at a time into one set of
        arrays: only one chunk's per-answer objects are alive at once, not all of them beside
        their stacked copy (10,000 embeddings: 15 MB of arrays, 45 MB more the other way)."""
        n, c = len(texts), len(label_names)
        out = cls(np.full(n, -1, dtype=int), None, np.full(n, np.nan), None)
        has_emb = True

        def fill(start: int, outputs: list[BlackBoxOutput]) -> None:
            nonlocal has_emb
            part = cls.from_outputs(outputs, c)
            rows = slice(start, start + len(outputs))
            out.labels[rows], out.confidence[rows] = part.labels, part.confidence
            if part.scores is not None:
                if out.scores is None:
                    out.scores = np.full((n, c), np.nan, dtype=np.float32)
                out.scores[rows] = part.scores
            has_emb = has_emb and part.embeddings is not None  # all or none, as from_outputs
            if not has_emb:
                out.embeddings = None
            else:
                if out.embeddings is None:
                    out.embeddings = np.empty((n, part.embeddings.shape[1]), dtype=np.float32)
                out.embeddings[rows] = part.embeddings

        client.run(texts, label_names, ledger, chunk=chunk, collect=fill)
        return out

    def take(self, idx) -> LMAnswers:
        rows = np.asarray(idx, dtype=int)
        return LMAnswers(
            self.labels[rows],
            None if self.scores is None else self.scores[rows],
            self.confidence[rows],
            None if self.embeddings is None else self.embeddings[rows],
        )


@dataclass
class Routing:
    """What :meth:`EasyAdapter.route` decided for each input."""

    labels: np.ndarray  # (N,) final answers
    proba: np.ndarray  # (N, C)
    ssm_labels: np.ndarray  # (N,)
    asked_lm: np.ndarray  # (N,) bool: the LM was called
    used_lm: np.ndarray  # (N,) bool: the LM's answer was kept
    lm_labels: np.ndarray  # (N,) -1 where not asked or unparseable
    ledger: Ledger = field(default_factory=Ledger)
    seconds: float = 0.0

"""Dual-encoder retrieval on one hidden box: query and document towers, InfoNCE, exact search.

``TwoTowerRetriever`` holds what does not depend on what the towers are (search, metrics,
InfoNCE, hard negatives); ``DualEncoder`` builds both towers from DGA adapters over the box, and
the white-box baseline (``exotune.whitebox.WhiteBoxRetriever``) an owned query encoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from exotune import __version__
from exotune.boxes.base import Box, encode_sorted, encode_sorted_in_eval, model_digest
from exotune.boxes.text import for_role
from exotune.configs import MAX_TOKENS, ConfigBase, check_field_types, check_int
from exotune.data.beir import Corpus, RetrievalData
from exotune.errors import ConfigError, DataError
from exotune.graybox.config import DGAConfig
from exotune.graybox.model import GrayBoxModel
from exotune.tasks.artifacts import box_entries, given_or_saved_box
from exotune.tasks.encoding import TextEncoderMixin
from exotune.tasks.metrics import retrieval_metrics
from exotune.tasks.model import AdapterModelMixin

ADAPTER_TYPE = "dga-retriever"
SEARCH_DEPTH = 100  # documents ranked per query: enough for Recall@100
_QUERY_CHUNK = 1024  # queries scored against the corpus at once, to bound the (Q, N) matrix
DOC_SIDES = ("same", "output-only", "frozen")


@dataclass
class RetrievalConfig(ConfigBase):
    shared_towers: bool = False  # one adapted encoder for queries and documents
    temperature: float = 0.05
    learn_temperature: bool = True
    hard_negatives: int = 0  # per query: top non-relevant docs of the zero-shot ranking
    # "same": the document tower carries every adapter the query tower does; "output-only": only
    # the output adapter, so documents cross the box unchanged and their box outputs are computed
    # once (an owner's box is paid per call: the corpus is not sent again when adapters change);
    # "frozen": no adapter at all, documents are the bare box's outputs (computed once, too)
    doc_side: str = "same"

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.doc_side not in DOC_SIDES:
            raise ConfigError(f"doc_side must be one of {DOC_SIDES}, got {self.doc_side!r}")
        if self.shared_towers and self.doc_side != "same":
            raise ConfigError("shared_towers needs doc_side 'same': one tower cannot be two")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        check_int(self, "hard_negatives", 0, MAX_TOKENS)


def encode_normalized(
    fn: Callable[[list[str]], torch.Tensor],
    texts: list[str],
    batch_size: int,
    dim: int,
    progress: bool = False,
    desc: str = "encode",
) -> torch.Tensor:
    """``fn`` over ``texts`` in batches of similar length, in input order, L2-normalised (N, O)."""
    return nn.functional.normalize(encode_sorted(fn, texts, batch_size, dim, progress, desc), dim=-1)


def encode_in_eval(
    model: nn.Module, fn: Callable[[list], torch.Tensor], inputs: list, box, batch_size: int, progress: bool, desc: str
) -> torch.Tensor:
    """:func:`encode_normalized` with ``model`` in eval mode and no gradients, at most the box's
    ``max_batch`` inputs per call; the model's mode is restored after."""
    batch_size = min(batch_size, box.spec.limits.max_batch)
    out = encode_sorted_in_eval(model, fn, inputs, batch_size, box.spec.output_dim, progress, desc)  # (N, O)
    return nn.functional.normalize(out, dim=-1)


def exact_search(queries: torch.Tensor, docs: torch.Tensor, k: int = SEARCH_DEPTH) -> torch.Tensor:
    """Indices (Q, min(k, N)) of the best documents per query by inner product."""
    k = min(k, docs.shape[0])
    if len(queries) == 0:
        return torch.zeros(0, k, dtype=torch.long)
    # (q, O) @ (O, N) -> (q, N) scores -> (q, k) indices, a chunk of queries at a time
    return torch.cat([(chunk @ docs.T).topk(k, dim=-1).indices for chunk in queries.split(_QUERY_CHUNK)])


class TwoTowerRetriever(AdapterModelMixin, nn.Module):
    """Exact search and InfoNCE training over a query tower and a document tower, each a module
    texts -> (B, O). Subclasses build ``query_tower`` and say which box sets the batch limits
    (``box``) and which tower encodes documents (``doc_encoder``)."""

    query_tower: nn.Module

    def __init__(self, config: RetrievalConfig | None = None) -> None:
        super().__init__()
        self.config = config or RetrievalConfig()
        scale = torch.tensor(math.log(1.0 / self.config.temperature))
        self.log_scale = nn.Parameter(scale, requires_grad=self.config.learn_temperature)
        self.progress = False  # run-time knob: progress bars while evaluating (not saved)
        self.corpus_encodings = 0  # how often the corpus went through the document tower
        self._corpus_cache: tuple[tuple[str, str], torch.Tensor] | None = None
        self._zero_shot_docs: tuple[str, torch.Tensor] | None = None
        self._negatives: dict[str, list[str]] = {}

    @property
    def box(self) -> Box:
        raise NotImplementedError

    @property
    def query_box(self) -> Box:
        """The box queries go through (with the owner's query prompt, when it has one)."""
        return self.box

    @property
    def doc_box(self) -> Box:
        return self.box

    @property
    def doc_encoder(self) -> nn.Module:
        raise NotImplementedError

    # -- encoding and search ----------------------------------------------------------------

    def _encode(self, tower: nn.Module, texts: list[str], batch_size: int, progress: bool, desc: str):
        return encode_in_eval(self, tower, texts, self.box, batch_size, progress, desc)  # (N, O)

    def encode_queries(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        return self._encode(self.query_tower, texts, batch_size, progress, "encode queries")  # (Q, O)

    def encode_corpus(self, corpus: Corpus, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        """L2-normalised document embeddings (N, O), reused while the document tower is unchanged."""
        key = (corpus.fingerprint, model_digest(self.doc_encoder))
        if self._corpus_cache is None or self._corpus_cache[0] != key:
            docs = self._encode(self.doc_encoder, corpus.documents(), batch_size, progress, "encode corpus")
            self._corpus_cache = (key, docs)
            self.corpus_encodings += 1
        return self._corpus_cache[1]

    @torch.no_grad()
    def rank(
        self, data: RetrievalData, k: int = SEARCH_DEPTH, batch_size: int = 128, progress: bool = False
    ) -> list[list[str]]:
        """The top ``k`` document ids per query, by exact search over the full corpus."""
        docs = self.encode_corpus(data.corpus, batch_size, progress)
        queries = self.encode_queries(data.queries, batch_size, progress)
        ids = data.corpus.ids
        return [[ids[j] for j in row] for row in exact_search(queries, docs, k).tolist()]

    def evaluate(self, data: RetrievalData, batch_size: int = 128, progress: bool | None = None) -> dict[str, float]:
        """nDCG@10, Recall@10, Recall@100 and MRR@10 over the full corpus."""
        progress = self.progress if progress is None else progress
        return retrieval_metrics(self.rank(data, SEARCH_DEPTH, batch_size, progress), data.qrels)

    # -- training ---------------------------------------------------------------------------

    @torch.no_grad()
    def mine_hard_negatives(self, data: RetrievalData, batch_size: int = 128, progress: bool = False) -> None:
        """Remember, per query, the top ``hard_negatives`` non-relevant docs of the bare box."""
        k = self.config.hard_negatives
        todo = [i for i, qid in enumerate(data.query_ids) if qid not in self._negatives]
        if k == 0 or not todo:
            return
        corpus = data.corpus
        if self._zero_shot_docs is None or self._zero_shot_docs[0] != corpus.fingerprint:
            # a document tower with nothing before the box keeps the bare box's outputs (a corpus
            # remembered from disk, or encoded once): the corpus is not sent through the box again
            tower = self.doc_encoder
            docs = encode_normalized(
                tower.backbone_outputs if getattr(tower, "caches_box_outputs", False) else self.doc_box.encode,
                corpus.documents(),
                batch_size,
                self.box.spec.output_dim,
                progress,
                "mine: encode corpus",
            )
            self._zero_shot_docs = (corpus.fingerprint, docs)
        docs = self._zero_shot_docs[1]
        queries = encode_normalized(
            self.query_box.encode, [data.queries[i] for i in todo], batch_size, self.box.spec.output_dim
        )
        depth = k + max(len(data.positives(i)) for i in todo)
        for i, row in zip(todo, exact_search(queries, docs, depth).tolist(), strict=True):
            relevant = set(data.positives(i))
            self._negatives[data.query_ids[i]] = [corpus.ids[j] for j in row if corpus.ids[j] not in relevant][:k]

    def loss(self, data: RetrievalData) -> torch.Tensor:
        """InfoNCE: each query against its positive and every other candidate in the batch."""
        rows = [i for i in range(len(data)) if data.positives(i)]
        if not rows:
            raise DataError(f"{data.name}: no query in the batch has a relevant document")
        targets = []
        for i in rows:  # several positives: a random one per step
            pos = data.positives(i)
            targets.append(pos[int(torch.randint(len(pos), ()))] if len(pos) > 1 else pos[0])
        candidates = list(dict.fromkeys(targets))
        if self.config.hard_negatives:
            self.mine_hard_negatives(data)
            negs = [d for i in rows for d in self._negatives[data.query_ids[i]]]
            candidates = list(dict.fromkeys(candidates + negs))
        column = {d: j for j, d in enumerate(candidates)}
        q = nn.functional.normalize(self._forward(self.query_tower, [data.queries[i] for i in rows]), dim=-1)  # (B, O)
        d = nn.functional.normalize(
            self._forward(self.doc_encoder, [data.corpus.document(c) for c in candidates]), dim=-1
        )  # (C, O)
        logits = self.log_scale.exp().clamp(max=100.0) * q @ d.T  # (B, C)
        # the query's other positives among the candidates are not negatives: leave them out
        mask = torch.zeros_like(logits, dtype=torch.bool)
        for b, (i, target) in enumerate(zip(rows, targets, strict=True)):
            for p in data.positives(i):
                if p != target and p in column:
                    mask[b, column[p]] = True
        logits = logits.masked_fill(mask, float("-inf"))
        return nn.functional.cross_entropy(logits, torch.tensor([column[t] for t in targets], device=logits.device))

    def _forward(self, tower: nn.Module, texts: list[str]) -> torch.Tensor:
        return torch.cat([tower(part) for part in self.box.spec.limits.batches(texts)])  # the owner's limit


class DualEncoder(TextEncoderMixin, TwoTowerRetriever):
    """A query tower and a document tower over the same box, each with its own DGA adapters
    (or one shared tower). Everything in ``state_dict()`` belongs to the user."""

    adapter_type = ADAPTER_TYPE

    def __init__(self, box: Box, dga: DGAConfig | None = None, config: RetrievalConfig | None = None) -> None:
        super().__init__(config)
        self.dga = dga if dga is not None else DGAConfig()
        self._box = box
        # each tower with the owner's prompt for its side, when the box has prompts
        self.query_tower = GrayBoxModel(for_role(box, "query"), self.dga)
        # shared: not registered twice, so the state dict holds each tensor once
        self.doc_tower = None if self.config.shared_towers else GrayBoxModel(for_role(box, "document"), self._doc_dga())

    def _doc_dga(self) -> DGAConfig:
        side = self.config.doc_side
        if side == "same":
            return self.dga
        output = None if side == "frozen" else self.dga.output_adapter
        # nothing of the input side: the corpus crosses the box once, its outputs cached
        return replace(self.dga, input_adapter=None, entry_tokens=None, output_adapter=output, input_dropout=0.0)

    @property
    def box(self) -> Box:
        return self._box

    @property
    def query_box(self) -> Box:
        return self.query_tower.box

    @property
    def doc_box(self) -> Box:
        return self.doc_encoder.box

    @property
    def doc_encoder(self) -> GrayBoxModel:
        return self.query_tower if self.doc_tower is None else self.doc_tower

    # -- artifacts --------------------------------------------------------------------------

    def to_config_dict(self) -> dict:
        return {
            "type": self.adapter_type,
            "library_version": __version__,
            "access": "light-gray" if self.dga.entry_tokens is not None else "dark-gray",
            **box_entries("box", self.box),
            "dga": self.dga.folded().to_dict(),
            "task": {"type": "retrieval", **asdict(self.config)},
        }

    @property
    def encoding_tower(self) -> GrayBoxModel:
        """What ``encode`` runs: the query tower (search normalises its embeddings)."""
        return self.query_tower

    @classmethod
    def from_pretrained(cls, path: str | Path, box: Box | None = None, *, remote: str | None = None) -> DualEncoder:
        """The adapter in ``path`` on ``box``; without one, on the box the folder names (the
        backbone it was trained on, or the served box at ``remote``), fingerprint checked."""
        return cls.load_folder(path, given_or_saved_box(path, box, remote))

    @classmethod
    def from_config(cls, cfg: dict, task: dict, box: Box) -> DualEncoder:
        return cls(box, DGAConfig.from_dict(cfg["dga"]), RetrievalConfig.from_dict(task))

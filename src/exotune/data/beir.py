"""Retrieval data in the BEIR layout: a corpus, queries and graded relevance judgements (qrels).

::

    <folder>/corpus.jsonl    {"_id": ..., "title": ..., "text": ...} per line
    <folder>/queries.jsonl   {"_id": ..., "text": ...} per line
    <folder>/qrels/<split>.tsv  header ``query-id<TAB>corpus-id<TAB>score``
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from exotune.data.text import dataset_root, held_out, read_rows, read_text, sample
from exotune.errors import DataError

QRELS_HEADER = ("query-id", "corpus-id", "score")
SPLITS = ("train", "test")


@dataclass
class Corpus:
    """Documents by position; ``ids[i]`` names ``titles[i]`` / ``texts[i]``."""

    ids: list[str]
    titles: list[str]
    texts: list[str]
    name: str = "corpus"
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.titles) == len(self.texts):
            raise DataError(f"{self.name}: {len(self.ids)} ids, {len(self.titles)} titles, {len(self.texts)} texts")
        self.index = {doc_id: i for i, doc_id in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise DataError(f"{self.name}: document ids are not unique")
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def documents(self) -> list[str]:
        """What is encoded for each document: ``title + " " + text``, stripped.

        The usual BEIR / sentence-transformers convention (a document without a title is
        its text alone), which published zero-shot scores assume.
        """
        return [f"{t} {x}".strip() for t, x in zip(self.titles, self.texts, strict=True)]

    def document(self, doc_id: str) -> str:
        i = self.index[doc_id]
        return f"{self.titles[i]} {self.texts[i]}".strip()

    @property
    def fingerprint(self) -> str:
        """Hash of ids and contents: keys caches of corpus embeddings."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for doc_id, text in zip(self.ids, self.documents(), strict=True):
                h.update(doc_id.encode() + b"\0" + text.encode() + b"\0")
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


@dataclass
class RetrievalData:
    """Queries with their judged documents, over a shared corpus.

    ``qrels[i]`` maps a document id to its grade for query ``i`` (grade > 0: relevant;
    graded relevance is the nDCG gain). Only queries with judgements are kept, so
    ``len`` is the number of evaluated queries.
    """

    query_ids: list[str]
    queries: list[str]
    qrels: list[dict[str, int]]
    corpus: Corpus
    name: str = "retrieval"

    def __post_init__(self) -> None:
        if not len(self.query_ids) == len(self.queries) == len(self.qrels):
            raise DataError(
                f"{self.name}: {len(self.query_ids)} ids, {len(self.queries)} queries, {len(self.qrels)} qrels"
            )
        for qid, judged in zip(self.query_ids, self.qrels, strict=True):
            unknown = next((d for d in judged if d not in self.corpus.index), None)
            if unknown is not None:
                raise DataError(f"{self.name}: query {qid!r} judges document {unknown!r}, which is not in the corpus")

    def __len__(self) -> int:
        return len(self.query_ids)

    def positives(self, i: int) -> list[str]:
        """Relevant document ids of query ``i`` (grade > 0), in file order."""
        return [d for d, g in self.qrels[i].items() if g > 0]

    def subset(self, indices, name: str | None = None) -> RetrievalData:
        idx = [int(i) for i in indices]
        return RetrievalData(
            [self.query_ids[i] for i in idx],
            [self.queries[i] for i in idx],
            [self.qrels[i] for i in idx],
            self.corpus,
            name or self.name,
        )

    def split(self, fraction: float, seed: int = 0) -> tuple[RetrievalData, RetrievalData]:
        """Query-level random split into (rest, held-out); the corpus stays shared."""
        rest, held = held_out(len(self), fraction, seed, self.name, "queries")
        return self.subset(rest, f"{self.name}[train]"), self.subset(held, f"{self.name}[val]")

    def head(self, n: int, seed: int = 0) -> RetrievalData:
        """A random sample of ``n`` queries (all of them if ``n`` >= len)."""
        return sample(self, n, seed)


# -- files ----------------------------------------------------------------------------------


def _jsonl_records(path: Path, keys: tuple[str, ...]):
    """Yield (line, record) with ``_id`` a non-empty string and each of ``keys`` a string."""
    if path.suffix.lower() != ".jsonl":
        raise DataError(f"{path}: expected a .jsonl file")
    for n, row in read_rows(path):
        doc_id = row.get("_id")
        if doc_id is None:
            raise DataError(f"{path}, line {n}, column '_id': missing; every record needs an id")
        if isinstance(doc_id, int) and not isinstance(doc_id, bool):
            doc_id = str(doc_id)
        if not isinstance(doc_id, str) or not doc_id:
            raise DataError(f"{path}, line {n}, column '_id': expected a non-empty string, got {doc_id!r}")
        for key in keys:
            value = row.get(key, "")
            if not isinstance(value, str):
                raise DataError(f"{path}, line {n}, column {key!r}: expected a string, got {type(value).__name__}")
        yield n, {**row, "_id": doc_id}


def load_corpus(path: str | Path) -> Corpus:
    path = Path(path)
    ids, titles, texts, seen = [], [], [], {}
    for n, row in _jsonl_records(path, ("title", "text")):
        if row["_id"] in seen:
            raise DataError(
                f"{path}, line {n}, column '_id': duplicate id {row['_id']!r} (first on line {seen[row['_id']]})"
            )
        if "text" not in row:
            raise DataError(f"{path}, line {n}, column 'text': missing")
        seen[row["_id"]] = n
        ids.append(row["_id"])
        titles.append(row.get("title", ""))
        texts.append(row["text"])
    if not ids:
        raise DataError(f"{path}: the corpus is empty")
    return Corpus(ids, titles, texts, path.parent.name or "corpus")


def load_queries(path: str | Path) -> dict[str, str]:
    path = Path(path)
    queries: dict[str, str] = {}
    for n, row in _jsonl_records(path, ("text",)):
        if row["_id"] in queries:
            raise DataError(f"{path}, line {n}, column '_id': duplicate id {row['_id']!r}")
        if not row.get("text", "").strip():
            raise DataError(f"{path}, line {n}, column 'text': missing or empty query text")
        queries[row["_id"]] = row["text"]
    return queries


def load_qrels(path: str | Path, queries: dict[str, str], corpus: Corpus) -> dict[str, dict[str, int]]:
    """``{query id: {doc id: grade}}`` in file order; every id must be known."""
    path = Path(path)
    lines = read_text(path).splitlines()
    header = tuple(c.strip() for c in lines[0].split("\t")) if lines else ()
    if header != QRELS_HEADER:
        raise DataError(
            f"{path}, line 1: expected the header {'<TAB>'.join(QRELS_HEADER)!r}, got {lines[0] if lines else ''!r}"
        )
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != 3:
            raise DataError(f"{path}, line {n}: {len(cells)} cells, the header has 3 (tab-separated)")
        qid, doc_id, score = (c.strip() for c in cells)
        if qid not in queries:
            raise DataError(f"{path}, line {n}, column 1 (query-id): unknown query {qid!r}")
        if doc_id not in corpus.index:
            raise DataError(f"{path}, line {n}, column 2 (corpus-id): unknown document {doc_id!r}")
        try:
            grade = int(score)
        except ValueError:
            grade = -1
        if grade < 0:
            raise DataError(f"{path}, line {n}, column 3 (score): expected an integer >= 0, got {score!r}")
        qrels.setdefault(qid, {})[doc_id] = grade
    return qrels


def load_beir(folder: str | Path, split: str = "test", corpus: Corpus | None = None) -> RetrievalData:
    """Queries judged in ``qrels/<split>.tsv`` of a BEIR folder; pass ``corpus`` to reuse one."""
    folder = Path(folder)
    corpus = corpus if corpus is not None else load_corpus(folder / "corpus.jsonl")
    queries = load_queries(folder / "queries.jsonl")
    qrels = load_qrels(folder / "qrels" / f"{split}.tsv", queries, corpus)
    if not qrels:
        raise DataError(f"{folder / 'qrels' / f'{split}.tsv'}: no judgements (a header but no rows)")
    ids = list(qrels)
    return RetrievalData(ids, [queries[q] for q in ids], [qrels[q] for q in ids], corpus, f"{folder.name}-{split}")


KNOWN_RETRIEVAL_DATASETS = {
    "scifact": ["scifact/corpus.jsonl", "scifact/queries.jsonl", "scifact/qrels/train.tsv", "scifact/qrels/test.tsv"],
}


def load_retrieval_dataset(
    name: str, split: str = "test", data_dir: str | Path | None = None, corpus: Corpus | None = None
) -> RetrievalData:
    """Load a known BEIR dataset (``scifact``) from the data root, split ``train`` or ``test``."""
    if name not in KNOWN_RETRIEVAL_DATASETS:
        raise DataError(f"unknown retrieval dataset {name!r}; known: {sorted(KNOWN_RETRIEVAL_DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    root = dataset_root(name, KNOWN_RETRIEVAL_DATASETS[name], data_dir)
    return load_beir(root / name, split, corpus)

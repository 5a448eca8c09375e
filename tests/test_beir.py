"""The BEIR loader: corpus, queries, qrels, RetrievalData, the known scifact layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exotune.data import (
    KNOWN_RETRIEVAL_DATASETS,
    RetrievalData,
    load_beir,
    load_dataset,
    load_retrieval_dataset,
)
from exotune.errors import DataError, DatasetNotFoundError

DOCS = [
    {"_id": "d1", "title": "Red car", "text": "the red car is fast"},
    {"_id": "d2", "title": "", "text": "the blue sky is big"},
    {"_id": "d3", "title": "Leaf", "text": "a green leaf is small"},
    {"_id": "d4", "text": "it was slow today"},  # no title: the text alone
]
QUERIES = [
    {"_id": "q1", "text": "red car", "metadata": {}},
    {"_id": "q2", "text": "blue sky"},
    {"_id": "q3", "text": "green leaf"},
    {"_id": "q4", "text": "slow today"},
    {"_id": "q5", "text": "never judged"},
]
TRAIN = [("q1", "d1", 1), ("q2", "d2", 1), ("q3", "d3", 2), ("q3", "d4", 1)]
TEST = [("q4", "d4", 1)]


def write_beir(folder: Path, docs=DOCS, queries=QUERIES, train=TRAIN, test=TEST) -> Path:
    """A BEIR folder: corpus.jsonl, queries.jsonl, qrels/{train,test}.tsv."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    for split, rows in (("train", train), ("test", test)):
        body = "".join(f"{q}\t{d}\t{s}\n" for q, d, s in rows)
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + body, encoding="utf-8")
    return folder


def test_load_beir(tmp_path):
    data = load_beir(write_beir(tmp_path / "tiny"), "train")
    assert isinstance(data, RetrievalData)
    assert len(data) == 3 and data.query_ids == ["q1", "q2", "q3"]  # only judged queries
    assert data.queries == ["red car", "blue sky", "green leaf"]
    assert data.qrels[2] == {"d3": 2, "d4": 1}
    assert data.positives(2) == ["d3", "d4"]
    assert len(data.corpus) == 4
    # title + " " + text, stripped: the BEIR / sentence-transformers convention
    assert data.corpus.documents() == [
        "Red car the red car is fast",
        "the blue sky is big",
        "Leaf a green leaf is small",
        "it was slow today",
    ]
    assert data.corpus.document("d3") == "Leaf a green leaf is small"
    assert data.name == "tiny-train"
    test = load_beir(tmp_path / "tiny", "test", corpus=data.corpus)
    assert test.corpus is data.corpus and test.query_ids == ["q4"]


def test_zero_grades_are_judged_but_not_relevant(tmp_path):
    data = load_beir(write_beir(tmp_path / "t", train=[("q1", "d1", 1), ("q1", "d2", 0)]), "train")
    assert data.qrels[0] == {"d1": 1, "d2": 0}
    assert data.positives(0) == ["d1"]


def test_subset_split_head(tmp_path):
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(20)]
    train = [(f"q{i}", f"d{1 + i % 4}", 1) for i in range(20)]
    data = load_beir(write_beir(tmp_path / "t", queries=queries, train=train), "train")
    sub = data.subset([3, 1])
    assert sub.query_ids == ["q3", "q1"] and sub.corpus is data.corpus
    rest, held = data.split(0.25, seed=1)
    assert len(held) == 5 and len(rest) == 15
    assert set(rest.query_ids).isdisjoint(held.query_ids)
    assert set(rest.query_ids) | set(held.query_ids) == set(data.query_ids)
    assert held.corpus is data.corpus
    assert data.split(0.25, seed=1)[1].query_ids == held.query_ids
    assert data.split(0.25, seed=2)[1].query_ids != held.query_ids
    assert len(data.head(7)) == 7 and data.head(50) is data
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(DataError, match="fraction"):
            data.split(bad)


def test_corpus_fingerprint_follows_contents(tmp_path):
    a = load_beir(write_beir(tmp_path / "a"), "train").corpus
    b = load_beir(write_beir(tmp_path / "b"), "train").corpus
    changed = [dict(DOCS[0], text="the red car is slow"), *DOCS[1:]]
    c = load_beir(write_beir(tmp_path / "c", docs=changed), "train").corpus
    assert a.fingerprint == b.fingerprint != c.fingerprint


# -- malformed files: file, line and column in the message ------------------------------------


def _corrupt(folder: Path, name: str, content: str) -> None:
    (folder / name).write_text(content, encoding="utf-8")


BAD = [
    (
        "corpus.jsonl",
        '{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "broken\n',
        ["corpus.jsonl", "line 2", "column", "invalid JSON"],
    ),
    (
        "corpus.jsonl",
        '{"_id": "d1", "text": "ok"}\n{"title": "t", "text": "no id"}\n',
        ["corpus.jsonl", "line 2", "'_id'", "missing"],
    ),
    (
        "corpus.jsonl",
        '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n',
        ["corpus.jsonl", "line 2", "duplicate", "line 1"],
    ),
    ("corpus.jsonl", '{"_id": "d1", "title": 3, "text": "a"}\n', ["corpus.jsonl", "line 1", "'title'", "string"]),
    ("corpus.jsonl", '{"_id": "d1", "title": "no text"}\n', ["corpus.jsonl", "line 1", "'text'"]),
    ("corpus.jsonl", '["not", "an", "object"]\n', ["corpus.jsonl", "line 1", "JSON object"]),
    ("queries.jsonl", '{"_id": "q1", "text": "ok"}\n{"_id": "", "text": "x"}\n', ["queries.jsonl", "line 2", "'_id'"]),
    ("queries.jsonl", '{"_id": "q1", "text": "  "}\n', ["queries.jsonl", "line 1", "'text'", "empty"]),
    ("qrels/train.tsv", "q1\td1\t1\n", ["train.tsv", "line 1", "header", "query-id"]),
    ("qrels/train.tsv", "", ["train.tsv", "line 1", "header"]),
    (
        "qrels/train.tsv",
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td1\t1\n",
        ["train.tsv", "line 3", "column 1", "unknown query 'q9'"],
    ),
    (
        "qrels/train.tsv",
        "query-id\tcorpus-id\tscore\nq1\tdx\t1\n",
        ["train.tsv", "line 2", "column 2", "unknown document 'dx'"],
    ),
    ("qrels/train.tsv", "query-id\tcorpus-id\tscore\nq1\td1\thigh\n", ["train.tsv", "line 2", "column 3", "'high'"]),
    ("qrels/train.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t-1\n", ["train.tsv", "line 2", "column 3", "'-1'"]),
    ("qrels/train.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t0.5\n", ["train.tsv", "line 2", "column 3"]),
    ("qrels/train.tsv", "query-id\tcorpus-id\tscore\nq1 d1 1\n", ["train.tsv", "line 2", "cells"]),
    ("qrels/train.tsv", "query-id\tcorpus-id\tscore\n", ["train.tsv", "no judgements"]),
]


@pytest.mark.parametrize(("name", "content", "fragments"), BAD, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD)])
def test_malformed_files(tmp_path, name, content, fragments):
    folder = write_beir(tmp_path / "t")
    _corrupt(folder, name, content)
    with pytest.raises(DataError) as info:
        load_beir(folder, "train")
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_file_and_bad_utf8(tmp_path):
    folder = write_beir(tmp_path / "t")
    (folder / "qrels" / "test.tsv").unlink()
    with pytest.raises(DataError, match="test.tsv: file not found"):
        load_beir(folder, "test")
    (folder / "queries.jsonl").write_bytes(b'{"_id": "q1", "text": "ok"}\n{"_id": "q2", "text": "\xff"}\n')
    with pytest.raises(DataError, match="line 2.*UTF-8"):
        load_beir(folder, "train")


# -- the known dataset ------------------------------------------------------------------------


def test_load_retrieval_dataset_from_data_dir_and_env(tmp_path, monkeypatch):
    write_beir(tmp_path / "scifact")
    data = load_retrieval_dataset("scifact", "test", tmp_path)
    assert data.name == "scifact-test" and data.query_ids == ["q4"]
    monkeypatch.setenv("EXOTUNE_DATA", str(tmp_path))
    assert load_retrieval_dataset("scifact", "train").query_ids == ["q1", "q2", "q3"]


def test_load_retrieval_dataset_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_retrieval_dataset("scifact", "test", tmp_path)
    assert str(tmp_path / "scifact") in str(info.value) and "EXOTUNE_DATA" in str(info.value)
    assert "scifact/corpus.jsonl" in str(info.value)
    with pytest.raises(DataError, match="unknown retrieval dataset 'nfcorpus'"):
        load_retrieval_dataset("nfcorpus", "test", tmp_path)
    with pytest.raises(DataError, match="split"):
        load_retrieval_dataset("scifact", "dev", tmp_path)
    with pytest.raises(DataError, match="retrieval"):
        load_dataset("scifact", "test", tmp_path)  # the classification loader points the way
    assert sorted(KNOWN_RETRIEVAL_DATASETS) == ["scifact"]


@pytest.mark.real
def test_real_scifact(shared_data):
    folder = shared_data / "scifact"
    n_docs = sum(1 for line in (folder / "corpus.jsonl").read_text().splitlines() if line.strip())
    expected = {}
    for split in ("train", "test"):
        rows = [line.split("\t") for line in (folder / "qrels" / f"{split}.tsv").read_text().splitlines()[1:] if line]
        expected[split] = (len({r[0] for r in rows}), len(rows))
    train = load_retrieval_dataset("scifact", "train", shared_data)
    test = load_retrieval_dataset("scifact", "test", shared_data, corpus=train.corpus)
    assert len(train.corpus) == n_docs == 5183
    assert (len(test), sum(len(q) for q in test.qrels)) == expected["test"] == (300, 339)
    assert (len(train), sum(len(q) for q in train.qrels)) == expected["train"] == (809, 919)
    assert set(train.query_ids).isdisjoint(test.query_ids)

"""Loaders of labelled text: files, the shared dataset layouts, TextLabelData, HF datasets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from exotune.data import (
    DATA_ENV,
    TextLabelData,
    data_root,
    from_hf_dataset,
    load_dataset,
    load_text_file,
)
from exotune.errors import DataError, DatasetNotFoundError, ExotuneError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# -- good files -----------------------------------------------------------------------------


GOOD_FILES = {
    "data.csv": 'text,label\nhello there,pos\n"a, quoted",neg\nbye now,pos\n',
    "data.tsv": "text\tlabel\nhello there\tpos\na, quoted\tneg\nbye now\tpos\n",
    "data.jsonl": (
        '{"text": "hello there", "label": "pos"}\n'
        "\n"
        '{"text": "a, quoted", "label": "neg"}\n'
        '{"text": "bye now", "label": "pos"}\n'
    ),
}


@pytest.mark.parametrize("name", sorted(GOOD_FILES))
def test_load_text_file_formats(tmp_path, name):
    data = load_text_file(write(tmp_path / name, GOOD_FILES[name]))
    assert data.texts == ["hello there", "a, quoted", "bye now"]
    assert data.label_names == ["neg", "pos"]  # sorted when not given
    assert data.labels == [1, 0, 1]
    assert all(isinstance(y, int) for y in data.labels)
    assert len(data) == 3
    assert data.name == "data"


def test_load_text_file_explicit_label_names(tmp_path):
    path = write(tmp_path / "d.csv", "text,label\nhello,pos\nbye,neg\n")
    data = load_text_file(path, label_names=["pos", "neg", "other"])
    assert data.label_names == ["pos", "neg", "other"]
    assert data.labels == [0, 1]


def test_load_text_file_integer_labels_as_indices(tmp_path):
    path = write(tmp_path / "d.tsv", "label\tsentence\n0\tbad film\n1\tgood film\n1\tfine\n")
    data = load_text_file(path, "sentence", "label", ["negative", "positive"])
    assert data.labels == [0, 1, 1]
    assert data.label_names == ["negative", "positive"]


def test_load_text_file_jsonl_integer_labels(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"t": "x", "y": 1}\n{"t": "z", "y": 0}\n')
    data = load_text_file(path, "t", "y", ["a", "b"])
    assert data.texts == ["x", "z"]
    assert data.labels == [1, 0]


def test_load_text_file_custom_columns_and_bom(tmp_path):
    path = write(tmp_path / "d.csv", "\ufeffid,body,cat\n1,hi,x\n2,yo,y\n")
    data = load_text_file(path, "body", "cat")
    assert data.texts == ["hi", "yo"]
    assert data.label_names == ["x", "y"]


# -- bad files ------------------------------------------------------------------------------

# (file name, content, keyword arguments, fragments the message must contain besides the path)
BAD_FILES = [
    pytest.param("d.csv", "text,category\nhello,a\n", {}, ["line 2", "'label'"], id="csv-missing-column"),
    pytest.param("d.tsv", "text\tcat\nhello\ta\n", {}, ["line 2", "'label'"], id="tsv-missing-column"),
    pytest.param(
        "d.jsonl",
        '{"text": "a", "label": "x"}\n{"text": "b"}\n',
        {},
        ["line 2", "'label'"],
        id="jsonl-missing-column",
    ),
    pytest.param("d.csv", "", {}, ["line 1", "empty"], id="empty-file"),
    pytest.param("d.tsv", "", {}, ["line 1", "empty"], id="empty-tsv"),
    pytest.param("d.csv", "text,label\n", {}, ["no examples"], id="header-no-rows"),
    pytest.param("d.jsonl", "\n\n", {}, ["no examples"], id="jsonl-no-rows"),
    pytest.param(
        "d.csv",
        "text,label\nhello,a\nbye,zzz\n",
        {"label_names": ["a", "b"]},
        ["line 3", "'label'", "'zzz'"],
        id="unknown-label",
    ),
    pytest.param(
        "d.csv",
        "text,label\nhello,a\nbye,5\n",
        {"label_names": ["a", "b"]},
        ["line 3", "'label'", "'5'"],
        id="label-index-out-of-range",
    ),
    pytest.param("d.csv", "text,label\nhello,a\n  ,b\n", {}, ["line 3", "'text'"], id="empty-text"),
    pytest.param(
        "d.jsonl",
        '{"text": "a", "label": "x"}\n{"text": "", "label": "x"}\n',
        {},
        ["line 2", "'text'"],
        id="jsonl-empty-text",
    ),
    pytest.param("d.jsonl", '{"text": 5, "label": "x"}\n', {}, ["line 1", "'text'"], id="jsonl-non-text"),
    pytest.param("d.csv", "text,label\nhello,\n", {}, ["line 2", "'label'", "empty label"], id="empty-label"),
    pytest.param(
        "d.csv",
        b"text,label\nhello,a\n\xff\xfe bad,b\n",
        {},
        ["line 3", "UTF-8"],
        id="invalid-utf8",
    ),
    pytest.param(
        "d.jsonl",
        '{"text": "a", "label": "x"}\n{"text": "b", "label": \n',
        {},
        ["line 2", "column", "invalid JSON"],
        id="invalid-json",
    ),
    pytest.param(
        "d.jsonl",
        '{"text": "a", "label": "x"}\n["b", "x"]\n',
        {},
        ["line 2", "JSON object"],
        id="jsonl-not-object",
    ),
    pytest.param(
        "d.csv",
        "text,label\nhello,a\nbye,b,extra\n",
        {},
        ["line 3", "3 cells", "header has 2"],
        id="too-many-cells",
    ),
    pytest.param("d.tsv", "text\tlabel\nhello\ta\tb\n", {}, ["line 2", "3 cells"], id="tsv-too-many-cells"),
    pytest.param("d.txt", "text,label\nhello,a\n", {}, ["unsupported", "'.txt'"], id="unsupported-suffix"),
]


@pytest.mark.parametrize(("name", "content", "kwargs", "fragments"), BAD_FILES)
def test_load_text_file_errors(tmp_path, name, content, kwargs, fragments):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as info:
        load_text_file(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ExotuneError)


def test_load_text_file_not_found(tmp_path):
    path = tmp_path / "missing.csv"
    with pytest.raises(DataError, match="file not found") as info:
        load_text_file(path)
    assert str(path) in str(info.value)


# -- TextLabelData --------------------------------------------------------------------------


def balanced(n_per_class: int = 10, n_classes: int = 3) -> TextLabelData:
    texts = [f"text {c} {i}" for c in range(n_classes) for i in range(n_per_class)]
    labels = [c for c in range(n_classes) for _ in range(n_per_class)]
    return TextLabelData(texts, labels, [f"c{c}" for c in range(n_classes)], "toy")


def test_text_label_data_length_mismatch():
    with pytest.raises(DataError, match="2 texts but 1 labels"):
        TextLabelData(["a", "b"], [0], ["x"])


@pytest.mark.parametrize("bad", [2, -1])
def test_text_label_data_label_out_of_range(bad):
    with pytest.raises(DataError, match=f"label index {bad}"):
        TextLabelData(["a", "b"], [0, bad], ["x", "y"])


def test_split_is_stratified_disjoint_and_complete():
    data = balanced(10, 3)
    rest, held = data.split(0.2, seed=0)
    assert len(held) == 6
    assert len(rest) == 24
    assert set(rest.texts).isdisjoint(held.texts)
    assert sorted(rest.texts + held.texts) == sorted(data.texts)
    assert Counter(held.labels) == {0: 2, 1: 2, 2: 2}
    assert Counter(rest.labels) == {0: 8, 1: 8, 2: 8}
    assert rest.label_names == held.label_names == data.label_names
    # labels still belong to their texts
    pairs = set(zip(data.texts, data.labels, strict=True))
    assert set(zip(held.texts, held.labels, strict=True)) <= pairs
    assert set(zip(rest.texts, rest.labels, strict=True)) <= pairs
    assert held.name == "toy[val]"
    assert rest.name == "toy[train]"


def test_split_is_deterministic_per_seed():
    data = balanced(20, 4)
    a_rest, a_held = data.split(0.2, seed=7)
    b_rest, b_held = data.split(0.2, seed=7)
    assert a_held.texts == b_held.texts
    assert a_rest.texts == b_rest.texts
    helds = {tuple(data.split(0.2, seed=s)[1].texts) for s in range(5)}
    assert len(helds) > 1  # another seed gives another split


def test_split_with_singleton_class_falls_back_to_random():
    data = TextLabelData([f"t{i}" for i in range(11)], [0] * 10 + [1], ["a", "b"])
    rest, held = data.split(0.2, seed=0)
    assert len(rest) + len(held) == 11
    assert set(rest.texts).isdisjoint(held.texts)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_bad_fraction(fraction):
    with pytest.raises(DataError, match="fraction"):
        balanced().split(fraction)


def test_head():
    data = balanced(10, 3)
    sample = data.head(5, seed=1)
    assert len(sample) == 5
    assert set(sample.texts) <= set(data.texts)
    assert len(set(sample.texts)) == 5
    assert sample.texts == data.head(5, seed=1).texts
    assert sample.label_names == data.label_names
    assert data.head(30) is data
    assert data.head(100) is data


def test_subset():
    data = balanced(2, 2)
    sub = data.subset([3, 0], name="sub")
    assert sub.texts == [data.texts[3], data.texts[0]]
    assert sub.labels == [1, 0]
    assert sub.name == "sub"


# -- known datasets -------------------------------------------------------------------------


def fake_banking77(root: Path, n: int = 2) -> Path:
    folder = root / "banking77"
    folder.mkdir(parents=True)
    (folder / "categories.json").write_text(json.dumps(["card_arrival", "lost_card"]))
    rows = "".join(f"text {i},{'card_arrival' if i % 2 else 'lost_card'}\n" for i in range(n))
    (folder / "train.csv").write_text("text,category\n" + rows)
    (folder / "test.csv").write_text("text,category\nwhere is my card,card_arrival\n")
    return root


def test_load_dataset_unknown_name(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'imdb'"):
        load_dataset("imdb", data_dir=tmp_path)


@pytest.mark.parametrize("split", ["dev", "validation", ""])
def test_load_dataset_bad_split(tmp_path, split):
    with pytest.raises(DataError, match="split"):
        load_dataset("banking77", split, data_dir=tmp_path)


@pytest.mark.parametrize("name", ["banking77", "sst2"])
def test_load_dataset_missing_folder(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, "train", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / name) in message
    assert DATA_ENV == "EXOTUNE_DATA"
    assert "EXOTUNE_DATA" in message
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, ExotuneError)


def test_load_dataset_fake_banking77(tmp_path):
    fake_banking77(tmp_path, n=4)
    train = load_dataset("banking77", "train", tmp_path)
    assert len(train) == 4
    assert train.label_names == ["card_arrival", "lost_card"]  # order of categories.json
    assert train.labels == [1, 0, 1, 0]
    assert train.name == "banking77-train"
    test = load_dataset("banking77", "test", tmp_path)
    assert test.texts == ["where is my card"]
    assert test.name == "banking77-test"


def test_load_dataset_missing_file_in_folder(tmp_path):
    fake_banking77(tmp_path)
    (tmp_path / "banking77" / "test.csv").unlink()
    with pytest.raises(DataError, match="test.csv"):
        load_dataset("banking77", "test", tmp_path)


def test_data_root_precedence(tmp_path, monkeypatch):
    arg, env, cwd = tmp_path / "arg", tmp_path / "env", tmp_path / "cwd"
    for root in (arg, env, cwd / "datasets"):
        root.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert data_root() == Path("datasets")
    monkeypatch.setenv(DATA_ENV, str(env))
    assert data_root() == env
    assert data_root(arg) == arg
    assert data_root(str(arg)) == arg
    monkeypatch.setenv(DATA_ENV, "")
    assert data_root() == Path("datasets")


def test_load_dataset_root_precedence(tmp_path, monkeypatch):
    arg, env, cwd = tmp_path / "arg", tmp_path / "env", tmp_path / "cwd"
    fake_banking77(arg, n=2)
    fake_banking77(env, n=4)
    fake_banking77(cwd / "datasets", n=6)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert len(load_dataset("banking77")) == 6  # ./datasets
    monkeypatch.setenv(DATA_ENV, str(env))
    assert len(load_dataset("banking77")) == 4  # $EXOTUNE_DATA beats ./datasets
    assert len(load_dataset("banking77", data_dir=arg)) == 2  # the argument beats both


def test_load_dataset_not_found_names_env_root(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("banking77")
    assert str(tmp_path / "nowhere" / "banking77") in str(info.value)


# -- the real shared datasets ---------------------------------------------------------------

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared datasets not at {SHARED}")


@pytest.mark.real
@needs_shared
def test_real_banking77():
    train = load_dataset("banking77", "train", SHARED)
    assert len(train) == 10003
    assert len(train.label_names) == 77
    assert len(set(train.labels)) == 77
    assert train.label_names[0] == "card_arrival"
    test = load_dataset("banking77", "test", SHARED)
    assert len(test) == 3080
    assert test.label_names == train.label_names


@pytest.mark.real
@needs_shared
def test_real_sst2_train():
    train = load_dataset("sst2", "train", SHARED)
    assert len(train) == 67349
    assert train.label_names == ["negative", "positive"]
    assert set(train.labels) == {0, 1}


@pytest.mark.real
@needs_shared
def test_real_sst2_test():
    test = load_dataset("sst2", "test", SHARED)
    assert len(test) == 872
    assert test.label_names == ["negative", "positive"]
    assert test.name == "sst2-test"


# -- Hugging Face datasets ------------------------------------------------------------------


class FakeClassLabel:
    def __init__(self, names):
        self.names = names


class FakeValue:
    dtype = "string"


class FakeHFDataset:
    def __init__(self, columns: dict[str, list], features: dict):
        self._columns = columns
        self.column_names = list(columns)
        self.features = features

    def __getitem__(self, col):
        return list(self._columns[col])


def test_from_hf_dataset_class_label():
    ds = FakeHFDataset(
        {"text": ["good", "bad", "fine"], "label": [1, 0, 1], "idx": [0, 1, 2]},
        {
            "text": FakeValue(),
            "label": FakeClassLabel(["negative", "positive"]),
            "idx": FakeValue(),
        },
    )
    data = from_hf_dataset(ds)
    assert isinstance(data, TextLabelData)
    assert data.texts == ["good", "bad", "fine"]
    assert data.labels == [1, 0, 1]
    assert data.label_names == ["negative", "positive"]


def test_from_hf_dataset_string_labels_and_custom_columns():
    ds = FakeHFDataset(
        {"sentence": ["a", "b", "c"], "intent": ["pay", "card", "pay"]},
        {"sentence": FakeValue(), "intent": FakeValue()},
    )
    data = from_hf_dataset(ds, text_column="sentence", label_column="intent")
    assert data.texts == ["a", "b", "c"]
    assert data.label_names == ["card", "pay"]
    assert data.labels == [1, 0, 1]


@pytest.mark.parametrize(
    ("text_column", "label_column", "missing"),
    [("body", "label", "body"), ("text", "target", "target")],
)
def test_from_hf_dataset_missing_column(text_column, label_column, missing):
    ds = FakeHFDataset({"text": ["a"], "label": [0]}, {"text": FakeValue(), "label": FakeClassLabel(["x"])})
    with pytest.raises(DataError, match=f"no column '{missing}'"):
        from_hf_dataset(ds, text_column, label_column)


def test_from_hf_dataset_label_out_of_range():
    ds = FakeHFDataset({"text": ["a"], "label": [3]}, {"text": FakeValue(), "label": FakeClassLabel(["x"])})
    with pytest.raises(DataError, match="label index 3"):
        from_hf_dataset(ds)


# -- regressions ---------------------------------------------------------------------------


def test_invalid_utf8_line_number_after_bom(tmp_path):
    path = write(tmp_path / "d.csv", b"\xef\xbb\xbftext,label\nhello,a\n\xff\xfe bad,b\n")
    with pytest.raises(DataError) as info:
        load_text_file(path)
    assert "line 3" in str(info.value)


def test_split_large_fraction_small_data():
    data = balanced(5, 2)
    try:
        rest, held = data.split(0.9, seed=0)
    except DataError:
        return  # a clear DataError is acceptable too
    assert len(rest) + len(held) == 10
    assert set(rest.texts).isdisjoint(held.texts)

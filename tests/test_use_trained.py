"""Using what was trained: from_pretrained without a box, encode(), embed, predict and eval
files, label codes named by --label-names."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from exotune.cli import main
from exotune.errors import ConfigError, DataError, SpecMismatchError
from exotune.tasks.classification import TextClassifier
from exotune.tasks.retrieval import DualEncoder

from .conftest import build_tiny_backbone, colour_data

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = ["red", "blue", "green"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_backbone):
    """A classifier adapter saved from a box loaded off the tiny backbone's folder."""
    from exotune.boxes import load_box

    box = load_box(str(tiny_backbone), pooling="mean", normalize=False)
    folder = tmp_path_factory.mktemp("adapter") / "best"
    model = TextClassifier(box, colour_data(12).label_names)
    model.save_pretrained(folder)
    return folder, model


def codes_file(path, n=12, suffix=".csv"):
    rows = [(f"the car is {COLOURS[i % 3]}", str(i % 3)) for i in range(n)]
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    else:
        path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return path


# -- from_pretrained without a box ----------------------------------------------------------------


def test_from_pretrained_loads_the_box_the_adapter_names(trained, tiny_backbone):
    folder, model = trained
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["box_source"] == {"backbone": str(tiny_backbone.resolve())}
    again = TextClassifier.from_pretrained(folder)  # no box: the recorded backbone folder
    texts = ["the sky is blue", "a red car"]
    assert torch.allclose(again.predict_proba(texts), model.predict_proba(texts), atol=1e-6)


def edited_copy(folder, target, source: dict | None):
    """A copy of the adapter ``folder`` whose config records ``source`` as its box's (None:
    none, as saved before sources were recorded), its checksums written again."""
    from exotune.artifacts import write_checksums

    target.mkdir()
    for f in folder.iterdir():
        target.joinpath(f.name).write_bytes(f.read_bytes())
    cfg = json.loads((target / "adapter_config.json").read_text())
    cfg.pop("box_source")
    if source is not None:
        cfg["box_source"] = source
    (target / "adapter_config.json").write_text(json.dumps(cfg))
    write_checksums(target)
    return target


def test_from_pretrained_without_a_source_tries_the_default_and_checks_the_fingerprint(trained, tmp_path, monkeypatch):
    from exotune.boxes import load_box, loading

    copy = edited_copy(trained[0], tmp_path / "old", None)
    other = load_box(str(build_tiny_backbone(tmp_path / "other", seed=1)), pooling="mean", normalize=False)
    asked = []
    monkeypatch.setattr(loading, "load_box", lambda name=None, **kw: asked.append((name, kw)) or other)
    with pytest.raises(SpecMismatchError, match="trained against box"):
        TextClassifier.from_pretrained(copy)  # not the box it was trained on: refused, as with any box
    assert asked == [(None, {"pooling": "mean", "normalize": False})]  # None: the packaged default


def test_a_served_source_is_never_connected_to_from_the_folder(trained, tmp_path):
    copy = edited_copy(trained[0], tmp_path / "served", {"remote": "http://attacker.invalid:8000"})
    with pytest.raises(ConfigError, match="pass remote=URL"):
        TextClassifier.from_pretrained(copy)


def test_box_and_remote_together_are_refused(trained, tiny_box):
    with pytest.raises(ConfigError, match="not both"):
        TextClassifier.from_pretrained(trained[0], tiny_box, remote="http://127.0.0.1:1")


# -- encode ----------------------------------------------------------------------------------------


def test_encode_like_sentence_transformers(trained):
    _, model = trained
    texts = ["the sky is blue", "a red car", "green leaf"]
    out = model.encode(texts, batch_size=2)
    assert isinstance(out, np.ndarray) and out.shape == (3, model.box.spec.output_dim)
    expected = model.encoder.encode(texts)
    assert np.allclose(out, expected.numpy(), atol=1e-6)
    normed = model.encode(texts, normalize=True, convert_to="torch")
    assert isinstance(normed, torch.Tensor)
    assert torch.allclose(normed.norm(dim=-1), torch.ones(3), atol=1e-5)
    one = model.encode("a red car")
    assert one.shape == (model.box.spec.output_dim,) and np.allclose(one, out[1], atol=1e-6)
    with pytest.raises(ConfigError, match="convert_to"):
        model.encode(texts, convert_to="list")
    with pytest.raises(ConfigError, match="batch_size"):
        model.encode(texts, batch_size=0)


def test_retriever_encodes_with_its_query_tower(tiny_box, tmp_path):
    model = DualEncoder(tiny_box)
    model.save_pretrained(tmp_path / "r")
    again = DualEncoder.from_pretrained(tmp_path / "r")
    texts = ["red car", "the blue sky"]
    out = again.encode(texts, normalize=True, convert_to="torch")
    assert torch.allclose(out, model.encode_queries(texts), atol=1e-5)


# -- the commands ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".jsonl"])
def test_embed_command(trained, tmp_path, suffix):
    folder, model = trained
    texts = tmp_path / "texts.txt"
    texts.write_text("the sky is blue\na red car\n")
    out = tmp_path / f"emb{suffix}"
    assert main(["embed", "--adapter", str(folder), "--input-file", str(texts), "--output", str(out), "--quiet"]) == 0
    expected = model.encode(["the sky is blue", "a red car"])
    if suffix == ".npy":
        got = np.load(out, allow_pickle=False)
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["text"] for r in rows] == ["the sky is blue", "a red car"]
        got = np.array([r["embedding"] for r in rows])
    assert np.allclose(got, expected, atol=1e-5)


def test_embed_reads_a_column_and_refuses_parquet_without_pyarrow(trained, tmp_path, capsys):
    folder, _ = trained
    data = codes_file(tmp_path / "in.jsonl", n=3, suffix=".jsonl")
    out = tmp_path / "emb.npy"
    assert main(["embed", "--adapter", str(folder), "--input-file", str(data), "--output", str(out), "--quiet"]) == 0
    assert np.load(out).shape[0] == 3
    assert (
        main(
            [
                "embed",
                "--adapter",
                str(folder),
                "--input-file",
                str(data),
                "--output",
                str(out),
                "--text-column",
                "body",
            ]
        )
        == 2
    )
    assert "no column 'body'" in capsys.readouterr().err
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert (
            main(
                ["embed", "--adapter", str(folder), "--input-file", str(data), "--output", str(tmp_path / "e.parquet")]
            )
            == 2
        )
        assert "pip install pyarrow" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predict_writes_label_probability_and_top_k(trained, tmp_path, suffix):
    folder, model = trained
    data = codes_file(tmp_path / f"in{suffix}", n=4, suffix=suffix)
    out = tmp_path / f"pred{suffix}"
    assert (
        main(["predict", "--adapter", str(folder), "--input-file", str(data), "--output", str(out), "--top-k", "2"])
        == 0
    )
    if suffix == ".csv":
        with out.open() as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            r["top_k"], r["probability"] = json.loads(r["top_k"]), float(r["probability"])
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [f"the car is {COLOURS[i % 3]}" for i in range(4)]
    probs = model.predict_proba(texts)
    assert [r["text"] for r in rows] == texts
    for r, p in zip(rows, probs, strict=True):
        assert r["label"] == model.label_names[int(p.argmax())]
        assert r["probability"] == pytest.approx(float(p.max()), abs=1e-5)
        assert len(r["top_k"]) == 2 and r["top_k"][0]["label"] == r["label"]


def test_eval_writes_a_class_report_and_confusion_matrix(trained, tmp_path):
    folder, model = trained
    data = codes_file(tmp_path / "test.csv", n=12)
    report = tmp_path / "report"
    assert (
        main(
            [
                "eval",
                "--adapter",
                str(folder),
                "--file",
                str(data),
                "--label-names",
                "red,blue,green",
                "--report-dir",
                str(report),
                "--json",
            ]
        )
        == 0
    )
    metrics = json.loads((report / "metrics.json").read_text())
    with (report / "per_class.csv").open() as f:
        per_class = list(csv.DictReader(f))
    assert sorted(r["label"] for r in per_class) == sorted(COLOURS)
    assert sum(int(r["support"]) for r in per_class) == 12
    with (report / "confusion_matrix.csv").open() as f:
        matrix = list(csv.reader(f))
    assert matrix[0][1:] == model.label_names
    cells = np.array([[int(v) for v in row[1:]] for row in matrix[1:]])
    assert cells.sum() == 12 and np.trace(cells) / 12 == pytest.approx(metrics["accuracy"])
    pytest.importorskip("matplotlib")
    assert (report / "confusion_matrix.png").stat().st_size > 0


# -- label codes ----------------------------------------------------------------------------------


def test_label_names_turn_codes_into_names(tmp_path):
    from exotune.data.text import load_text_file, read_label_map

    data = codes_file(tmp_path / "codes.csv")
    assert load_text_file(data).label_names == ["0", "1", "2"]  # without names: the codes
    named = load_text_file(data, label_map=read_label_map("red,blue,green"))
    assert named.label_names == COLOURS and named.labels[:3] == [0, 1, 2]
    (tmp_path / "map.json").write_text(json.dumps({"0": "red", "1": "blue", "2": "green"}))
    assert load_text_file(data, label_map=read_label_map(str(tmp_path / "map.json"))).label_names == COLOURS
    (tmp_path / "names.txt").write_text("red\nblue\ngreen\n")
    assert load_text_file(data, label_map=read_label_map(str(tmp_path / "names.txt"))).label_names == COLOURS
    with pytest.raises(DataError, match="label code '2' is not among"):
        load_text_file(data, label_map=read_label_map("red,blue"))
    with pytest.raises(DataError, match="two codes"):
        read_label_map("red,red")
    with pytest.raises(DataError, match="does not exist"):
        read_label_map("missing/names.txt")


def test_a_served_box_is_recorded_by_its_url_without_credentials():
    from exotune.tasks.artifacts import box_source

    class Served:
        url = "https://user:secret@box.example:8443/v1?key=abc"

    assert box_source(Served()) == {"remote": "https://box.example:8443/v1"}

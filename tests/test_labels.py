"""Labels matched by name wherever data meets a trained model: ``exotune eval`` and ``ea report``
take the model's labels in another order or a subset of them, and refuse unknown ones by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exotune.cli import main
from exotune.data import TextLabelData
from exotune.errors import DataError

from .conftest import colour_data
from .ea_fakes import FakeOpenAI, colour_task, ea_fit, one_blas_thread  # noqa: F401


def test_aligned_to_maps_by_name_and_names_the_unknown():
    data = TextLabelData(["a", "b", "c"], [0, 1, 0], ["blue", "red"], "f")
    same, classes = data.aligned_to(["red", "blue", "green"])
    assert same.labels == [1, 0, 1] and same.label_names == ["red", "blue", "green"] and classes == [1, 0]
    assert data.aligned_to(["blue", "red"])[0] is data
    with pytest.raises(DataError, match="'purple'"):
        TextLabelData(["a"], [0], ["purple"], "f").aligned_to(["red", "blue"])


def write(path, data, keep=None, order=None):
    """``data`` as CSV: rows whose label is in ``keep``; label names are the file's own."""
    rows = [
        (t, data.label_names[y])
        for t, y in zip(data.texts, data.labels, strict=True)
        if keep is None or data.label_names[y] in keep
    ]
    if order:  # the loader numbers labels in the order it meets them: put ``order`` first
        rows.sort(key=lambda r: order.index(r[1]))
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return path


@pytest.fixture
def adapter(tiny_box, tmp_path):
    from exotune import TextClassifier

    model = TextClassifier(tiny_box, ["red", "blue", "green"], None)
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_eval_matches_labels_by_name(adapter, tiny_backbone, tmp_path, capsys):
    data = colour_data(60)
    base = ["eval", "--adapter", str(adapter), "--backbone", str(tiny_backbone), "--json"]
    assert main([*base, "--file", str(write(tmp_path / "all.csv", data))]) == 0
    first = json.loads(capsys.readouterr().out)
    reordered = write(tmp_path / "re.csv", data, order=["green", "red", "blue"])
    assert main([*base, "--file", str(reordered)]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(first)
    assert main([*base, "--file", str(write(tmp_path / "sub.csv", data, keep={"red", "blue"}))]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["accuracy"])
    other = tmp_path / "other.csv"
    other.write_text("text,label\nthe sky is red,red\nthe car is teal,teal\n")
    assert main([*base, "--file", str(other)]) == 2
    err = capsys.readouterr().err
    assert "'teal'" in err and "Traceback" not in err


def test_ea_report_matches_labels_by_name(tmp_path, capsys):
    train, test = colour_task(60, seed=1), colour_task(30, seed=3)
    out = tmp_path / "ea"
    with FakeOpenAI() as server:
        lm = ["--lm", "openai-chat", "--base-url", server.base_url, "--model", "fake", "--max-retries", "1"]
        assert ea_fit(write(tmp_path / "train.csv", train), lm, out) == 0
        capsys.readouterr()
        names = list(test.label_names)
        for name, keep, order in (("re", None, names[::-1]), ("sub", set(names[:2]), None)):
            path = write(tmp_path / f"{name}.csv", test, keep, order)
            assert (
                main(
                    [
                        "ea",
                        "report",
                        "--adapter",
                        str(out),
                        "--file",
                        str(path),
                        "--no-compare",
                        "--trust-folder-lm",
                        "--out-dir",
                        str(tmp_path / f"rep-{name}"),
                    ]
                )
                == 0
            ), capsys.readouterr().err
        unknown = tmp_path / "unknown.csv"
        unknown.write_text("text,label\nthe cup is red item1,red\nthe cup is teal item2,teal\n")
        assert (
            main(["ea", "report", "--adapter", str(out), "--file", str(unknown), "--no-compare", "--trust-folder-lm"])
            == 2
        )
        assert "'teal'" in capsys.readouterr().err


def test_one_class_file_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import exotune.boxes

    monkeypatch.setattr(exotune.boxes, "load_box", lambda *a, **k: pytest.fail("the model was loaded"))
    path = tmp_path / "one.csv"
    path.write_text("text,label\n" + "".join(f"text {i},red\n" for i in range(10)))
    assert main(["train", "--file", str(path), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "1 class(es) (red)" in err


def test_missing_column_names_the_columns_and_the_flag(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("sentence,label\nthe sky,blue\n")
    assert main(["eval", "--file", str(path), "--zero-shot"]) == 2
    err = capsys.readouterr().err
    assert "['label', 'sentence']" in err and "--text-column" in err

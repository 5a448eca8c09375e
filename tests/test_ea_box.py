"""EA with a box loaded here as the black box (``--lm box``): its device and the precision of
the probe's box calls."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import exotune.boxes
from exotune.boxes import load_box
from exotune.cli import main
from exotune.ea import ServedBoxClient

from .conftest import colour_data
from .ea_fakes import ea_fit, write_csv

LABELS = ["red", "blue", "green"]
TEXTS = ["the car is red", "a blue sky", "green leaf is small"]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def test_a_box_here_scores_as_a_served_one(tiny_backbone):
    box = load_box(str(tiny_backbone), access="black")
    outs = ServedBoxClient(box=box, returns="scores", max_retries=0).run(TEXTS, LABELS)
    z = torch.nn.functional.normalize(box.encode(TEXTS), dim=-1)
    p = torch.nn.functional.normalize(box.encode(LABELS), dim=-1)
    assert [o.label for o in outs] == (z @ p.T).argmax(1).tolist()
    assert all(np.isclose(o.scores.sum(), 1.0) for o in outs)


def test_a_bf16_box_keeps_its_answers_apart_in_the_cache(tiny_backbone):
    exact = ServedBoxClient(box=load_box(str(tiny_backbone), access="black"))
    fast = ServedBoxClient(box=load_box(str(tiny_backbone), access="black", precision="bf16"))
    assert "precision" not in exact.describe() and fast.describe()["precision"] == "bf16"
    assert {k: v for k, v in fast.describe().items() if k != "precision"} == exact.describe()


def write_train(path):
    data = colour_data(60, seed=1)
    return write_csv(path, data), data


def test_ea_fit_and_predict_with_a_box_here_in_bf16(tiny_backbone, tmp_path, capsys, monkeypatch):
    seen = []

    def spy(name, **kwargs):
        seen.append(kwargs)
        return load_box(name, **kwargs)

    monkeypatch.setattr(exotune.boxes, "load_box", spy)
    train, data = write_train(tmp_path / "train.csv")
    out = tmp_path / "ea"
    lm = ["--lm", "box", "--model", str(tiny_backbone), "--returns", "scores", "--device", "cpu", "--precision", "bf16"]
    assert ea_fit(train, lm, out) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["precision"] == "bf16" and summary["device"] == "cpu" and summary["probe"]["calls"] == 60
    assert seen[-1] == {"access": "black", "device": "cpu", "precision": "bf16"}
    saved = json.loads((out / "lm.json").read_text())
    assert saved["lm"] == "box" and "precision" not in saved and "device" not in saved  # run-time choices
    assert (
        main(["ea", "predict", "--adapter", str(out), "--text", "the car is red", "--model", str(tiny_backbone)]) == 0
    )
    assert capsys.readouterr().out.split("\t")[0] in data.label_names
    assert seen[-1]["precision"] == "fp32"  # the adapter does not keep the precision: fp32 unless asked


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lm", "served-box", "--base-url", "http://127.0.0.1:9", "--precision", "bf16"], "place a box loaded here"),
        (["--lm", "openai-chat", "--model", "m", "--device", "cpu"], "place a box loaded here"),
        (["--lm", "box", "--base-url", "http://127.0.0.1:9"], "--base-url is for a served one"),
        pytest.param(["--lm", "box", "--device", "cuda"], "asks for a CUDA GPU", marks=no_cuda),
    ],
)
def test_ea_device_and_precision_mistakes_are_clear(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setattr(exotune.boxes, "load_box", lambda *a, **k: pytest.fail("the model was loaded"))
    train, _ = write_train(tmp_path / "train.csv")
    assert main(["ea", "fit", "--file", str(train), *extra, "--output-dir", str(tmp_path / "ea")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err

"""Model cards: every adapter and EA folder carries a README.md (YAML front matter, then
Markdown) listed in its checksums, with what it adapts, the data, metrics and command."""

from __future__ import annotations

import json

import pytest

from exotune.artifacts import CHECKSUMS_NAME, verify_folder
from exotune.cards import CARD_NAME, card_context, model_card
from exotune.cli import main
from exotune.errors import ArtifactError
from exotune.tasks.classification import TextClassifier
from exotune.tasks.retrieval import DualEncoder

from .conftest import colour_data

pytestmark = pytest.mark.usefixtures("one_thread")


def front_matter(card: str) -> dict:
    """The YAML front matter's keys and values (each value a JSON scalar or list, valid YAML)."""
    lines = card.splitlines()
    assert lines[0] == "---"
    end = lines.index("---", 1)
    return {k: json.loads(v) for k, v in (line.split(": ", 1) for line in lines[1:end])}


@pytest.mark.parametrize(
    "build",
    [lambda box: TextClassifier(box, ["red", "blue", "green"]), lambda box: DualEncoder(box)],
    ids=["classifier", "retriever"],
)
def test_every_saved_adapter_has_a_listed_card(tiny_box, tmp_path, build):
    model = build(tiny_box)
    folder = model.save_pretrained(tmp_path / "a")
    card = (folder / CARD_NAME).read_text()
    assert f"  {CARD_NAME}\n" in (folder / CHECKSUMS_NAME).read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "exotune" and "dark-gray" in meta["tags"]
    assert tiny_box.spec.fingerprint() in card and tiny_box.spec.model_digest in card
    assert "## Library" in card
    type(model).from_pretrained(folder, tiny_box)  # the card does not get in the way of loading
    (folder / CARD_NAME).write_text(card + "edited\n")
    with pytest.raises(ArtifactError, match="README.md is corrupted"):
        verify_folder(folder)


def test_the_card_says_what_the_run_knows(tiny_box, tmp_path):
    with card_context(
        command="exotune train --file f.csv",
        data={"name": "f.csv", "train_examples": 10},
        metrics={"validation": {"accuracy": 0.5}},
    ):
        folder = TextClassifier(tiny_box, ["a", "b"]).save_pretrained(tmp_path / "a")
    card = (folder / CARD_NAME).read_text()
    assert "exotune train --file f.csv" in card and "train examples: 10" in card
    assert "| validation | 0.5000 |" in card
    assert front_matter(card)["datasets"] == ["f.csv"] and front_matter(card)["metrics"] == ["accuracy"]
    folder = TextClassifier(tiny_box, ["a", "b"]).save_pretrained(tmp_path / "b")  # outside a run
    assert "not recorded" in (folder / CARD_NAME).read_text()


def test_the_default_backbone_is_named_as_base_model():
    card = model_card(
        {
            "type": "dga-classifier",
            "access": "dark-gray",
            "box_source": {"backbone": "all-MiniLM-L6-v2"},
            "task": {"type": "classification", "labels": ["a", "b"]},
        }
    )
    meta = front_matter(card)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["pipeline_tag"] == "text-classification"


def test_train_writes_the_command_data_and_metrics_into_the_card(tiny_backbone, tmp_path):
    data = colour_data(30)
    file = tmp_path / "colours.csv"
    file.write_text(
        "text,label\n" + "".join(f"{t},{data.label_names[y]}\n" for t, y in zip(data.texts, data.labels, strict=True))
    )
    out = tmp_path / "run"
    argv = [
        "train",
        "--file",
        str(file),
        "--test-file",
        str(file),
        "--eval-test",
        "--backbone",
        str(tiny_backbone),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--quiet",
        "--output-dir",
        str(out),
    ]
    assert main(argv) == 0
    card = (out / "best" / CARD_NAME).read_text()
    verify_folder(out / "best")  # the card rewritten with the test score is listed again
    assert "exotune train --file" in card and "--eval-test" in card
    assert "colours.csv" in card and "train examples" in card
    assert "| validation (best epoch 1) |" in card and "| test |" in card


def test_an_ea_folder_has_a_card(tmp_path):
    from exotune.ea import CallableClient, EasyAdapter

    data = colour_data(60)
    train, val = data.split(0.3, seed=0)
    lm = CallableClient(lambda text, labels: next((c for c in labels if c in text.split()), labels[0]))
    model = EasyAdapter(lm, n_clusters=2, cv_folds=2).fit(train, val)
    folder = model.save_pretrained(tmp_path / "ea")
    card = (folder / CARD_NAME).read_text()
    assert "black" in front_matter(card)["tags"] and "| validation |" in card
    verify_folder(folder)
    EasyAdapter.from_pretrained(folder)


def test_what_a_fit_tells_the_card_stays_inside_it(tiny_box, tmp_path):
    from exotune.cards import run_info
    from exotune.train import TrainConfig, Trainer

    train, val = colour_data(32, seed=0), colour_data(12, seed=1)
    model = TextClassifier(tiny_box, train.label_names)
    Trainer(TrainConfig(epochs=1, batch_size=16, patience=None), tmp_path / "run", progress=False).fit(
        model, train, val
    )
    assert "| validation (best epoch 1) |" in (tmp_path / "run" / "best" / CARD_NAME).read_text()
    assert run_info() == {}  # a later save, outside any run, says nothing of this one
    assert "not recorded" in (model.save_pretrained(tmp_path / "later") / CARD_NAME).read_text()

"""Where a prototype head starts: the class names (zero-shot at step 0) or the training class
means (nearest class mean at step 0), for every classifier, and the options that ask for it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exotune.cli import main
from exotune.errors import ConfigError
from exotune.graybox import DGAConfig
from exotune.tasks.classification import ClassificationConfig, TextClassifier
from exotune.tasks.heads import PrototypeHead
from exotune.whitebox import WhiteBoxClassifier, WhiteBoxConfig

from .conftest import colour_data
from .test_cli import assert_clean_error

MEANS = ClassificationConfig(prototype_start="class-means")


@pytest.fixture
def colours_csv(tmp_path):
    data = colour_data(40)
    path = tmp_path / "colours.csv"
    rows = [f"{t},{data.label_names[y]}" for t, y in zip(data.texts, data.labels, strict=True)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_the_head_starts_at_each_class_mean_and_keeps_a_class_it_has_not_seen():
    head = PrototypeHead(torch.eye(3, 2))  # third class: (0, 0), normalised to zero
    before = head.prototypes.detach().clone()
    outputs = torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.0, 1.0], [3.0, 3.0]])
    head.start_at_class_means(outputs, torch.tensor([0, 0, 1, 0]))
    unit = nn.functional.normalize(outputs, dim=-1)
    want0 = nn.functional.normalize(unit[[0, 1, 3]].mean(0), dim=0)
    assert torch.allclose(head.prototypes[0], want0)
    assert torch.allclose(head.prototypes[1], torch.tensor([0.0, 1.0]))
    assert torch.equal(head.prototypes[2], before[2])
    assert head.prototypes.requires_grad  # still trained afterwards


def _nearest_mean(model, data) -> list[int]:
    """The nearest-class-mean prediction from the model's own outputs, written out by hand."""
    z = nn.functional.normalize(torch.as_tensor(model.encode(data.texts)), dim=-1)
    labels = torch.tensor(data.labels)
    means = torch.stack([nn.functional.normalize(z[labels == c].mean(0), dim=0) for c in range(3)])
    return (z @ means.T).argmax(-1).tolist()


@pytest.mark.parametrize("variant", ["input-only", "both"])
def test_a_gray_box_classifier_starts_as_the_nearest_class_mean(tiny_box, variant):
    data = colour_data(60)
    torch.manual_seed(0)
    model = TextClassifier(tiny_box, data.label_names, DGAConfig.variant(variant), MEANS)
    zero_shot = model.head.prototypes.detach().clone()
    model.start_head(data)
    assert not torch.equal(model.head.prototypes, zero_shot)
    probs = model.predict_proba(data.texts)
    assert probs.argmax(-1).tolist() == _nearest_mean(model, data)
    assert model.training  # left as it was found


def test_class_names_stay_the_default_start(tiny_box):
    data = colour_data(30)
    model = TextClassifier(tiny_box, data.label_names, DGAConfig.variant("both"))
    before = model.head.prototypes.detach().clone()
    model.start_head(data)
    assert torch.equal(model.head.prototypes, before)


def test_labels_are_matched_by_name(tiny_box):
    data = colour_data(60)
    model = TextClassifier(tiny_box, list(reversed(data.label_names)), DGAConfig.variant("both"), MEANS)
    model.start_head(data)
    reordered, _ = data.aligned_to(model.label_names)
    assert model.predict_proba(data.texts).argmax(-1).tolist() == _nearest_mean(model, reordered)


def test_the_white_box_classifier_starts_the_same_way(tiny_backbone):
    data = colour_data(60)
    torch.manual_seed(0)
    model = WhiteBoxClassifier.from_backbone(str(tiny_backbone), data.label_names, WhiteBoxConfig.lora(r=4), MEANS)
    model.start_head(data)
    z = nn.functional.normalize(model.encoder.encode(data.texts), dim=-1)
    labels = torch.tensor(data.labels)
    means = torch.stack([nn.functional.normalize(z[labels == c].mean(0), dim=0) for c in range(3)])
    assert torch.allclose(model.head.prototypes, means, atol=1e-5)


def test_the_start_is_saved_with_the_head_and_not_redone_on_load(tiny_box, tmp_path):
    data = colour_data(60)
    model = TextClassifier(tiny_box, data.label_names, DGAConfig.variant("both"), MEANS)
    model.start_head(data)
    model.save_pretrained(tmp_path / "a")
    loaded = TextClassifier.from_pretrained(tmp_path / "a", tiny_box)
    assert loaded.config.prototype_start == "class-means"
    assert torch.equal(loaded.head.prototypes, model.head.prototypes)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"prototype_start": "centroids"}, "prototype_start must be one of"),
        ({"prototype_start": "class-means", "head": "linear"}, "needs the prototype head"),
    ],
)
def test_bad_starts_are_clear_errors(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ClassificationConfig(**kwargs)


def test_train_refuses_class_means_with_a_linear_head(tmp_path, capsys, colours_csv):
    argv = ["train", "--file", str(colours_csv), "--output-dir", str(tmp_path / "r")]
    assert main([*argv, "--head", "linear", "--prototype-start", "class-means"]) == 2
    assert_clean_error(capsys, "needs the prototype head")


def test_train_refuses_a_start_for_a_task_without_a_head(tmp_path, capsys, colours_csv):
    argv = ["train", "--task", "retrieval", "--file", str(colours_csv), "--output-dir", str(tmp_path / "r")]
    assert main([*argv, "--prototype-start", "class-means"]) == 2
    assert_clean_error(capsys, "--prototype-start starts a classifier's head")


def test_train_starts_at_the_class_means(tiny_backbone, colours_csv, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--file", str(colours_csv), "--backbone", str(tiny_backbone), "--epochs", "1"]
    assert main([*argv, "--quiet", "--prototype-start", "class-means", "--output-dir", str(out)]) == 0
    loaded = TextClassifier.from_pretrained(out / "best")
    assert loaded.config.prototype_start == "class-means"

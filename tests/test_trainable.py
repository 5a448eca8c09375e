"""The Trainer's contract as a Protocol, and the one mixin for what task models share."""

from __future__ import annotations

import json

import pytest
import torch

from exotune.artifacts import CONFIG_NAME, WEIGHTS_NAME
from exotune.errors import ArtifactError, ConfigError
from exotune.protocols import Trainable
from exotune.tasks.classification import TextClassifier
from exotune.tasks.image_classification import ImageClassifier
from exotune.tasks.image_text import ImageTextRetriever
from exotune.tasks.model import AdapterModelMixin
from exotune.tasks.retrieval import DualEncoder
from exotune.tasks.sketch import SketchPhotoRetriever
from exotune.tasks.video_text import VideoTextRetriever
from exotune.train import TrainConfig, Trainer
from exotune.whitebox import WhiteBoxClassifier

from .conftest import colour_data, draw_shape

TASK_MODELS = [
    TextClassifier,
    ImageClassifier,
    DualEncoder,
    ImageTextRetriever,
    VideoTextRetriever,
    SketchPhotoRetriever,
    WhiteBoxClassifier,
]


@pytest.mark.parametrize("cls", TASK_MODELS, ids=lambda c: c.__name__)
def test_every_task_model_takes_the_shared_half_from_the_mixin(cls):
    assert issubclass(cls, AdapterModelMixin) and issubclass(cls, Trainable)
    for name in ("trainable_parameters", "num_trainable", "save_pretrained", "read_config", "load_folder"):
        assert getattr(cls, name).__qualname__.startswith("AdapterModelMixin."), name  # written once
    assert isinstance(cls.adapter_type, str)


def test_task_models_satisfy_the_trainer_protocol(tiny_box):
    for model in (TextClassifier(tiny_box, ["red", "blue", "green"]), DualEncoder(tiny_box)):
        assert isinstance(model, Trainable)
    assert not isinstance(torch.nn.Linear(2, 2), Trainable)  # a module alone is not enough


def test_the_mixin_serves_the_classifier(tiny_box, tmp_path):
    torch.manual_seed(0)
    model = TextClassifier(tiny_box, ["red", "blue", "green"])
    assert isinstance(model, AdapterModelMixin)
    assert model.num_trainable() == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    path = model.save_pretrained(tmp_path / "adapter")
    assert {p.name for p in path.iterdir()} >= {CONFIG_NAME, WEIGHTS_NAME, "checksums.sha256"}
    assert TextClassifier.read_config(path, tiny_box)["type"] == TextClassifier.adapter_type
    with pytest.raises(ArtifactError, match="expected"):
        DualEncoder.from_pretrained(path, tiny_box)  # another type: refused by the same check
    config = json.loads((path / CONFIG_NAME).read_text())
    assert config["task"]["labels"] == ["red", "blue", "green"]


def test_trainer_fits_a_protocol_model(tiny_box, tmp_path):
    data = colour_data(24)
    model = TextClassifier(tiny_box, data.label_names)
    result = Trainer(TrainConfig(epochs=1, batch_size=8), tmp_path / "run", progress=False).fit(model, data, data)
    assert result.best_dir is not None and TextClassifier.from_pretrained(result.best_dir, tiny_box)


def test_the_white_box_retriever_says_it_saves_nothing(tiny_box, tiny_backbone, tmp_path):
    pytest.importorskip("peft")
    from exotune.whitebox import WhiteBoxConfig, WhiteBoxRetriever

    model = WhiteBoxRetriever.from_backbone(tiny_box, str(tiny_backbone), WhiteBoxConfig.lora(r=2))
    assert model.num_trainable() > 0
    with pytest.raises(ConfigError, match="saves no adapter folder"):
        model.save_pretrained(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_classifiers_take_their_methods_and_heads_from_one_place():
    import torch

    from exotune.tasks.classification import ClassificationConfig, TextClassifier
    from exotune.tasks.heads import LinearHead, PrototypeHead, make_head
    from exotune.tasks.image_classification import ImageClassifier
    from exotune.tasks.model import ClassifierMixin
    from exotune.whitebox.model import WhiteBoxClassifier

    for cls in (TextClassifier, ImageClassifier, WhiteBoxClassifier):
        for name in ("loss", "predict_proba", "predict", "evaluate", "predictions"):
            assert getattr(cls, name) is getattr(ClassifierMixin, name), (cls.__name__, name)
    seen = []

    def encode(texts):
        seen.extend(texts)
        return torch.ones(len(texts), 4)

    head = make_head(ClassificationConfig(label_template="about {}"), ["card_arrival", "refund"], 4, encode)
    assert isinstance(head, PrototypeHead) and seen == ["about card arrival", "about refund"]
    assert torch.allclose(head.prototypes, torch.full((2, 4), 0.5))  # normalised
    assert isinstance(make_head(ClassificationConfig(head="linear"), ["a", "b"], 4), LinearHead)
    assert torch.equal(make_head(ClassificationConfig(), ["a", "b"], 4).prototypes, torch.zeros(2, 4))


def test_the_image_classifier_is_its_own_class_and_its_folders_keep_their_keys(tiny_image_box, tmp_path):
    from exotune.tasks.classification import BoxClassifierMixin, ClassificationConfig

    assert not issubclass(ImageClassifier, TextClassifier)  # shared through the mixins only
    for cls in (TextClassifier, ImageClassifier):
        for name in ("build_classifier", "forward", "to_config_dict", "from_pretrained"):
            assert getattr(cls, name).__qualname__.startswith("BoxClassifierMixin."), (cls.__name__, name)
    assert issubclass(ImageClassifier, BoxClassifierMixin) and not hasattr(ImageClassifier, "encode")
    torch.manual_seed(0)
    model = ImageClassifier(tiny_image_box, ["round", "square"], None, ClassificationConfig(head="linear"))
    path = model.save_pretrained(tmp_path / "adapter")
    config = json.loads((path / CONFIG_NAME).read_text())
    assert config["type"] == "dga-image-classifier" and config["task"]["type"] == "classification"
    assert set(config) >= {"type", "library_version", "access", "box_fingerprint", "box_spec", "dga", "task"}
    assert set(config["task"]) == {"type", "labels", *ClassificationConfig().to_dict()}
    loaded = ImageClassifier.from_pretrained(path, tiny_image_box)
    images = [draw_shape("circle", "red"), draw_shape("square", "blue")]
    assert torch.equal(loaded.predict_proba(images), model.predict_proba(images))
    with pytest.raises(ArtifactError, match="expected"):
        TextClassifier.from_pretrained(path, tiny_image_box)


BOXES_TAKEN = {  # how many boxes each from_pretrained takes positionally
    TextClassifier: 1,
    ImageClassifier: 1,
    DualEncoder: 1,
    ImageTextRetriever: 2,
    VideoTextRetriever: 2,
    SketchPhotoRetriever: 1,
}


@pytest.mark.parametrize("cls", list(BOXES_TAKEN), ids=lambda c: c.__name__)
def test_every_from_pretrained_goes_through_the_one_loader(cls, monkeypatch, tmp_path):
    """Folder, checksums, type, the boxes' fingerprints and the tensors: one path
    (``AdapterModelMixin.load_folder``), each model adding only its ``from_config``."""
    calls = []

    def record(path, box, **other_boxes):
        calls.append((path, box, other_boxes))
        raise LookupError

    monkeypatch.setattr(cls, "load_folder", record)
    boxes = [object() for _ in range(BOXES_TAKEN[cls])]
    with pytest.raises(LookupError):
        cls.from_pretrained(tmp_path, *boxes)
    assert len(calls) == 1 and calls[0][1] in boxes
    assert "from_config" in {name for klass in cls.__mro__ for name in vars(klass)}


def test_the_text_models_share_one_encode(tiny_box):
    from exotune.tasks.encoding import TextEncoderMixin

    assert TextClassifier.encode is DualEncoder.encode is TextEncoderMixin.encode
    classifier, retriever = TextClassifier(tiny_box, ["red", "blue"]), DualEncoder(tiny_box)
    assert classifier.encoding_tower is classifier.encoder and retriever.encoding_tower is retriever.query_tower
    texts = ["a red car", "a blue sky"]
    assert torch.allclose(classifier.encode(texts, convert_to="torch"), classifier.encoder(texts), atol=1e-5)
    assert retriever.encode("a red car").shape == (tiny_box.spec.output_dim,)

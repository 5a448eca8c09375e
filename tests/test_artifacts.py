import json

import pytest
import torch

from exotune.artifacts import flatten_state, unflatten_state, write_checksums
from exotune.boxes import load_box
from exotune.errors import ArtifactError, ConfigError, SpecMismatchError
from exotune.graybox import DGAConfig, ResidualMLPConfig, TextShiftConfig
from exotune.tasks.classification import ClassificationConfig, TextClassifier

from .conftest import backbone_module, build_tiny_backbone, colour_data


@pytest.fixture
def trained(tiny_box, tmp_path):
    data = colour_data(30)
    torch.manual_seed(0)
    dga = DGAConfig(TextShiftConfig(extra_tokens=2), ResidualMLPConfig(hidden=8))
    model = TextClassifier(tiny_box, data.label_names, dga)
    with torch.no_grad():  # make every tensor differ from its initial value
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "adapter")
    return model, tmp_path / "adapter", data


def test_round_trip_gives_identical_predictions(trained, tiny_box):
    model, folder, data = trained
    loaded = TextClassifier.from_pretrained(folder, tiny_box)
    torch.testing.assert_close(loaded.predict_proba(data.texts), model.predict_proba(data.texts), atol=0, rtol=0)
    assert loaded.dga == model.dga and loaded.config == model.config
    assert loaded.label_names == model.label_names


def test_folder_holds_only_what_was_trained(trained, tiny_box):
    model, folder, _ = trained
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "adapter_config.json",  # README: the model card
        "adapter_model.safetensors",
        "checksums.sha256",
    ]
    from safetensors.torch import load_file

    saved = load_file(str(folder / "adapter_model.safetensors"))
    backbone_names = set(backbone_module(tiny_box).state_dict())
    assert not set(saved) & backbone_names
    assert not any("embeddings" in k or "encoder.layer" in k for k in saved)
    assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in model.parameters())
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["type"] == "dga-classifier" and cfg["access"] == "dark-gray"
    assert cfg["box_fingerprint"] == tiny_box.spec.fingerprint()
    assert "library_version" in cfg


def test_loading_against_another_box_fails(trained, tmp_path):
    _, folder, _ = trained
    other = load_box(str(build_tiny_backbone(tmp_path / "other", seed=1)))
    with pytest.raises(SpecMismatchError, match="model_digest"):
        TextClassifier.from_pretrained(folder, other)


def test_corrupted_files_fail_loudly(trained, tiny_box):
    """Parsers catch what is malformed even when the checksums are re-recorded over it."""
    _, folder, _ = trained
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    write_checksums(folder)
    with pytest.raises(ArtifactError, match="safetensors"):
        TextClassifier.from_pretrained(folder, tiny_box)
    (folder / "adapter_config.json").write_text('{"type": "dga-classifier", ')
    write_checksums(folder)
    with pytest.raises(ArtifactError, match="JSON"):
        TextClassifier.from_pretrained(folder, tiny_box)


def test_missing_or_foreign_folders(tiny_box, tmp_path, trained):
    with pytest.raises(ArtifactError, match="does not exist"):
        TextClassifier.from_pretrained(tmp_path / "nope", tiny_box)
    _, folder, _ = trained
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "type": "something-else"}))
    write_checksums(folder)
    with pytest.raises(ArtifactError, match="type"):
        TextClassifier.from_pretrained(folder, tiny_box)


def test_tensors_must_match_config(trained, tiny_box):
    _, folder, _ = trained
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["dga"]["input_adapter"]["extra_tokens"] = 5
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    write_checksums(folder)
    with pytest.raises(ArtifactError, match="does not match"):
        TextClassifier.from_pretrained(folder, tiny_box)


def test_nested_state_round_trip():
    tree = {"a": [torch.ones(2), {"b": (1, 2.5, None)}], 3: "x", "t": torch.arange(3)}
    skeleton, tensors = flatten_state(tree)
    json.dumps(skeleton)  # the skeleton is plain JSON
    back = unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    assert back[3] == "x" and back["a"][1]["b"] == (1, 2.5, None)
    assert torch.equal(back["t"], tree["t"])
    with pytest.raises(ArtifactError):
        flatten_state({"f": object()})


def test_classification_config_validation(tiny_box):
    with pytest.raises(ConfigError, match="head"):
        ClassificationConfig(head="tree")
    with pytest.raises(ConfigError, match="label_template"):
        ClassificationConfig(label_template="no slot")
    with pytest.raises(ConfigError, match="2 classes"):
        TextClassifier(tiny_box, ["only"])


def test_zero_shot_head_starts_as_class_name_similarity(tiny_box):
    data = colour_data(20)
    model = TextClassifier(tiny_box, data.label_names)
    assert model.num_trainable() > 0
    z = torch.nn.functional.normalize(tiny_box.encode(data.texts), dim=-1)
    p = torch.nn.functional.normalize(tiny_box.encode(data.label_names), dim=-1)
    expected = (z @ p.T).argmax(-1)
    assert model.predict_proba(data.texts).argmax(-1).tolist() == expected.tolist()


def test_a_flipped_byte_inside_tensor_data_is_caught(trained, tiny_box):
    """No parser notices a changed weight value: the recorded checksum does."""
    _, folder, _ = trained
    weights = folder / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x01  # inside the last tensor's data: still a valid safetensors file
    weights.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="corrupted: its SHA-256 differs"):
        TextClassifier.from_pretrained(folder, tiny_box)
    (folder / "checksums.sha256").unlink()  # no list, nothing can be checked: not loaded
    with pytest.raises(ArtifactError, match="has no checksums.sha256"):
        TextClassifier.from_pretrained(folder, tiny_box)

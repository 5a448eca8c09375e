"""Folders someone else edited: every file listed and checked, every loaded value validated
before anything is built from it; each attack is an ``ArtifactError`` naming file and field.

Most edits here re-record the checksums, as an attacker who rewrites ``checksums.sha256`` would:
the list guards against corruption, the validation against what it cannot see.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from exotune.artifacts import write_checksums, write_folder
from exotune.errors import ArtifactError
from exotune.graybox import DGAConfig, ResidualMLPConfig, TextShiftConfig
from exotune.tasks.artifacts import saved_box_options
from exotune.tasks.classification import TextClassifier

from .conftest import colour_data

CONFIG, WEIGHTS, SUMS = "adapter_config.json", "adapter_model.safetensors", "checksums.sha256"


@pytest.fixture
def folder(tiny_box, tmp_path):
    data = colour_data(20)
    dga = DGAConfig(TextShiftConfig(extra_tokens=2), ResidualMLPConfig(hidden=8))
    TextClassifier(tiny_box, data.label_names, dga).save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def _edit_config(folder, change) -> None:
    cfg = json.loads((folder / CONFIG).read_text())
    change(cfg)
    (folder / CONFIG).write_text(json.dumps(cfg))
    write_checksums(folder)


def _set(path, value):
    def change(cfg):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


CONFIG_ATTACKS = {  # name -> (edit, what the error must name)
    "extra_tokens 10**9": (_set(["dga", "input_adapter", "extra_tokens"], 10**9), "extra_tokens"),
    "extra_tokens a bool": (_set(["dga", "input_adapter", "extra_tokens"], True), "extra_tokens"),
    "hidden 10**9": (_set(["dga", "output_adapter", "hidden"], 10**9), "hidden"),
    "temperature 'hot'": (_set(["task", "temperature"], "hot"), "temperature"),
    "temperature NaN": (_set(["task", "temperature"], float("nan")), "temperature"),
    "dga null": (_set(["dga"], None), "DGA config"),
    "input adapter a string": (_set(["dga", "input_adapter"], "text-shift"), "input_adapter"),
    "input adapter type a list": (_set(["dga", "input_adapter", "type"], ["x"]), "'type'"),
    "labels a number": (_set(["task", "labels"], 5), "label_names"),
    "task a list": (_set(["task"], []), "task"),
    "task missing": (lambda cfg: cfg.pop("task"), "'task'"),
    "box_spec edited, fingerprint kept": (_set(["box_spec", "output_dim"], 4096), "box_spec does not hash"),
    "box_spec mangled": (_set(["box_spec", "input_shape"], 7), "box_spec"),
}


def test_box_options_are_not_taken_from_an_edited_spec(folder):
    _edit_config(folder, _set(["box_spec", "entry_points"], [{"name": "layer.0", "max_tokens": 4}]))
    with pytest.raises(ArtifactError, match="box_spec does not hash"):
        saved_box_options(folder)


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [80, 200_000])
def test_deeply_nested_json_is_refused(folder, tiny_box, depth):
    text = (folder / CONFIG).read_text().rstrip()
    (folder / CONFIG).write_text(text[:-1] + f', "deep": {_nested(depth)}}}')
    write_checksums(folder)
    with pytest.raises(ArtifactError, match="nested deeper"):
        TextClassifier.from_pretrained(folder, tiny_box)


def test_an_oversized_json_file_is_refused_before_parsing(tmp_path):
    from exotune.artifacts import read_json

    (tmp_path / "big.json").write_text('{"a": "' + "x" * 2000 + '"}')
    with pytest.raises(ArtifactError, match="more than the 1000"):
        read_json(tmp_path / "big.json", max_bytes=1000)


def _edit_tensors(folder, change) -> None:
    state = load_file(str(folder / WEIGHTS))
    change(state)
    save_file(state, str(folder / WEIGHTS))
    write_checksums(folder)


TENSOR_ATTACKS = {
    "NaN prototypes": (lambda s: s["head.prototypes"].fill_(float("nan")), "NaN"),
    "infinite shift": (lambda s: s["encoder.input_adapter.shift"].fill_(float("inf")), "infinite"),
    "int64 prototypes": (lambda s: s.update({"head.prototypes": s["head.prototypes"].long()}), "dtype torch.int64"),
    "prototypes of another shape": (lambda s: s.update({"head.prototypes": torch.zeros(3, 5)}), "shape"),
    "a tensor added": (lambda s: s.update({"extra": torch.zeros(2)}), "'extra'"),
}


ATTACKS = {  # name -> (edit, the file the error names, the field it names)
    **{name: (lambda f, e=e: _edit_config(f, e), CONFIG, w) for name, (e, w) in CONFIG_ATTACKS.items()},
    **{name: (lambda f, e=e: _edit_tensors(f, e), WEIGHTS, w) for name, (e, w) in TENSOR_ATTACKS.items()},
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_an_edited_value_is_refused_naming_file_and_field(folder, tiny_box, attack):
    edit, file, field = ATTACKS[attack]
    edit(folder)
    with pytest.raises(ArtifactError, match=file) as info:
        TextClassifier.from_pretrained(folder, tiny_box)
    assert field in str(info.value)


# -- the list of files -------------------------------------------------------------------------


def test_a_deleted_checksum_line_is_refused(folder, tiny_box):
    """Weights edited and their line dropped from the list: once accepted unchecked."""
    _edit_tensors(folder, lambda s: s["head.prototypes"].mul_(-1))
    sums = folder / SUMS
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if WEIGHTS not in line))
    with pytest.raises(ArtifactError, match=f"{WEIGHTS} is not listed in {SUMS}"):
        TextClassifier.from_pretrained(folder, tiny_box)


@pytest.mark.parametrize("name", ["notes.txt", "sub/evil.safetensors"])
def test_a_file_added_to_the_folder_is_refused(folder, tiny_box, name):
    (folder / name).parent.mkdir(exist_ok=True)
    (folder / name).write_text("not written by exotune")
    with pytest.raises(ArtifactError, match="is not listed"):
        TextClassifier.from_pretrained(folder, tiny_box)


def test_a_symbolic_link_is_refused(folder, tiny_box, tmp_path):
    (tmp_path / "elsewhere").write_text("x")
    (folder / "link").symlink_to(tmp_path / "elsewhere")
    write_checksums(folder)
    with pytest.raises(ArtifactError, match="symbolic link"):
        TextClassifier.from_pretrained(folder, tiny_box)


def test_sub_folders_are_listed_and_checked(tmp_path):
    from exotune.artifacts import verify_folder

    def writer(path):
        path.mkdir()
        (path / "inner.json").write_text("{}")

    folder = write_folder(tmp_path / "f", {"a.json": {"x": 1}, "sub": writer})
    assert "sub/inner.json" in (folder / SUMS).read_text()
    verify_folder(folder)
    (folder / "sub" / "inner.json").write_text('{"x": 2}')
    with pytest.raises(ArtifactError, match="inner.json is corrupted"):
        verify_folder(folder)
    (folder / "sub" / "inner.json").unlink()
    with pytest.raises(ArtifactError, match="inner.json is missing"):
        verify_folder(folder)


# -- training checkpoints ----------------------------------------------------------------------


def _tensors(change):
    def edit(run):
        file = run / "last" / "checkpoint.safetensors"
        state = load_file(str(file))
        change(state)
        save_file(state, str(file))

    return edit


def _meta(change):
    def edit(run):
        file = run / "last" / "trainer_state.json"
        meta = json.loads(file.read_text())
        change(meta)
        file.write_text(json.dumps(meta))

    return edit


def _first(state, part):
    """The first non-scalar tensor of a checkpoint part: flattened keys are positions in the
    saved tree {model, optimizer, scheduler, best, rng}."""
    prefix = {"model": "s.0.", "optimizer": "s.1.", "rng": "s.4"}[part]
    return next(k for k in state if k.startswith(prefix) and state[k].ndim)


CHECKPOINT_ATTACKS = {
    "NaN weights": (_tensors(lambda s: s[_first(s, "model")].fill_(float("nan"))), "NaN"),
    "weights of another shape": (_tensors(lambda s: s.update({_first(s, "model"): torch.zeros(3)})), "shape"),
    "optimizer moment of another shape": (
        _tensors(lambda s: s.update({_first(s, "optimizer"): torch.zeros(2, 2)})),
        "optimizer state",
    ),
    "rng a float tensor": (_tensors(lambda s: s.update({_first(s, "rng"): torch.zeros(3)})), "rng"),
    "epoch a string": (_meta(lambda m: m["state"].update(epoch="one")), "state.epoch"),
    "global step negative": (_meta(lambda m: m["state"].update(global_step=-5)), "state.global_step"),
    "loop state missing a key": (_meta(lambda m: m["state"].pop("bad_epochs")), "state.bad_epochs"),
    "skeleton names a missing tensor": (_meta(lambda m: m.update(skeleton={"__tensor__": "nope"})), "nope"),
}


@pytest.mark.parametrize("attack", sorted(CHECKPOINT_ATTACKS))
def test_an_edited_checkpoint_is_refused(tiny_box, tmp_path, attack):
    from exotune.train import TrainConfig, Trainer

    train, val = colour_data(24, seed=0), colour_data(12, seed=1)
    model = TextClassifier(tiny_box, train.label_names, DGAConfig.variant("output-only"))
    cfg = TrainConfig(epochs=1, batch_size=8, checkpoint_every=1)
    Trainer(cfg, tmp_path, progress=False).fit(model, train, val)
    edit, field = CHECKPOINT_ATTACKS[attack]
    edit(tmp_path)
    write_checksums(tmp_path / "last")
    with pytest.raises(ArtifactError) as info:
        Trainer(cfg, tmp_path, progress=False).fit(model, train, val, resume=True)
    assert field in str(info.value) and "last" in str(info.value)

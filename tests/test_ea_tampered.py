"""EA folders someone else edited: skops files that hold only trusted types but hostile contents,
an edited ea_config.json, files added or unlisted. Each is refused with an ``ArtifactError`` that
names the file and the field, never loaded and never a crash later."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skops.io as sio
from sklearn.cluster import KMeans

from exotune.artifacts import write_checksums
from exotune.ea import CallableClient, EasyAdapter
from exotune.errors import ArtifactError

from .ea_fakes import colour_of, colour_task, one_blas_thread  # noqa: F401


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    train, val = colour_task(90, seed=1), colour_task(45, seed=2)
    model = EasyAdapter(
        CallableClient(lambda t, labels: "blue" if colour_of(t) == "green" else colour_of(t)),
        n_clusters=2,
        cv_folds=2,
        budget=1.0,
    ).fit(train, val)
    return model.save_pretrained(tmp_path_factory.mktemp("ea") / "ea")


@pytest.fixture
def folder(saved, tmp_path):
    import shutil

    return shutil.copytree(saved, tmp_path / "ea")


def _edit_skops(folder, name, change):
    obj = sio.load(folder / name, trusted=sio.get_untrusted_types(file=folder / name))
    obj = change(obj) or obj
    (folder / name).write_bytes(sio.dumps(obj))
    write_checksums(folder)


def _setattr(name, value):
    return lambda obj: setattr(obj, name, value(obj) if callable(value) else value)


def _kmeans(obj):
    return KMeans(n_clusters=2, n_init=1, random_state=0).fit(np.random.default_rng(0).random((10, 5)))


SKOPS_ATTACKS = {  # name -> (file, change, what the error names)
    "threshold a string": ("router.skops", _setattr("threshold_", "-Infinity"), "threshold_"),
    "threshold NaN": ("router.skops", _setattr("threshold_", float("nan")), "threshold_"),
    "gate swapped for a KMeans": ("router.skops", _setattr("gate_", _kmeans), "gate_"),
    "chooser a probability of 7": ("router.skops", _setattr("chooser_", 7.0), "chooser_"),
    "trust_lm a string": ("router.skops", _setattr("trust_lm_", "0.5"), "trust_lm_"),
    "policy unknown": ("router.skops", _setattr("policy", "always"), "policy"),
    "router swapped for the regions": ("router.skops", "regions.skops", "must hold a Router"),
    "class counts of another length": ("regions.skops", _setattr("class_n_", np.zeros(2)), "class_n_"),
    "cluster counts NaN": ("regions.skops", _setattr("cluster_k_", lambda r: r.cluster_k_ * np.nan), "cluster_k_"),
    "kmeans swapped": ("regions.skops", _setattr("kmeans_", 3), "kmeans_"),
    "prior a string": ("regions.skops", _setattr("prior_", "high"), "prior_"),
    "SSM classes beyond the labels": ("ssm_0.skops", _setattr("classes_", np.array([0, 1, 7])), "classes_"),
    "SSM classes floats": ("ssm_0.skops", _setattr("classes_", np.array([0.0, 1.0, 2.0])), "classes_"),
    "SSM without its model": ("ssm_0.skops", lambda s: delattr(s, "model_"), "fitted SSM"),
}


@pytest.mark.parametrize("attack", sorted(SKOPS_ATTACKS))
def test_hostile_contents_of_trusted_types_are_refused(folder, attack):
    name, change, field = SKOPS_ATTACKS[attack]
    if isinstance(change, str):  # another file of the folder, in this one's place
        (folder / name).write_bytes((folder / change).read_bytes())
        write_checksums(folder)
    else:
        _edit_skops(folder, name, change)
    with pytest.raises(ArtifactError, match=name) as info:
        EasyAdapter.from_pretrained(folder)
    assert field in str(info.value)


def _edit_config(folder, change):
    cfg = json.loads((folder / "ea_config.json").read_text())
    change(cfg)
    (folder / "ea_config.json").write_text(json.dumps(cfg))
    write_checksums(folder)


CONFIG_ATTACKS = {
    "n_global_ssms 10**9": (lambda c: c.update(n_global_ssms=10**9), "n_global_ssms"),
    "label_names null": (lambda c: c.update(label_names=None), "label_names"),
    "special regions strings": (lambda c: c.update(special_regions=["../x"]), "special_regions"),
    "budget a string": (lambda c: c["params"].update(budget="all"), "budget"),
    "threshold 'hot'": (lambda c: c["router"].update(threshold="hot"), "threshold"),
    "params missing": (lambda c: c.pop("params"), "'params'"),
}


@pytest.mark.parametrize("attack", sorted(CONFIG_ATTACKS))
def test_an_edited_ea_config_is_refused(folder, attack):
    change, field = CONFIG_ATTACKS[attack]
    _edit_config(folder, change)
    with pytest.raises(ArtifactError, match="ea_config.json") as info:
        EasyAdapter.from_pretrained(folder)
    assert field in str(info.value)


def test_an_unlisted_file_in_an_ea_folder_is_refused(folder):
    (folder / "lm.json").write_text('{"lm": "openai-chat", "base_url": "http://127.0.0.1:9/v1"}')
    with pytest.raises(ArtifactError, match="lm.json is not listed"):
        EasyAdapter.from_pretrained(folder)


def test_the_unedited_folder_loads(folder):
    assert EasyAdapter.from_pretrained(folder).label_names_ == colour_task(10).label_names

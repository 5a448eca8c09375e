"""Every ``*Config`` dataclass: one base, a JSON round trip, unknown keys warned about and dropped."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

import exotune.boxes.http
import exotune.graybox
import exotune.serve.config
import exotune.tasks.classification
import exotune.tasks.image_text
import exotune.tasks.retrieval
import exotune.tasks.sketch
import exotune.tasks.video_text
import exotune.train
import exotune.whitebox.config  # noqa: F401  (each import defines config classes)
from exotune.configs import ConfigBase

SRC = Path(__file__).resolve().parents[1] / "src" / "exotune"


def _subclasses(cls) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


CONFIGS = sorted(_subclasses(ConfigBase), key=lambda c: c.__name__)


def test_every_config_class_in_the_package_has_the_base():
    defined = {
        node.name
        for path in SRC.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config")
    }
    assert defined == {c.__name__ for c in CONFIGS}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_config_round_trips_through_json(cls):
    assert dataclasses.is_dataclass(cls)
    config = cls()
    data = json.loads(json.dumps(config.to_dict()))
    assert cls.from_dict(data) == config
    with pytest.warns(UserWarning, match=rf"unknown {cls.kind()} config keys \['bogus'\]"):
        assert cls.from_dict({**data, "bogus": 1}) == config


def test_kind_names_the_config():
    from exotune.graybox import DGAConfig
    from exotune.whitebox.config import WhiteBoxConfig

    assert (DGAConfig.kind(), WhiteBoxConfig.kind()) == ("dga", "white-box")

"""Loading a task model's adapter folder: config type, box fingerprint, trained tensors."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from exotune.artifacts import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_tensors,
    read_json,
    read_tensors,
    verify_folder,
)
from exotune.boxes.base import BoxBase
from exotune.boxes.spec import BoxSpec
from exotune.errors import ArtifactError, SpecMismatchError


def read_adapter_config(path: str | Path, adapter_type: str, box: BoxBase, **other_boxes: BoxBase) -> dict:
    """The folder's config, checked for ``adapter_type`` and for the box it was trained on
    (``box_spec`` / ``box_fingerprint``); ``other_boxes`` are further boxes under their own keys
    (``text_box=...`` checks ``text_box_spec`` / ``text_box_fingerprint``)."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"adapter folder {path} does not exist")
    verify_folder(path)
    cfg = read_json(path / CONFIG_NAME)
    if cfg.get("type") != adapter_type:
        raise ArtifactError(f"{path / CONFIG_NAME}: type is {cfg.get('type')!r}, expected {adapter_type!r}")
    for key, each in {"box": box, **other_boxes}.items():
        saved_spec = saved_spec_of(cfg, key, path / CONFIG_NAME)
        if cfg.get(f"{key}_fingerprint") != each.spec.fingerprint():
            diff = saved_spec.differences(each.spec)
            what = "box" if key == "box" else key.replace("_", " ")
            raise SpecMismatchError(
                f"adapter in {path} was trained against {what} {cfg.get(f'{key}_fingerprint')}, "
                f"this {what} is {each.spec.fingerprint()}; differing: {', '.join(diff) or 'fingerprint'}"
            )
    return cfg


def saved_spec_of(cfg: dict, key: str, file: Path) -> BoxSpec:
    """The ``{key}_spec`` a config recorded, refused unless it is well formed and still hashes
    to the ``{key}_fingerprint`` recorded beside it (a spec edited on its own is not followed)."""
    try:
        spec = BoxSpec.from_dict(cfg[f"{key}_spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{file} lacks or mangles {key}_spec: {err}") from err
    if spec.fingerprint() != cfg.get(f"{key}_fingerprint"):
        raise ArtifactError(f"{file}: {key}_spec does not hash to the recorded {key}_fingerprint "
                            f"({spec.fingerprint()} vs {cfg.get(f'{key}_fingerprint')!r}); the config was edited")
    return spec


def box_entries(key: str, box: BoxBase) -> dict:
    """What an adapter config records about a box it was trained against."""
    return {f"{key}_fingerprint": box.spec.fingerprint(), f"{key}_spec": box.spec.to_dict()}


def load_trained_state(model: nn.Module, path: str | Path) -> None:
    """Load ``adapter_model.safetensors`` into ``model``; names, shapes and float dtypes must match
    exactly, and every value be finite."""
    path = Path(path)
    state = read_tensors(path / WEIGHTS_NAME)
    check_tensors(state, model.state_dict(), path / WEIGHTS_NAME)
    model.load_state_dict(state)

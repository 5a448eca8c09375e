"""Loading a task model's adapter folder: config type, box fingerprint, trained tensors."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from exotune.artifacts import CONFIG_NAME, WEIGHTS_NAME, read_json, read_tensors, verify_folder
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
        try:
            saved_spec = BoxSpec.from_dict(cfg[f"{key}_spec"])
        except (KeyError, TypeError) as err:
            raise ArtifactError(f"{path / CONFIG_NAME} lacks or mangles a required key: {err}") from err
        if cfg.get(f"{key}_fingerprint") != each.spec.fingerprint():
            diff = saved_spec.differences(each.spec)
            what = "box" if key == "box" else key.replace("_", " ")
            raise SpecMismatchError(
                f"adapter in {path} was trained against {what} {cfg.get(f'{key}_fingerprint')}, "
                f"this {what} is {each.spec.fingerprint()}; differing: {', '.join(diff) or 'fingerprint'}"
            )
    return cfg


def box_entries(key: str, box: BoxBase) -> dict:
    """What an adapter config records about a box it was trained against."""
    return {f"{key}_fingerprint": box.spec.fingerprint(), f"{key}_spec": box.spec.to_dict()}


def load_trained_state(model: nn.Module, path: str | Path) -> None:
    """Load ``adapter_model.safetensors`` into ``model``; names and shapes must match exactly."""
    path = Path(path)
    state = read_tensors(path / WEIGHTS_NAME)
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        raise ArtifactError(
            f"{path / WEIGHTS_NAME} does not match its config: tensors "
            f"{sorted(set(state) ^ set(expected)) or 'with other shapes'}"
        )
    model.load_state_dict(state)

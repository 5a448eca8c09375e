"""Opening a task model's folder, one path for all: folder and checksums, config type, box
fingerprint, trained tensors."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from exotune.artifacts import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_tensors,
    json_object,
    read_json,
    read_tensors,
    verify_folder,
)
from exotune.boxes.base import BoxBase
from exotune.boxes.entry_points import entry_point_options
from exotune.boxes.spec import BoxSpec
from exotune.errors import ArtifactError, ConfigError, SpecMismatchError


def read_folder_config(path: str | Path, artifact_type: str | None = None, what: str = "adapter folder") -> dict:
    """The config of the folder at ``path``: the folder exists, its checksums hold, and (unless
    ``artifact_type`` is None) its ``type`` is ``artifact_type``. Every saved task model's
    folder is opened here."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{what} {path} does not exist")
    verify_folder(path)
    cfg = read_json(path / CONFIG_NAME)
    if artifact_type is not None and cfg.get("type") != artifact_type:
        raise ArtifactError(f"{path / CONFIG_NAME}: type is {cfg.get('type')!r}, expected {artifact_type!r}")
    return cfg


def task_section(cfg: dict) -> dict:
    """A copy of the config's ``task`` object without its ``type`` (call inside ``saved_config``)."""
    task = json_object(cfg, "task")
    task.pop("type", None)
    return task


def read_adapter_config(path: str | Path, adapter_type: str, box: BoxBase, **other_boxes: BoxBase) -> dict:
    """The folder's config (``read_folder_config``), checked for ``adapter_type`` and for the box
    it was trained on (``box_spec`` / ``box_fingerprint``); ``other_boxes`` are further boxes under
    their own keys (``text_box=...`` checks ``text_box_spec`` / ``text_box_fingerprint``)."""
    path = Path(path)
    cfg = read_folder_config(path, adapter_type)
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
        raise ArtifactError(
            f"{file}: {key}_spec does not hash to the recorded {key}_fingerprint "
            f"({spec.fingerprint()} vs {cfg.get(f'{key}_fingerprint')!r}); the config was edited"
        )
    return spec


def box_entries(key: str, box: BoxBase) -> dict:
    """What an adapter config records about a box it was trained against: its spec and
    fingerprint, and where it came from when known (``{key}_source``: a backbone's name or
    folder, or a served box's URL), so that ``from_pretrained(path)`` can load it again."""
    entries = {f"{key}_fingerprint": box.spec.fingerprint(), f"{key}_spec": box.spec.to_dict()}
    source = box_source(box)
    if source:
        entries[f"{key}_source"] = source
    return entries


def box_source(box: BoxBase) -> dict:
    """Where ``box`` came from: ``{"backbone": name}`` (loaded here), ``{"remote": url}``
    (served), or ``{}`` (built by the caller from a module)."""
    source = getattr(box, "source", None)
    if isinstance(source, dict):
        return dict(source)
    url = getattr(box, "url", None)
    if not isinstance(url, str):
        return {}
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)  # a saved folder is shared: no user, password or query string in it
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port is not None else "")
    return {"remote": urlunsplit((parts.scheme, host, parts.path, "", ""))}


def given_or_saved_box(path: str | Path, box: BoxBase | None, remote: str | None) -> BoxBase:
    """``box`` when given, else the box the folder names (``open_saved_box``)."""
    if box is not None and remote:
        raise ConfigError("pass a box or remote=URL, not both")
    return box if box is not None else open_saved_box(path, remote=remote)


def open_saved_box(path: str | Path, key: str = "box", remote: str | None = None) -> BoxBase:
    """The box an adapter folder names under ``key``: ``remote`` (a served box's URL) when
    given; else the backbone it records (the packaged default, a local folder, a cached model
    id), rebuilt with the recorded spec's pooling, normalisation and entry points. A served box
    is never connected to from what a folder says (it would send the user's token where the
    folder points): pass ``remote=``. The caller checks the fingerprint as for any box."""
    path = Path(path)
    if remote:
        from exotune.boxes.remote import connect

        return connect(remote)
    cfg = read_folder_config(path)
    spec = saved_spec_of(cfg, key, path / CONFIG_NAME)
    source = cfg.get(f"{key}_source") or {}
    if not isinstance(source, dict):
        raise ArtifactError(f"{path / CONFIG_NAME}: {key}_source must be a JSON object, got {source!r:.80}")
    if "remote" in source:
        raise ConfigError(
            f"the adapter in {path} was trained against the served box {source['remote']!r}: "
            "pass remote=URL (or box=) to load it"
        )
    if spec.modality != "text":
        raise ConfigError(f"the adapter in {path} was trained against a {spec.modality} box: pass box=")
    if spec.input_basis:
        raise ConfigError(
            f"the adapter in {path} was trained against a box in its owner's secret basis: "
            "connect to it (remote=URL) or pass box="
        )
    backbone = source.get("backbone")
    if backbone is not None and not isinstance(backbone, str):
        raise ArtifactError(f"{path / CONFIG_NAME}: {key}_source.backbone must be a string, got {backbone!r:.80}")
    from exotune.boxes.loading import load_box

    options = {
        "pooling": spec.pooling,
        "normalize": spec.normalized,
        **entry_point_options(spec.entry_points, spec.entry_mode),
    }
    return load_box(backbone, **options)  # no source recorded: the packaged default, if it fits


def saved_box_options(path: str | Path, key: str = "box") -> dict:
    """``load_box`` options that rebuild the box an adapter was trained against: its entry
    points and how they take tokens (part of the spec's fingerprint). Empty for a DGA adapter.
    ``key`` names the box in a folder trained against two (``"text_box"`` of an image-text
    retriever)."""
    path = Path(path)
    cfg = read_folder_config(path)
    spec = saved_spec_of(cfg, key, path / CONFIG_NAME)
    return entry_point_options(spec.entry_points, spec.entry_mode)


def load_trained_state(model: nn.Module, path: str | Path) -> None:
    """Load ``adapter_model.safetensors`` into ``model``; names, shapes and float dtypes must match
    exactly, and every value be finite."""
    path = Path(path)
    state = read_tensors(path / WEIGHTS_NAME)
    check_tensors(state, model.state_dict(), path / WEIGHTS_NAME)
    model.load_state_dict(state)

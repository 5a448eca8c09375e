"""Explicit registry of adapters: CLI choices, docs and tests are derived from it."""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass

from torch import nn

from exotune.boxes.spec import BoxSpec
from exotune.errors import ConfigError

KINDS = ("input", "output")
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class AdapterEntry:
    kind: str
    name: str
    config_cls: type
    module_cls: type[nn.Module]
    modalities: tuple[str, ...]


_REGISTRY: dict[tuple[str, str], AdapterEntry] = {}


def register_adapter(kind: str, name: str, config_cls: type, modalities=("text", "image")):
    """Class decorator registering ``module_cls(config, spec)`` under (kind, name)."""
    if kind not in KINDS:
        raise ConfigError(f"adapter kind must be one of {KINDS}, got {kind!r}")
    if not _NAME.match(name):
        raise ConfigError(f"adapter name must match {_NAME.pattern}, got {name!r}")
    if (kind, name) in _REGISTRY:
        raise ConfigError(f"an {kind} adapter named {name!r} is already registered")
    if not dataclasses.is_dataclass(config_cls):
        raise ConfigError(f"config_cls for {name!r} must be a dataclass, got {config_cls!r}")

    def deco(module_cls):
        _REGISTRY[(kind, name)] = AdapterEntry(kind, name, config_cls, module_cls, tuple(modalities))
        return module_cls

    return deco


def adapter_names(kind: str, modality: str | None = None) -> list[str]:
    """Registered ``kind`` adapters, those that work on ``modality`` boxes if given."""
    return sorted(n for (k, n), e in _REGISTRY.items() if k == kind and (modality is None or modality in e.modalities))


def get_entry(kind: str, name: str) -> AdapterEntry:
    try:
        return _REGISTRY[(kind, name)]
    except KeyError:
        raise ConfigError(f"unknown {kind} adapter {name!r}; registered: {adapter_names(kind)}") from None


def config_from_dict(kind: str, data: dict):
    """Build an adapter config from ``{"type": name, **options}``; unknown keys warn and drop."""
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} adapter config must be a JSON object, got {data!r:.80}")
    data = dict(data)
    name = data.pop("type", None)
    if name is None:
        raise ConfigError(f"{kind} adapter config needs a 'type' key, got {sorted(data)}")
    if not isinstance(name, str):
        raise ConfigError(f"{kind} adapter config's 'type' must be a name, got {name!r:.80}")
    entry = get_entry(kind, name)
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        warnings.warn(f"ignoring unknown keys {unknown} for {kind} adapter {name!r}", stacklevel=2)
    return entry.config_cls(**{k: v for k, v in data.items() if k in fields})


def config_to_dict(kind: str, config) -> dict:
    for (k, name), entry in _REGISTRY.items():
        if k == kind and type(config) is entry.config_cls:
            return {"type": name, **dataclasses.asdict(config)}
    raise ConfigError(f"{type(config).__name__} is not a registered {kind} adapter config")


def build_adapter(kind: str, config, spec: BoxSpec) -> nn.Module:
    name = config_to_dict(kind, config)["type"]
    entry = get_entry(kind, name)
    if spec.modality not in entry.modalities:
        raise ConfigError(f"{kind} adapter {name!r} works on {entry.modalities} boxes, this box is {spec.modality!r}")
    return entry.module_cls(config, spec)

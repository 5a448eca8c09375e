"""The base of every ``*Config`` dataclass: one ``to_dict`` / ``from_dict`` through JSON, and
one policy for keys a config does not have (warned about and dropped: a folder written by a
newer version still loads)."""

from __future__ import annotations

import re
import warnings
from dataclasses import fields
from typing import ClassVar


def _plain(value):
    """JSON's shapes: tuples become lists, nested configs dicts."""
    if isinstance(value, ConfigBase):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class ConfigBase:
    """Mixin for config dataclasses: ``from_dict(to_dict())`` gives an equal config, also after
    a JSON round trip (``__post_init__`` turns JSON's lists back where a field needs it)."""

    config_kind: ClassVar[str] = ""  # how warnings name the config; default: from the class name

    @classmethod
    def kind(cls) -> str:
        """``WhiteBoxConfig`` -> ``white-box``, ``DGAConfig`` -> ``dga``."""
        return cls.config_kind or re.sub(r"(?<=[a-z])(?=[A-Z])", "-", cls.__name__.removesuffix("Config")).lower()

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict):
        """``cls(**data)`` with the keys ``cls`` does not have dropped, and a warning naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"ignoring unknown {cls.kind()} config keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})

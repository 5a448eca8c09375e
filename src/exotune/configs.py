"""The base of every ``*Config`` dataclass: one ``to_dict`` / ``from_dict`` through JSON, one
policy for keys a config does not have (warned about and dropped: a folder written by a newer
version still loads), and type and range checks for fields, so that a hand-edited file fails
with a message, not a trace."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import fields
from typing import ClassVar

from exotune.errors import ConfigError

#: upper bounds on sizes a config may ask for: far above any real use, far below an allocation
#: that would exhaust memory (an edited ``extra_tokens: 10**9`` is refused, not attempted)
MAX_TOKENS = 1024  # learnable tokens added to a sequence (extra tokens, entry tokens per point)
MAX_WIDTH = 1 << 16  # hidden widths and channels of an adapter
MAX_KERNEL = 63

_SIMPLE = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


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
        if not isinstance(data, dict):
            raise ConfigError(f"a {cls.kind()} config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"ignoring unknown {cls.kind()} config keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})


def check_field_types(config) -> None:
    """Each field annotated ``bool``, ``int``, ``float`` or ``str`` holds one (a bool is not an
    int; an int is a float; a float is finite). Call first in ``__post_init__``."""
    for f in fields(config):
        kinds = _SIMPLE.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        if kinds is None:
            continue
        value = getattr(config, f.name)
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if ok and float in kinds and not math.isfinite(value):
            ok = False
        if not ok:
            raise ConfigError(
                f"{type(config).__name__}.{f.name} must be {'a finite ' if float in kinds else 'a '}"
                f"{f.type}, got {value!r}"
            )


def check_int(config, name: str, low: int, high: int) -> None:
    """``config.name`` is an integer in [low, high]."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{type(config).__name__}.{name} must be an integer in [{low}, {high}], got {value!r}")

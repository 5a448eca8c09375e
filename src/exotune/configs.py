"""Config dataclasses from saved JSON: unknown keys are warned about and dropped, and every
simple field is type-checked, so that a hand-edited file fails with a message, not a trace."""

from __future__ import annotations

import math
import warnings
from dataclasses import fields

from exotune.errors import ConfigError

#: upper bounds on sizes a config may ask for: far above any real use, far below an allocation
#: that would exhaust memory (an edited ``extra_tokens: 10**9`` is refused, not attempted)
MAX_TOKENS = 1024  # learnable tokens added to a sequence (extra tokens, entry tokens per point)
MAX_WIDTH = 1 << 16  # hidden widths and channels of an adapter
MAX_KERNEL = 63

_SIMPLE = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


def from_known_keys(cls, data: dict, what: str):
    """``cls(**data)`` with the keys ``cls`` does not have dropped, and a warning naming them."""
    if not isinstance(data, dict):
        raise ConfigError(f"a {what} config must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        warnings.warn(f"ignoring unknown {what} config keys {unknown}", stacklevel=3)
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
            raise ConfigError(f"{type(config).__name__}.{f.name} must be {'a finite ' if float in kinds else 'a '}"
                              f"{f.type}, got {value!r}")


def check_int(config, name: str, low: int, high: int) -> None:
    """``config.name`` is an integer in [low, high]."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{type(config).__name__}.{name} must be an integer in [{low}, {high}], got {value!r}")

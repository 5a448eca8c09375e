"""Config dataclasses from saved JSON: unknown keys are warned about and dropped."""

from __future__ import annotations

import warnings
from dataclasses import fields


def from_known_keys(cls, data: dict, what: str):
    """``cls(**data)`` with the keys ``cls`` does not have dropped, and a warning naming them."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        warnings.warn(f"ignoring unknown {what} config keys {unknown}", stacklevel=3)
    return cls(**{k: v for k, v in data.items() if k in known})

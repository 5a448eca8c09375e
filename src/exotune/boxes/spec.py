"""What a box tells its users: shapes, dims, access level, limits. Never weights."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from exotune.errors import ConfigError

ACCESS_LEVELS = ("black", "dark-gray", "light-gray")
MODALITIES = ("text", "image")


@dataclass(frozen=True)
class EntryPoint:
    """A named place inside the backbone that accepts up to ``max_tokens`` learnable tokens."""

    name: str
    max_tokens: int

    def __post_init__(self) -> None:
        if not self.name or self.max_tokens < 1:
            raise ConfigError(
                f"EntryPoint needs a name and max_tokens >= 1, got {self.name!r}, {self.max_tokens}"
            )


@dataclass(frozen=True)
class BoxLimits:
    """Bounds the owner puts on a single call. Run-time knobs: not part of the fingerprint."""

    max_batch: int = 512
    max_length: int = 512  # sequence length the forward accepts, adapter tokens included

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_length < 2:
            raise ConfigError(
                f"BoxLimits needs max_batch >= 1 and max_length >= 2, got {self.max_batch}, {self.max_length}"
            )


@dataclass(frozen=True)
class BoxSpec:
    """The public description of a hidden backbone.

    ``input_shape`` is the shape of one input without the batch dimension; ``None`` marks a
    free dimension (the sequence length of a text encoder).
    """

    modality: str
    input_kind: str  # "token-embeddings" for text encoders
    input_shape: tuple[int | None, ...]
    output_dim: int
    access: str
    model_digest: str  # identifies the backbone's weights without revealing them
    text_max_length: int = 0  # tokens the box's tokenizer keeps per text (specials included)
    pooling: str = "mean"
    normalized: bool = False
    entry_points: tuple[EntryPoint, ...] = ()
    limits: BoxLimits = field(default_factory=BoxLimits)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ConfigError(f"BoxSpec.modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.access not in ACCESS_LEVELS:
            raise ConfigError(f"BoxSpec.access must be one of {ACCESS_LEVELS}, got {self.access!r}")
        if self.output_dim < 1:
            raise ConfigError(f"BoxSpec.output_dim must be >= 1, got {self.output_dim}")

    @property
    def input_dim(self) -> int:
        """Width of one input token (the last dimension of ``input_shape``)."""
        return int(self.input_shape[-1])  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BoxSpec:
        data = dict(data)
        data["input_shape"] = tuple(data["input_shape"])
        data["entry_points"] = tuple(EntryPoint(**e) for e in data.get("entry_points", ()))
        data["limits"] = BoxLimits(**data.get("limits", {}))
        return cls(**data)

    def fingerprint(self) -> str:
        """Hash of everything an adapter depends on (limits excluded: they may change)."""
        data = self.to_dict()
        data.pop("limits")
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def differences(self, other: BoxSpec) -> list[str]:
        """Names of the fingerprinted fields whose values differ, for error messages."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k != "limits" and a[k] != b[k]]

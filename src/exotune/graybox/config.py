"""DGA configuration: which input and output adapters, with their options."""

from __future__ import annotations

from dataclasses import dataclass, field

from exotune.errors import ConfigError
from exotune.graybox.input_adapters import TextShiftConfig
from exotune.graybox.output_adapters import LinearOutputConfig
from exotune.graybox.registry import config_from_dict, config_to_dict

VARIANTS = ("both", "input-only", "output-only", "none")


@dataclass
class DGAConfig:
    """Adapters on either side of the hidden backbone; ``None`` switches a side off."""

    input_adapter: object | None = field(default_factory=TextShiftConfig)
    output_adapter: object | None = field(default_factory=LinearOutputConfig)

    def __post_init__(self) -> None:
        if isinstance(self.input_adapter, dict):
            self.input_adapter = config_from_dict("input", self.input_adapter)
        if isinstance(self.output_adapter, dict):
            self.output_adapter = config_from_dict("output", self.output_adapter)
        # validates that both are registered configs
        self.to_dict()

    @classmethod
    def variant(cls, name: str, input_adapter=None, output_adapter=None) -> DGAConfig:
        """The ablation forms: ``both``, ``input-only``, ``output-only`` (``none``: head only)."""
        if name not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS}, got {name!r}")
        use_in = name in ("both", "input-only")
        use_out = name in ("both", "output-only")
        return cls(
            input_adapter=(input_adapter or TextShiftConfig()) if use_in else None,
            output_adapter=(output_adapter or LinearOutputConfig()) if use_out else None,
        )

    @property
    def variant_name(self) -> str:
        return {
            (True, True): "both",
            (True, False): "input-only",
            (False, True): "output-only",
            (False, False): "none",
        }[(self.input_adapter is not None, self.output_adapter is not None)]

    def to_dict(self) -> dict:
        return {
            "input_adapter": None if self.input_adapter is None else config_to_dict("input", self.input_adapter),
            "output_adapter": None if self.output_adapter is None else config_to_dict("output", self.output_adapter),
        }

    @classmethod
    def from_dict(cls, data: dict) -> DGAConfig:
        return cls(input_adapter=data.get("input_adapter"), output_adapter=data.get("output_adapter"))

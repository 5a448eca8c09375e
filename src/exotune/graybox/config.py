"""DGA / LGA configuration: which input and output adapters, and entry tokens, with their options."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from exotune.configs import ConfigBase, check_field_types
from exotune.errors import ConfigError
from exotune.graybox.entry_tokens import EntryTokensConfig
from exotune.graybox.input_adapters import PixelConvConfig, TextShiftConfig
from exotune.graybox.output_adapters import LinearOutputConfig
from exotune.graybox.registry import config_from_dict, config_to_dict

VARIANTS = ("both", "input-only", "output-only", "none")
# The paper's input adapter for each kind of box input
DEFAULT_INPUT_ADAPTERS = {"text": TextShiftConfig, "image": PixelConvConfig}


# options added after the first saved adapters, and their off value: a config with one off is
# saved without it, byte for byte as before the option existed
_OFF = {"reparam": 0, "copies_per": 0, "gain": False, "kernel": 1}


@dataclass
class DGAConfig(ConfigBase):
    """Adapters on either side of the hidden backbone; ``None`` switches a side off.

    With ``entry_tokens`` set this is LGA (DGA plus tokens at a light-gray box's entry points).

    ``input_dropout``: while training, dropout on every token embedding a text box is given (the
    text's and the adapter's tokens). A box runs its model in evaluation mode, so none of the
    model's own dropout acts on the user's training; this is the part of it the user's side can
    apply, on the inputs it controls. No effect on outputs once trained.
    """

    input_adapter: object | None = field(default_factory=TextShiftConfig)
    output_adapter: object | None = field(default_factory=LinearOutputConfig)
    entry_tokens: EntryTokensConfig | None = None
    input_dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.input_adapter, dict):
            self.input_adapter = config_from_dict("input", self.input_adapter)
        if isinstance(self.output_adapter, dict):
            self.output_adapter = config_from_dict("output", self.output_adapter)
        for name in ("input_adapter", "output_adapter", "entry_tokens"):
            value = getattr(self, name)
            if isinstance(value, (str, int, float, bool, list)):  # what JSON holds besides objects and null
                raise ConfigError(
                    f"DGAConfig.{name} must be an adapter config (a JSON object) or null, got {value!r:.80}"
                )
        check_field_types(self)
        if not 0.0 <= self.input_dropout < 1.0:
            raise ConfigError(f"input_dropout must be in [0, 1), got {self.input_dropout}")
        self.input_dropout = float(self.input_dropout)
        if isinstance(self.entry_tokens, dict):
            self.entry_tokens = EntryTokensConfig.from_dict(self.entry_tokens)
        if self.entry_tokens is not None and not isinstance(self.entry_tokens, EntryTokensConfig):
            raise ConfigError(f"entry_tokens must be an EntryTokensConfig or None, got {self.entry_tokens!r}")
        # validates that both are registered configs
        self.to_dict()

    @classmethod
    def variant(
        cls,
        name: str,
        input_adapter=None,
        output_adapter=None,
        entry_tokens=None,
        modality: str = "text",
        input_dropout: float = 0.0,
    ) -> DGAConfig:
        """The ablation forms: ``both``, ``input-only``, ``output-only`` (``none``: head only);
        with ``entry_tokens`` (an ``EntryTokensConfig``), the LGA form of each. The input
        adapter defaults to the paper's for ``modality``: a shift token and an extra token
        for text, an identity-initialised pixel convolution for images."""
        if name not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS}, got {name!r}")
        if modality not in DEFAULT_INPUT_ADAPTERS:
            raise ConfigError(f"modality must be one of {sorted(DEFAULT_INPUT_ADAPTERS)}, got {modality!r}")
        use_in = name in ("both", "input-only")
        use_out = name in ("both", "output-only")
        return cls(
            input_adapter=(input_adapter or DEFAULT_INPUT_ADAPTERS[modality]()) if use_in else None,
            output_adapter=(output_adapter or LinearOutputConfig()) if use_out else None,
            entry_tokens=entry_tokens,
            input_dropout=input_dropout,
        )

    @property
    def method(self) -> str:
        """``lga`` with entry tokens, else ``dga`` (the benchmark records' ``method``)."""
        return "dga" if self.entry_tokens is None else "lga"

    @property
    def access(self) -> str:
        """The access level a box must grant to train this configuration."""
        return "dark-gray" if self.entry_tokens is None else "light-gray"

    @property
    def description(self) -> str:
        """For people: ``DGA (both)``, ``LGA (output-only, tokens=2)``."""
        parts = [self.variant_name] + ([] if self.entry_tokens is None else [self.entry_tokens.variant_name])
        parts += [f"input dropout {self.input_dropout:g}"] * bool(self.input_dropout)
        return f"{self.method.upper()} ({', '.join(parts)})"

    @property
    def variant_name(self) -> str:
        """Which sides are adapted (entry tokens aside: see ``method``)."""
        return {
            (True, True): "both",
            (True, False): "input-only",
            (False, True): "output-only",
            (False, False): "none",
        }[(self.input_adapter is not None, self.output_adapter is not None)]

    def folded(self) -> DGAConfig:
        """This configuration as saved: tokens re-parameterised while training are plain tokens."""

        def plain(config):
            has = config is not None and "reparam" in {f.name for f in fields(config)}
            return replace(config, reparam=0) if has else config

        return replace(self, input_adapter=plain(self.input_adapter), entry_tokens=plain(self.entry_tokens))

    def to_dict(self) -> dict:
        out = {
            "input_adapter": None if self.input_adapter is None else config_to_dict("input", self.input_adapter),
            "output_adapter": None if self.output_adapter is None else config_to_dict("output", self.output_adapter),
            "entry_tokens": None if self.entry_tokens is None else self.entry_tokens.to_dict(),
        }
        for part in (out["input_adapter"], out["entry_tokens"]):
            for key, off in _OFF.items():  # off: saved as before the option existed
                if part is not None and key in part and part[key] == off:
                    del part[key]
        if self.input_dropout:  # off: saved as before the option existed
            out["input_dropout"] = self.input_dropout
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DGAConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a DGA config must be a JSON object, got {data!r:.80}")
        # a side absent is switched off; entry_tokens is absent in DGA adapters saved before LGA
        return super().from_dict({"input_adapter": None, "output_adapter": None, **data})

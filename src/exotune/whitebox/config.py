"""White-box configuration: LoRA (through Hugging Face PEFT) or full fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass

from exotune.configs import MAX_WIDTH, ConfigBase, check_field_types
from exotune.errors import ConfigError

MODES = ("lora", "full-ft")
# Attention projections of the BERT family (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM); "dense"
# adds the attention-output and feed-forward projections of every layer.
DEFAULT_TARGETS = ("query", "key", "value")


@dataclass
class WhiteBoxConfig(ConfigBase):
    """How the owned encoder is trained. ``r``, ``alpha``, ``dropout`` and ``target_modules``
    apply to ``lora`` only; ``full-ft`` trains every encoder weight."""

    mode: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)
        if self.mode == "lora":
            if isinstance(self.r, bool) or not isinstance(self.r, int) or not 1 <= self.r <= MAX_WIDTH:
                raise ConfigError(f"r (the LoRA rank) must be an integer in [1, {MAX_WIDTH}], got {self.r!r}")
            if not self.alpha > 0:
                raise ConfigError(f"alpha must be > 0, got {self.alpha}")
            if not 0.0 <= self.dropout < 1.0:
                raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
            if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
                raise ConfigError(f"target_modules must be non-empty module names, got {self.target_modules!r}")

    @classmethod
    def lora(
        cls,
        r: int = 8,
        alpha: float | None = None,
        dropout: float = 0.1,
        dense: bool = False,
        targets: tuple[str, ...] = DEFAULT_TARGETS,
    ) -> WhiteBoxConfig:
        """LoRA on ``targets`` (default: query/key/value, plus every ``dense`` projection if asked);
        alpha = 2r by default."""
        targets = (*targets, "dense") if dense else tuple(targets)
        return cls("lora", r, float(alpha if alpha is not None else 2 * r), dropout, targets)

    @classmethod
    def full_ft(cls) -> WhiteBoxConfig:
        return cls(mode="full-ft")

    @property
    def variant_name(self) -> str:
        if self.mode == "full-ft":
            return "all"
        return f"r={self.r}" + (",dense" if "dense" in self.target_modules else "")

"""Gray-box adaptation (DGA, LGA): adapters and entry tokens trained through a hidden backbone."""

from exotune.graybox import input_adapters, output_adapters  # noqa: F401  (registers adapters)
from exotune.graybox.config import VARIANTS, DGAConfig
from exotune.graybox.entry_tokens import EntryTokens, EntryTokensConfig
from exotune.graybox.input_adapters import (
    PixelConvConfig,
    PixelResidualConfig,
    TextShiftConfig,
    TokenConditionedConfig,
    TokenLowRankConfig,
)
from exotune.graybox.model import GrayBoxModel
from exotune.graybox.output_adapters import LinearOutputConfig, ResidualMLPConfig
from exotune.graybox.registry import adapter_names, register_adapter

__all__ = [
    "VARIANTS",
    "DGAConfig",
    "EntryTokens",
    "EntryTokensConfig",
    "GrayBoxModel",
    "LinearOutputConfig",
    "PixelConvConfig",
    "PixelResidualConfig",
    "ResidualMLPConfig",
    "TextShiftConfig",
    "TokenConditionedConfig",
    "TokenLowRankConfig",
    "adapter_names",
    "register_adapter",
]

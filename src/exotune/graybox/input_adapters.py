"""Input adapters: learnable maps whose output has the shape of the backbone's input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from exotune.boxes.spec import BoxSpec
from exotune.errors import ConfigError
from exotune.graybox.registry import register_adapter


@dataclass
class TextShiftConfig:
    """A shift token added to every token embedding, plus ``extra_tokens`` learnable tokens.

    The extra tokens are inserted right after the first token ([CLS]) so that they sit at
    the same positions in every sequence of a padded batch.
    """

    shift: bool = True
    extra_tokens: int = 1
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if not isinstance(self.extra_tokens, int) or self.extra_tokens < 0:
            raise ConfigError(f"extra_tokens must be an integer >= 0, got {self.extra_tokens!r}")
        if not self.shift and self.extra_tokens == 0:
            raise ConfigError("text-shift adapter with shift=False and extra_tokens=0 learns nothing")
        if self.init_std < 0:
            raise ConfigError(f"init_std must be >= 0, got {self.init_std}")


@register_adapter("input", "text-shift", TextShiftConfig, modalities=("text",))
class TextShiftAdapter(nn.Module):
    def __init__(self, config: TextShiftConfig, spec: BoxSpec) -> None:
        super().__init__()
        self.config = config
        dim = spec.input_dim
        self.shift = nn.Parameter(torch.zeros(dim)) if config.shift else None  # zero: identity at start
        self.extra = (
            nn.Parameter(torch.randn(config.extra_tokens, dim) * config.init_std)
            if config.extra_tokens
            else None
        )

    @property
    def added_tokens(self) -> int:
        return self.config.extra_tokens

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # embeds (B, T, D), mask (B, T)
        if self.shift is not None:
            embeds = embeds + self.shift * mask.unsqueeze(-1).to(embeds.dtype)  # pads stay untouched
        if self.extra is not None:
            b, k = embeds.shape[0], self.extra.shape[0]
            extra = self.extra.unsqueeze(0).expand(b, k, -1)  # (B, k, D)
            embeds = torch.cat([embeds[:, :1], extra, embeds[:, 1:]], dim=1)  # (B, T + k, D)
            ones = torch.ones(b, k, dtype=mask.dtype, device=mask.device)
            mask = torch.cat([mask[:, :1], ones, mask[:, 1:]], dim=1)  # (B, T + k)
        return embeds, mask

"""Output adapters: learnable maps on the backbone's pooled output, identity at start."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from exotune.boxes.spec import BoxSpec
from exotune.configs import MAX_WIDTH, ConfigBase, check_field_types, check_int
from exotune.errors import ConfigError
from exotune.graybox.registry import register_adapter


@dataclass
class LinearOutputConfig(ConfigBase):
    bias: bool = True

    def __post_init__(self) -> None:
        check_field_types(self)


@register_adapter("output", "linear", LinearOutputConfig)
class LinearOutputAdapter(nn.Module):
    """The paper's output adapter: a square linear map, initialised to the identity."""

    def __init__(self, config: LinearOutputConfig, spec: BoxSpec) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.Linear(spec.output_dim, spec.output_dim, bias=config.bias)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(spec.output_dim))
            if self.proj.bias is not None:
                self.proj.bias.zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.proj(z)  # (B, O)


@dataclass
class ResidualMLPConfig(ConfigBase):
    hidden: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_field_types(self)
        check_int(self, "hidden", 1, MAX_WIDTH)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


@register_adapter("output", "mlp", ResidualMLPConfig)
class ResidualMLPAdapter(nn.Module):
    """z + up(gelu(down(z))), with ``up`` zero-initialised so the adapter starts as identity."""

    def __init__(self, config: ResidualMLPConfig, spec: BoxSpec) -> None:
        super().__init__()
        self.config = config
        self.down = nn.Linear(spec.output_dim, config.hidden)
        self.up = nn.Linear(config.hidden, spec.output_dim)
        self.drop = nn.Dropout(config.dropout)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.up(self.drop(nn.functional.gelu(self.down(z))))  # (B, O)

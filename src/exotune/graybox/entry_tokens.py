"""LGA entry tokens: an independent set of learnable tokens per entry point of a light-gray box."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from exotune.boxes.entry_points import reserved
from exotune.boxes.spec import BoxSpec
from exotune.configs import MAX_TOKENS, MAX_WIDTH, ConfigBase, check_field_types, check_int
from exotune.errors import AccessError, ConfigError
from exotune.graybox.tokens import TokenMLP


@dataclass
class EntryTokensConfig(ConfigBase):
    """Which entry points get tokens (``"all"`` or names from ``spec.entry_points``), how many
    tokens each (the same count everywhere: the box reserves one set of positions), and the
    std of their random initialisation (0: zeros)."""

    points: str | list[str] = "all"
    tokens: int = 2
    init_std: float = 0.02
    reparam: int = 0  # hidden width of a residual MLP per entry point while training (graybox.tokens); 0: none

    def __post_init__(self) -> None:
        if self.points != "all":
            if isinstance(self.points, str) or not isinstance(self.points, (list, tuple)) or not self.points:
                raise ConfigError(f"points must be 'all' or a non-empty list of entry point names, got {self.points!r}")
            if not all(isinstance(p, str) and p for p in self.points):
                raise ConfigError(f"points must hold entry point names (strings), got {self.points!r}")
            if len(set(self.points)) != len(self.points):
                raise ConfigError(f"points lists an entry point twice: {list(self.points)!r}")
            self.points = list(self.points)  # JSON gives lists: keep round trips equal
        check_field_types(self)
        check_int(self, "tokens", 1, MAX_TOKENS)
        if not self.init_std >= 0:
            raise ConfigError(f"init_std must be >= 0, got {self.init_std}")
        check_int(self, "reparam", 0, MAX_WIDTH)

    @property
    def variant_name(self) -> str:
        return f"tokens={self.tokens}"


def resolve_points(config: EntryTokensConfig, spec: BoxSpec) -> list[str]:
    """The entry point names ``config`` asks for, checked against what the box exposes."""
    if spec.access != "light-gray" or not spec.entry_points:
        raise AccessError(
            f"entry tokens (LGA) need a light-gray box with entry points; this box is {spec.access} and "
            "exposes no entry points. Load it with entry points (e.g. load_box(..., entry_points='all')) "
            "or train DGA (entry_tokens=None)"
        )
    exposed = {e.name: e for e in spec.entry_points}
    names = list(exposed) if config.points == "all" else config.points
    unknown = [n for n in names if n not in exposed]
    if unknown:
        raise ConfigError(f"points: unknown entry points {unknown}; the box exposes {list(exposed)}")
    too_few = {n: exposed[n].max_tokens for n in names if exposed[n].max_tokens < config.tokens}
    if too_few:
        raise ConfigError(f"tokens={config.tokens} exceeds what these entry points accept: {too_few}")
    return names


class EntryTokens(nn.Module):
    """One independent ``nn.Parameter`` (n, D) per entry point; with ``reparam``, each through its
    own residual MLP while training (folded into plain tokens when saved)."""

    def __init__(self, config: EntryTokensConfig, spec: BoxSpec) -> None:
        super().__init__()
        self.config = config
        self.names = resolve_points(config, spec)
        # A list, not a ParameterDict: entry point names ("layer.0") are not valid attribute names.
        self.tokens = nn.ParameterList(
            nn.Parameter(torch.randn(config.tokens, spec.entry_dim) * config.init_std) for _ in self.names
        )
        self._added = reserved(spec.entry_mode, config.tokens)
        self.mlps = (
            nn.ModuleList(TokenMLP(spec.entry_dim, config.reparam) for _ in self.names) if config.reparam else None
        )

    reparam_keys = ("mlps.",)

    @property
    def added_tokens(self) -> int:
        """Sequence positions the box reserves for the tokens (none when its entry points act on every
        position: shift, affine)."""
        return self._added

    def forward(self) -> dict[str, torch.Tensor]:
        if self.mlps is None:
            return dict(zip(self.names, self.tokens, strict=True))  # name -> (n, D)
        return {name: mlp(p) for name, p, mlp in zip(self.names, self.tokens, self.mlps, strict=True)}

    def folded_tokens(self) -> dict[str, torch.Tensor]:
        """State-dict entries that replace the re-parameterisation (``reparam_keys``) in a saved adapter."""
        if self.mlps is None:
            return {}
        return {f"tokens.{i}": t.detach().clone() for i, t in enumerate(self().values())}

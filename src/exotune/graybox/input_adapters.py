"""Input adapters: learnable maps whose output has the shape of the backbone's input.

Text adapters map (embeds, mask) to (embeds, mask); image adapters map pixels (B, C, H, W) to
pixels of the same shape. Each registers the modalities it works on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from exotune.boxes.spec import BoxSpec
from exotune.configs import (
    MAX_KERNEL,
    MAX_TOKENS,
    MAX_WIDTH,
    ConfigBase,
    check_field_types,
    check_int,
)
from exotune.errors import ConfigError
from exotune.graybox.registry import register_adapter
from exotune.graybox.tokens import TokenMLP


@dataclass
class TextShiftConfig(ConfigBase):
    """A shift token added to every token embedding, plus ``extra_tokens`` learnable tokens.

    The extra tokens are inserted where the box says (``spec.insert_at``: right after the first
    token, [CLS], or after the owner's prompt) so that they sit at the same positions in every
    sequence of a padded batch. With ``copies_per`` N > 0 they go after each text instead, one
    copy of them per N of its tokens: a mean-pooling box then gives them the same share of its
    output, about k / (N + k), however long the text (once, their share shrinks as texts grow,
    so an adapter trained on short texts says less on long ones).
    """

    shift: bool = True
    extra_tokens: int = 1
    init_std: float = 0.02
    reparam: int = 0  # hidden width of the tokens' residual MLP while training (graybox.tokens); 0: none
    copies_per: int = 0  # one copy of the extra tokens per this many text tokens, after the text; 0: once
    gain: bool = False  # also a learnt gain of every token embedding: e * (1 + g) + shift (g zero at start)

    def __post_init__(self) -> None:
        _check_tokens(self)
        if not self.shift and self.extra_tokens == 0 and not self.gain:
            raise ConfigError("text-shift adapter with shift=False, extra_tokens=0 and no gain learns nothing")


def _check_tokens(config) -> None:
    check_field_types(config)
    check_int(config, "extra_tokens", 0, MAX_TOKENS)
    if not config.init_std >= 0:
        raise ConfigError(f"init_std must be >= 0, got {config.init_std}")
    check_int(config, "reparam", 0, MAX_WIDTH)
    check_int(config, "copies_per", 0, MAX_TOKENS)
    if config.copies_per and not config.extra_tokens:
        raise ConfigError("copies_per copies the extra tokens: give extra_tokens >= 1")


@register_adapter("input", "text-shift", TextShiftConfig, modalities=("text",))
class TextShiftAdapter(nn.Module):
    def __init__(self, config: TextShiftConfig, spec: BoxSpec) -> None:
        super().__init__()
        self.config = config
        self.at = spec.insert_at
        if config.copies_per and spec.pooling != "mean":
            raise ConfigError(
                f"copies_per places tokens after the text for a mean-pooling box; this box pools by {spec.pooling!r}"
            )
        # the most positions it adds, for the longest text the box reads
        self._added = config.extra_tokens * (-(-spec.text_max_length // config.copies_per) if config.copies_per else 1)
        dim = spec.input_dim
        self.shift = nn.Parameter(torch.zeros(dim)) if config.shift else None  # zero: identity at start
        self.gain = nn.Parameter(torch.zeros(dim)) if config.gain else None  # zero: identity at start
        self.extra = (
            nn.Parameter(torch.randn(config.extra_tokens, dim) * config.init_std) if config.extra_tokens else None
        )
        # Residual re-parameterisation of the extra tokens while training; folded when saved.
        self.extra_mlp = TokenMLP(dim, config.reparam) if config.extra_tokens and config.reparam else None

    @property
    def added_tokens(self) -> int:
        return self._added

    def token_parameters(self) -> list[nn.Parameter]:
        """The tokens and their re-parameterisation (the ``tokens`` parameter group); the rest is
        the input side."""
        mlp = [] if self.extra_mlp is None else list(self.extra_mlp.parameters())
        return ([] if self.extra is None else [self.extra]) + mlp

    def extra_tokens(self) -> torch.Tensor | None:
        """The extra tokens the box sees (k, D)."""
        return self.extra if self.extra_mlp is None else self.extra_mlp(self.extra)

    def folded_tokens(self) -> dict[str, torch.Tensor]:
        """State-dict entries that replace the re-parameterisation (``reparam_keys``) in a saved adapter."""
        return {} if self.extra_mlp is None else {"extra": self.extra_tokens().detach().clone()}

    reparam_keys = ("extra_mlp.",)

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # embeds (B, T, D), mask (B, T)
        extra = None if self.extra is None else self.extra_tokens().unsqueeze(0).expand(embeds.shape[0], -1, -1)
        return self._place(embeds, mask, self.shift, extra)

    def _place(self, embeds, mask, shift, extra) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale every real token by 1 + the gain (if any), add ``shift`` ((D,) or (B, D); None:
        none) and insert ``extra`` ((B, k, D); None: none) where the config says."""
        if self.gain is not None:
            embeds = embeds * (1 + self.gain * mask.unsqueeze(-1).to(embeds.dtype))  # pads stay untouched
        if shift is not None:
            shift = shift if shift.ndim == 1 else shift.unsqueeze(1)  # (D,) or (B, 1, D)
            embeds = embeds + shift * mask.unsqueeze(-1).to(embeds.dtype)  # pads stay untouched
        if extra is not None and self.config.copies_per:
            return self._append_copies(embeds, mask, extra)
        if extra is not None:
            b, k = extra.shape[:2]
            at = self.at
            embeds = torch.cat([embeds[:, :at], extra, embeds[:, at:]], dim=1)  # (B, T + k, D)
            ones = torch.ones(b, k, dtype=mask.dtype, device=mask.device)
            mask = torch.cat([mask[:, :at], ones, mask[:, at:]], dim=1)  # (B, T + k)
        return embeds, mask

    def _append_copies(self, embeds, mask, extra) -> tuple[torch.Tensor, torch.Tensor]:
        """Right after each text's last token, ceil(length / copies_per) copies of the extra
        tokens ``extra`` (B, k, D) (the text's own positions unchanged); pads after them."""
        b, t, d = embeds.shape
        lengths = mask.sum(dim=1)  # (B,): texts start at position 0, pads follow
        copies = (lengths + self.config.copies_per - 1) // self.config.copies_per  # (B,)
        block = extra.repeat(1, int(copies.max()), 1)  # (B, C * k, D)
        n = block.shape[1]
        out = torch.cat([embeds, embeds.new_zeros(b, n, d)], dim=1)  # (B, T + C k, D)
        slots = lengths.unsqueeze(1) + torch.arange(n, device=mask.device)  # (B, C k)
        out = out.scatter(1, slots.unsqueeze(-1).expand(b, n, d), block)
        ends = lengths + copies * extra.shape[1]  # (B,)
        new_mask = (torch.arange(t + n, device=mask.device) < ends.unsqueeze(1)).to(mask.dtype)
        return out, new_mask


TOKEN_ACTIVATIONS = {"none": None, "gelu": nn.functional.gelu, "relu": torch.relu, "tanh": torch.tanh}


@dataclass
class TokenLowRankConfig(ConfigBase):
    """An input-dependent map of every token: ``e + U act(V e)`` of rank ``rank`` (``U`` starts
    at zero: the identity at step 0; ``activation="none"`` keeps it linear), then the shift token
    and ``extra_tokens`` extra tokens of ``text-shift``. With ``kernel`` K > 1 each token's map
    reads its neighbours too: ``e_t + U act(sum_j W_j V e_(t+j))`` over the K positions around
    it (a convolution of the rank-R projections along the text; ``W`` starts as the identity at
    the centre and zero elsewhere, pads count as zero), so that a word can be read in the light
    of the words beside it ("not good") before the box sees it."""

    rank: int = 16
    activation: str = "none"
    kernel: int = 1  # positions each token's map reads (odd): 1, itself only
    shift: bool = True
    extra_tokens: int = 1
    init_std: float = 0.02
    reparam: int = 0  # as TextShiftConfig's
    copies_per: int = 0  # as TextShiftConfig's
    gain: bool = False  # as TextShiftConfig's

    def __post_init__(self) -> None:
        _check_tokens(self)
        check_int(self, "rank", 1, MAX_WIDTH)
        if self.activation not in TOKEN_ACTIVATIONS:
            raise ConfigError(f"activation must be one of {list(TOKEN_ACTIVATIONS)}, got {self.activation!r}")
        check_int(self, "kernel", 1, MAX_KERNEL)
        if self.kernel % 2 == 0:
            raise ConfigError(f"kernel must be odd (as many neighbours on each side), got {self.kernel}")

    @property
    def variant_name(self) -> str:
        act = "" if self.activation == "none" else f", {self.activation}"
        kernel = "" if self.kernel == 1 else f", k={self.kernel}"
        return f"lowrank(r={self.rank}{act}{kernel})"


@register_adapter("input", "token-lowrank", TokenLowRankConfig, modalities=("text",))
class TokenLowRankAdapter(TextShiftAdapter):
    """A per-token low-rank residual on the box's token embeddings, before the shift and the
    extra tokens; pads stay untouched."""

    def __init__(self, config: TokenLowRankConfig, spec: BoxSpec) -> None:
        super().__init__(config, spec)
        self.down = nn.Linear(spec.input_dim, config.rank, bias=False)  # V
        self.up = nn.Linear(config.rank, spec.input_dim, bias=False)  # U
        nn.init.zeros_(self.up.weight)
        self.mix = None  # W: the neighbours' share (kernel > 1)
        if config.kernel > 1:
            self.mix = nn.Conv1d(config.rank, config.rank, config.kernel, padding=config.kernel // 2, bias=False)
            nn.init.dirac_(self.mix.weight)  # each position its own projection at the start

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        real = mask.unsqueeze(-1).to(embeds.dtype)  # (B, T, 1)
        hidden = _low_rank(self, embeds, None if self.mix is None else real)  # (B, T, D)
        embeds = embeds + hidden * real  # pads untouched
        return super().forward(embeds, mask)


def _low_rank(adapter, x: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """``U act(V x)`` with the adapter's ``up``, ``down`` and configured activation; given
    ``real`` (B, T, 1), the sequence's real positions, ``V x`` is first mixed along the sequence
    by the adapter's ``mix`` (pads read as zero)."""
    hidden = adapter.down(x)
    if real is not None:
        hidden = adapter.mix((hidden * real).transpose(1, 2)).transpose(1, 2)  # (B, T, R)
    act = TOKEN_ACTIVATIONS[adapter.config.activation]
    return adapter.up(hidden if act is None else act(hidden))


@dataclass
class TokenConditionedConfig(TokenLowRankConfig):
    """Instance-dependent tokens: the shift token and the ``extra_tokens`` extra tokens of
    ``text-shift``, each offset by a low-rank map of the box's own output for the plain text,
    ``U act(V z)`` (``U`` starts at zero, so step 0 is ``text-shift``). ``z`` comes from a first
    call of the box without gradient (what level black already gives), kept per text, so that
    a text costs that call once however many epochs see it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel != 1:
            raise ConfigError("kernel spans neighbouring tokens; token-conditioned maps one output per text")

    @property
    def variant_name(self) -> str:
        return super().variant_name.replace("lowrank", "conditioned")


@register_adapter("input", "token-conditioned", TokenConditionedConfig, modalities=("text",))
class TokenConditionedAdapter(TextShiftAdapter):
    """The shift and extra tokens of each text offset by a map of the plain box's output for it
    (``context``, (B, O), given by the tower: ``takes_context``)."""

    takes_context = True

    def __init__(self, config: TokenConditionedConfig, spec: BoxSpec) -> None:
        super().__init__(config, spec)
        self.slots = int(config.shift) + config.extra_tokens  # token vectors offset per text
        self.dim = spec.input_dim
        self.down = nn.Linear(spec.output_dim, config.rank, bias=False)  # V
        self.up = nn.Linear(config.rank, self.slots * spec.input_dim, bias=False)  # U
        nn.init.zeros_(self.up.weight)

    def forward(
        self, embeds: torch.Tensor, mask: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # embeds (B, T, D), mask (B, T), context (B, O): the plain box's outputs
        offsets = _low_rank(self, context.to(embeds.dtype)).view(-1, self.slots, self.dim)  # (B, slots, D)
        shift = None if self.shift is None else self.shift + offsets[:, 0]  # (B, D)
        extra = None
        if self.extra is not None:
            extra = self.extra_tokens().unsqueeze(0) + offsets[:, int(self.shift is not None) :]  # (B, k, D)
        return self._place(embeds, mask, shift, extra)


# -- images: maps of the pixels ---------------------------------------------------------------


def _check_kernel(config) -> None:
    check_field_types(config)
    check_int(config, "kernel_size", 1, MAX_KERNEL)
    kernel_size = config.kernel_size
    if kernel_size % 2 == 0:
        raise ConfigError(f"kernel_size must be an odd integer >= 1 (the image keeps its size), got {kernel_size!r}")


@dataclass
class PixelConvConfig(ConfigBase):
    """The paper's image input adapter: one 2-D convolution of the pixels, no activation."""

    kernel_size: int = 3
    bias: bool = True

    def __post_init__(self) -> None:
        _check_kernel(self)


@register_adapter("input", "pixel-conv", PixelConvConfig, modalities=("image",))
class PixelConvAdapter(nn.Module):
    """An affine map of the image, channels to channels, initialised to the identity (a centred
    unit tap per channel): at step 0 the box sees exactly the owner's pixels."""

    def __init__(self, config: PixelConvConfig, spec: BoxSpec) -> None:
        super().__init__()
        self.config = config
        c, k = spec.input_shape[0], config.kernel_size
        self.conv = nn.Conv2d(c, c, k, padding=k // 2, bias=config.bias)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[torch.arange(c), torch.arange(c), k // 2, k // 2] = 1.0
            if self.conv.bias is not None:
                self.conv.bias.zero_()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.conv(pixels)  # (B, C, H, W)


PIXEL_ACTIVATIONS = ("none", "gelu")


@dataclass
class PixelResidualConfig(ConfigBase):
    """pixels + up(act(down(pixels))): ``channels`` hidden channels, ``kernel_size`` for down,
    a 1x1 up projection; ``activation="none"`` keeps it affine."""

    kernel_size: int = 3
    channels: int = 8
    activation: str = "gelu"

    def __post_init__(self) -> None:
        _check_kernel(self)
        check_int(self, "channels", 1, MAX_WIDTH)
        if self.activation not in PIXEL_ACTIVATIONS:
            raise ConfigError(f"activation must be one of {PIXEL_ACTIVATIONS}, got {self.activation!r}")


@register_adapter("input", "pixel-residual", PixelResidualConfig, modalities=("image",))
class PixelResidualAdapter(nn.Module):
    """A small residual convolution; ``up`` starts at zero, so the adapter starts as the identity."""

    def __init__(self, config: PixelResidualConfig, spec: BoxSpec) -> None:
        super().__init__()
        self.config = config
        c, k = spec.input_shape[0], config.kernel_size
        self.down = nn.Conv2d(c, config.channels, k, padding=k // 2)
        self.up = nn.Conv2d(config.channels, c, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.down(pixels)  # (B, channels, H, W)
        if self.config.activation == "gelu":
            hidden = nn.functional.gelu(hidden)
        return pixels + self.up(hidden)  # (B, C, H, W)

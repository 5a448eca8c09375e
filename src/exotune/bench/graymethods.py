"""Gray-box method names the suites understand beyond their fixed tables, parsed into a DGA/LGA
configuration, so that a sweep can ask for any point of the grid by name:

- ``dga``, ``dga-both``, ``dga-input-only``, ``dga-output-only``: the text-shift input adapter;
- ``lga-N`` (N entry tokens at every layer), ``lga-N-upper`` (the upper half of the layers);
  ``lga`` alone: 2 tokens; LGA adapts both sides as DGA (both); then ``-add``: a box whose
  entry points add the tokens to their positions' hidden states (``entry_mode="add"``), e.g.
  ``lga-8-add``, ``lga-4-upper-add``, ``-shift``: whose entry points add the tokens' sum to
  every position (``entry_mode="shift"``), e.g. ``lga-1-shift``, or ``-affine``: scale every
  position by 1 + the first token and shift it by the others (``lga-2-affine``); then
  ``-input-only`` / ``-output-only``: LGA with one side of DGA, e.g. ``lga-8-input-only`` (no
  output adapter: the tokens and the head);
- any of them with ``-gain``: a learnt gain of every token embedding besides the shift token,
  ``e * (1 + g) + shift`` (``TextShiftConfig.gain``), e.g. ``dga-both-gain``;
- then ``-xK``: K extra tokens in the input adapter (default 1; ``-x0``: the shift
  token alone, so that nothing of the adapter's own enters the box's mean pooling, whose share
  would shrink as texts grow), e.g. ``dga-both-x0``, ``lga-8-x0``;
- then ``-cN``: the extra tokens after each text, one copy of them per N of its tokens, so that
  they keep their share of a mean-pooled output on long texts, e.g. ``dga-both-c4``;
- then ``-lowrankR`` (``-lowrankR-gelu``, ``-relu``, ``-tanh``): the token-lowrank
  input adapter of rank R (the shift token and the extra token kept), e.g. ``dga-lowrank16``,
  ``lga-4-upper-lowrank8``, or ``-condR`` (same activations): the token-conditioned one, whose
  shift and extra tokens move with a rank-R map of the plain box's output for each text, e.g.
  ``dga-both-cond16``; then ``-kK`` (token-lowrank only): each token's map reads the K
  positions around it (``TokenLowRankConfig.kernel``), e.g. ``dga-input-only-lowrank32-gelu-k3``;
- then ``-rptH``: the extra tokens and entry tokens re-parameterised by a residual MLP of width H
  while training (folded when saved), and ``-init-labels`` / ``-init-frequent``: the tokens start
  from the box's embeddings of the class names / of the training texts' frequent words, e.g.
  ``lga-8-upper-rpt64-init-frequent``;
- then ``-mlpH``: a residual MLP of width H as the output adapter (``ResidualMLPConfig``) in
  place of the paper's linear map, e.g. ``dga-both-gain-mlp256``;
- then ``-dropP``: dropout of P percent on the token embeddings the box is given, while
  training (``DGAConfig.input_dropout``), e.g. ``dga-both-drop10``, ``lga-8-drop20``;
- then ``-boxdrop``: a box whose owner lets training calls pass through the model's own
  dropout layers (``training_dropout=True``), e.g. ``lga-8-boxdrop``.

Per-group learning rates come with the budget: ``--lr dga.tokens=5e-2`` applies to every
gray-box method's tokens, ``--lr lga.tokens=5e-2`` to LGA's only (groups: ``PARAMETER_GROUPS``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exotune.errors import ConfigError

_NAME = re.compile(
    r"^(?:dga(?:-(?P<side>both|input-only|output-only))?|lga(?:-(?P<tokens>\d+)(?P<upper>-upper)?(?:-(?P<mode>add|shift|affine))?(?:-(?P<lside>input-only|output-only))?)?)"
    r"(?P<gain>-gain)?(?:-x(?P<extra>\d+))?(?:-c(?P<copies>\d+))?"
    r"(?:-(?P<map>lowrank|cond)(?P<rank>\d+)(?:-(?P<act>gelu|relu|tanh))?(?:-k(?P<kernel>\d+))?)?"
    r"(?:-rpt(?P<rpt>\d+))?(?:-init-(?P<init>labels|frequent))?(?:-mlp(?P<mlp>\d+))?(?:-drop(?P<drop>\d+))?(?P<boxdrop>-boxdrop)?$"
)
LGA_TOKENS = 2  # plain "lga": the classification suite's row


@dataclass(frozen=True)
class GrayMethod:
    name: str
    side: str = "both"  # DGAConfig.variant
    tokens: int | None = None  # entry tokens per layer: LGA
    upper: bool = False  # entry tokens in the upper half of the layers only
    entry_mode: str = "replace"  # how the box's entry points take the tokens (-add, -shift, -affine)
    rank: int | None = None  # token-lowrank (or token-conditioned) input adapter
    conditioned: bool = False  # token-conditioned rather than token-lowrank
    activation: str = "none"
    kernel: int = 1  # positions each token's low-rank map reads (token-lowrank)
    extra: int | None = None  # extra tokens of the input adapter (None: its default)
    gain: bool = False  # a gain of every token embedding in the input adapter
    copies: int = 0  # one copy of the extra tokens per this many text tokens, after the text
    reparam: int = 0  # residual MLP over the tokens while training
    init: str = "random"  # graybox.tokens.TOKEN_INITS
    mlp: int = 0  # width of a residual-MLP output adapter (0: the linear one)
    dropout: float = 0.0  # on the token embeddings given to the box, while training
    box_dropout: bool = False  # the box's own dropout on training calls (training_dropout=True)

    @property
    def method(self) -> str:
        return "dga" if self.tokens is None else "lga"

    @property
    def access(self) -> str:
        return "dark-gray" if self.tokens is None else "light-gray"

    @property
    def variant(self) -> str:
        """What the records call it: ``both``, ``tokens=4, upper half``, ``both+lowrank(r=16)``."""
        base = self.side if self.tokens is None else f"tokens={self.tokens}" + (", upper half" if self.upper else "")
        base = base if self.tokens is None or self.side == "both" else f"{self.side}, {base}"
        base += {"replace": "", "add": ", added", "shift": ", shifts", "affine": ", affine"}[self.entry_mode]
        extras = ["gain"] * self.gain + [f"extra={self.extra}"] * (self.extra is not None)
        extras += [f"copies/{self.copies}"] * bool(self.copies)
        extras += [] if self.rank is None else [self.input_config().variant_name]
        extras += [f"rpt(h={self.reparam})"] * bool(self.reparam) + [f"init={self.init}"] * (self.init != "random")
        extras += [f"mlp(h={self.mlp})"] * bool(self.mlp)
        extras += [f"dropout={self.dropout:g}"] * bool(self.dropout) + ["box dropout"] * self.box_dropout
        return "+".join([base, *extras])

    def input_config(self):
        from exotune.graybox.input_adapters import TextShiftConfig, TokenConditionedConfig, TokenLowRankConfig

        extra = {} if self.extra is None else {"extra_tokens": self.extra}
        extra.update({"copies_per": self.copies} if self.copies else {})
        extra.update({"gain": True} if self.gain else {})
        if self.rank is not None:
            kind = TokenConditionedConfig if self.conditioned else TokenLowRankConfig
            extra.update({"kernel": self.kernel} if self.kernel != 1 else {})
            return kind(rank=self.rank, activation=self.activation, reparam=self.reparam, **extra)
        return TextShiftConfig(reparam=self.reparam, **extra) if self.reparam or extra else None  # None: the default

    def init_tokens(self, tower, label_names: list[str] | None, texts: list[str]) -> None:
        """Start ``tower``'s tokens from words (``init``): class names or the texts' frequent words."""
        from exotune.graybox.tokens import init_tokens

        init_tokens(tower, self.init, label_names, texts)

    def load_box(self, backbone):
        from exotune.boxes import load_box

        return load_box(backbone, **self.box_options())

    def box_options(self) -> dict:
        """The box options the method needs: light-gray entry points for LGA, the model's
        dropout on training calls for ``-boxdrop``."""
        options = {"training_dropout": True} if self.box_dropout else {}
        if self.tokens is None:
            return options
        mode = {} if self.entry_mode == "replace" else {"entry_mode": self.entry_mode}
        return {"entry_points": "all", "entry_tokens_max": max(8, self.tokens), **mode, **options}

    def dga_config(self, box, modality: str = "text"):
        """The configuration for ``box`` (loaded by ``load_box``: it names the layers); an image
        box's input adapter is the pixel one (the name's text forms: low rank, extra tokens)."""
        from exotune.graybox import DGAConfig, EntryTokensConfig
        from exotune.graybox.output_adapters import ResidualMLPConfig

        tokens = None
        if self.tokens is not None:
            names = [e.name for e in box.spec.entry_points]
            tokens = EntryTokensConfig(
                points=names[len(names) // 2 :] if self.upper else "all", tokens=self.tokens, reparam=self.reparam
            )
        inputs = self.input_config() if modality == "text" else None
        outputs = ResidualMLPConfig(hidden=self.mlp) if self.mlp else None
        return DGAConfig.variant(
            self.side,
            input_adapter=inputs,
            output_adapter=outputs,
            entry_tokens=tokens,
            modality=modality,
            input_dropout=self.dropout,
        )


def parse(name: str) -> GrayMethod | None:
    """The gray-box method ``name`` stands for, or None when it is not one."""
    m = _NAME.match(name)
    if m is None:
        return None
    tokens = m["tokens"]
    if name.startswith("lga"):
        tokens = LGA_TOKENS if tokens is None else int(tokens)
        if tokens < 1:
            raise ConfigError(f"{name}: LGA needs at least 1 token per layer")
    side = m["side"] or m["lside"] or "both"
    rank = None if m["rank"] is None else int(m["rank"])
    if rank is not None and (rank < 1 or side == "output-only"):
        raise ConfigError(f"{name}: a low-rank input adapter needs rank >= 1 and an input side")
    if (m["extra"] is not None or m["copies"] or m["gain"]) and side == "output-only":
        raise ConfigError(f"{name}: -gain, -x and -c shape the input adapter; DGA (output-only) has no input adapter")
    if (m["rpt"] or m["init"]) and side == "output-only" and tokens is None:
        raise ConfigError(f"{name}: -rpt and -init act on tokens; DGA (output-only) has none")
    kernel = int(m["kernel"] or 1)
    if m["kernel"] is not None and (m["map"] != "lowrank" or kernel % 2 == 0):
        raise ConfigError(f"{name}: -kK is how many tokens each low-rank map reads: an odd K, after -lowrankR")
    mlp = int(m["mlp"] or 0)
    if m["mlp"] is not None and (mlp < 1 or side == "input-only"):
        raise ConfigError(f"{name}: -mlpH is the output adapter: it needs H >= 1 and an output side")
    drop = int(m["drop"] or 0)
    if drop >= 100:
        raise ConfigError(f"{name}: -dropP is a dropout in percent, below 100")
    return GrayMethod(
        name,
        side=side,
        tokens=tokens,
        upper=bool(m["upper"]),
        entry_mode=m["mode"] or "replace",
        rank=rank,
        conditioned=m["map"] == "cond",
        activation=m["act"] or "none",
        kernel=kernel,
        extra=None if m["extra"] is None else int(m["extra"]),
        gain=bool(m["gain"]),
        copies=int(m["copies"] or 0),
        reparam=int(m["rpt"] or 0),
        init=m["init"] or "random",
        mlp=mlp,
        dropout=drop / 100,
        box_dropout=bool(m["boxdrop"]),
    )


def describe(name: str, methods: dict) -> tuple[str, str, str]:
    """(method, variant, access) of a suite's method: its table's, else a parsed gray-box name."""
    if name in methods:
        return methods[name]
    gray = parse(name)
    if gray is None:
        raise ConfigError(
            f"unknown method {name!r}; choose from {list(methods)} or a gray-box name "
            "(dga-lowrank16, lga-8-upper, ...: see exotune.bench.graymethods)"
        )
    return gray.method, gray.variant, gray.access


def group_rates(group_lr: dict[str, float], method: str) -> dict[str, float]:
    """``TrainConfig`` rates (``lr_tokens=...``) for ``method`` from ``{"dga.tokens": 5e-2, ...}``:
    ``dga.G`` for every gray-box method, ``METHOD.G`` for that method (it wins)."""
    out = {}
    for prefix in ("dga", method) if method in ("dga", "lga") else (method,):
        for key, rate in group_lr.items():
            family, _, group = key.partition(".")
            if family == prefix:
                out[f"lr_{group}"] = rate
    return out


def check_group_key(key: str) -> None:
    from exotune.train import PARAMETER_GROUPS

    family, _, group = key.partition(".")
    if not family or group not in PARAMETER_GROUPS:
        raise ConfigError(f"a group learning rate is METHOD.GROUP=LR with GROUP one of {PARAMETER_GROUPS}, got {key!r}")

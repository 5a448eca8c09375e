"""What a box tells its users: shapes, dims, access level, limits. Never weights."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from exotune.errors import ConfigError

ACCESS_LEVELS = ("black", "dark-gray", "light-gray")
GRAY = ("dark-gray", "light-gray")  # the levels that see token embeddings or pixels
MODALITIES = ("text", "image")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
# How an entry point's tokens meet the hidden states: "replace" overwrites those of n reserved
# positions (VPT-deep: fixed tokens at every layer), "add" adds to them (the positions carry what
# the layers before read from the input, plus the layer's tokens: prefixes that depend on the
# input), "shift" adds the tokens' sum to every position's state (no positions reserved: a shift
# of the layer's input, as DGA's shift token is of the box's input), "affine" scales every
# position's state by 1 + the first token and shifts it by the sum of the others (a learnt
# affine map of the layer's input, as a layer norm's gain and bias).
ENTRY_MODES = ("replace", "add", "shift", "affine")


@dataclass(frozen=True)
class EntryPoint:
    """A named place inside the backbone that accepts up to ``max_tokens`` learnable tokens."""

    name: str
    max_tokens: int

    def __post_init__(self) -> None:
        if not self.name or self.max_tokens < 1:
            raise ConfigError(f"EntryPoint needs a name and max_tokens >= 1, got {self.name!r}, {self.max_tokens}")


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

    def batches(self, items):
        """``items`` in consecutive slices of at most ``max_batch``: what one call may take."""
        return [items[i : i + self.max_batch] for i in range(0, len(items), self.max_batch)]


@dataclass(frozen=True)
class ImageSpec:
    """How the owner turns an image into the pixels its backbone takes.

    The image is resized so that its shorter side is ``resize`` pixels and centre-cropped to
    the input size (``resize=0``: resized straight to the input size), scaled to [0, 1], then
    normalised per channel with ``mean`` and ``std``. The owner applies it; the spec tells it
    so that a user can reason about (or reproduce) the pixels an input adapter sees.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int = 0
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))  # JSON gives lists
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not self.mean or len(self.mean) != len(self.std) or not all(s > 0 for s in self.std):
            raise ConfigError(
                f"ImageSpec needs one mean and one std > 0 per channel, got mean={self.mean}, std={self.std}"
            )
        if isinstance(self.resize, bool) or not isinstance(self.resize, int) or self.resize < 0:
            raise ConfigError(f"ImageSpec.resize must be an integer >= 0, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"ImageSpec.interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")


PAIR_LOSSES = ("softmax", "sigmoid")


@dataclass(frozen=True)
class PairLoss:
    """How an image-text model compares its towers' outputs, as it was trained to: the loss
    the image-text task uses unless its user chooses. ``"softmax"``: InfoNCE over the batch
    (CLIP, BLIP); ``"sigmoid"``: each pair on its own (SigLIP), logits ``scale * cos + bias``
    with the model's own ``scale`` and ``bias`` (two numbers, not weights a user could train).
    """

    kind: str
    scale: float = 0.0
    bias: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "bias", float(self.bias))
        if self.kind not in PAIR_LOSSES:
            raise ConfigError(f"PairLoss.kind must be one of {PAIR_LOSSES}, got {self.kind!r}")
        if self.kind == "sigmoid" and not self.scale > 0:
            raise ConfigError(f"a sigmoid PairLoss needs a logit scale > 0, got {self.scale}")


# Fields added after specs were first saved: left out of ``to_dict`` while they hold these
# defaults, so that the fingerprints of earlier (text) specs, and their adapters, stay valid.
_ADDED_FIELDS = {
    "token_dim": 0,
    "image": None,
    "input_basis": "",
    "insert_at": 1,
    "prompt": "",
    "prompts": (),
    "pair_loss": None,
    "entry_mode": "replace",
}
# What a black-box client needs: it sends texts and reads outputs (and scores), nothing else.
BLACK_FIELDS = ("modality", "access", "output_dim", "model_digest", "normalized")


@dataclass(frozen=True)
class BoxSpec:
    """The public description of a hidden backbone.

    ``input_shape`` is the shape of one input without the batch dimension; ``None`` marks a
    free dimension (the sequence length of a text encoder). An image box takes pixels,
    ``input_shape`` (channels, height, width), and describes its preprocessing in ``image``.
    ``token_dim`` is the width of the tokens its entry points accept when that is not the
    input width (a vision transformer's hidden size); 0 means ``input_dim``. ``input_basis``
    names the owner's secret basis of the token embeddings (``exotune.boxes.basis``): the
    fingerprint covers it, so an adapter trained in one basis is refused by a box in another.
    ``insert_at`` is where a text adapter inserts its extra tokens: after the first token (1,
    a [CLS] or start token), at the front (0, a decoder that starts a text with no special
    token) or after the owner's prompt. ``prompt`` names the prompt (``"query"``, ``"document"``)
    the owner puts before each text, one of ``prompts``; the prompt's text is not shown.
    ``pair_loss``: a tower of an image-text pair that says how its model compares the towers
    (None: softmax InfoNCE, as CLIP). ``entry_mode``: whether entry tokens overwrite the hidden
    states at their positions (``"replace"``), are added to them (``"add"``), shift every
    position's state by their sum (``"shift"``), or scale it by 1 + the first and shift it by
    the sum of the others (``"affine"``).
    """

    modality: str
    input_kind: str  # "token-embeddings" for text encoders ("" in a black spec: not shown)
    input_shape: tuple[int | None, ...]  # () in a black spec
    output_dim: int
    access: str
    model_digest: str  # identifies the backbone's weights without revealing them
    text_max_length: int = 0  # tokens the box's tokenizer keeps per text (specials included)
    pooling: str = "mean"
    normalized: bool = False
    entry_points: tuple[EntryPoint, ...] = ()
    limits: BoxLimits = field(default_factory=BoxLimits)
    token_dim: int = 0
    image: ImageSpec | None = None
    input_basis: str = ""  # id of the owner's secret input basis; "" for the model's own
    insert_at: int = 1  # text: the position where inserted tokens go (after a [CLS] or a prompt)
    prompt: str = ""  # text: the name of the prompt the owner puts before each text ("" none)
    prompts: tuple[str, ...] = ()  # text: the names of the prompts the owner has
    pair_loss: PairLoss | None = None  # an image-text pair's tower: how the model compares the towers
    entry_mode: str = "replace"  # light-gray: how entry tokens meet their positions (ENTRY_MODES)

    def __post_init__(self) -> None:
        if self.entry_mode not in ENTRY_MODES:
            raise ConfigError(f"BoxSpec.entry_mode must be one of {ENTRY_MODES}, got {self.entry_mode!r}")
        if self.entry_mode != "replace" and not self.entry_points:
            raise ConfigError(f"BoxSpec.entry_mode={self.entry_mode!r} needs entry points")
        object.__setattr__(self, "prompts", tuple(self.prompts))  # JSON gives a list
        if isinstance(self.insert_at, bool) or not isinstance(self.insert_at, int) or self.insert_at < 0:
            raise ConfigError(f"BoxSpec.insert_at must be an integer >= 0, got {self.insert_at!r}")
        if self.modality not in MODALITIES:
            raise ConfigError(f"BoxSpec.modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.modality == "image" and (self.access != "black" or self.input_shape):  # black: may be left out
            if self.image is None or len(self.input_shape) != 3 or None in self.input_shape:
                raise ConfigError(
                    f"an image BoxSpec needs input_shape (channels, height, width) and an ImageSpec, got "
                    f"{self.input_shape} and {self.image}"
                )
            if len(self.image.mean) != self.input_shape[0]:
                raise ConfigError(
                    f"ImageSpec has {len(self.image.mean)} channel means for {self.input_shape[0]} channels"
                )
        if self.access not in ACCESS_LEVELS:
            raise ConfigError(f"BoxSpec.access must be one of {ACCESS_LEVELS}, got {self.access!r}")
        if self.output_dim < 1:
            raise ConfigError(f"BoxSpec.output_dim must be >= 1, got {self.output_dim}")

    @property
    def input_dim(self) -> int:
        """Width of one input token (the last dimension of ``input_shape``)."""
        return int(self.input_shape[-1])  # type: ignore[arg-type]

    @property
    def entry_dim(self) -> int:
        """Width of the tokens the entry points accept."""
        return self.token_dim or self.input_dim

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the pixels an image box takes."""
        return int(self.input_shape[1]), int(self.input_shape[2])  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for name, default in _ADDED_FIELDS.items():
            if data[name] == default:
                del data[name]
        return data

    def public(self) -> dict:
        """What the spec endpoint shows: everything at the gray levels; at level black only what
        a black-box client needs (``BLACK_FIELDS`` and the batch bound), not the input's kind,
        shape, positions, token limit or entry points."""
        if self.access != "black":
            return self.to_dict()
        return {**{k: getattr(self, k) for k in BLACK_FIELDS}, "limits": {"max_batch": self.limits.max_batch}}

    @classmethod
    def from_dict(cls, data: dict) -> BoxSpec:
        data = dict(data)
        if data.get("access") == "black":  # a public black spec leaves the input out
            data = {"input_kind": "", "input_shape": (), "pooling": "", **data}
        data["input_shape"] = tuple(data["input_shape"])
        data["entry_points"] = tuple(EntryPoint(**e) for e in data.get("entry_points", ()))
        data["limits"] = BoxLimits(**data.get("limits", {}))
        if data.get("image") is not None:
            data["image"] = ImageSpec(**data["image"])
        if data.get("pair_loss") is not None:
            data["pair_loss"] = PairLoss(**data["pair_loss"])
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
        return [k for k in dict.fromkeys([*a, *b]) if k != "limits" and a.get(k) != b.get(k)]

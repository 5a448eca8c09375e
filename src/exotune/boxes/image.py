"""Image boxes: pixels in, the backbone's embedding out. The owner's preprocessing (resize,
crop, normalise) runs inside the box and is described in ``spec.image``.

``VisionEncoderBox`` wraps a Hugging Face vision transformer: ViT, DINOv2, a CLIP vision
tower (with its projection, for a CLIP pair see ``exotune.boxes.clip``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exotune.boxes.base import BoxBase, encode_sorted, model_digest
from exotune.boxes.entry_points import check_entry_tokens, expose, find_layers, inject, insert, reserved
from exotune.boxes.spec import GRAY, BoxLimits, BoxSpec, ImageSpec
from exotune.devices import Placed, Placement
from exotune.errors import BoxLimitError, ConfigError, DataError

POOLINGS = ("cls", "mean", "model")  # "model": the model's own pooler (SigLIP's attention-pooling head)


class ImageBox(BoxBase):
    """A hidden image backbone seen from outside.

    ``preprocess`` turns images into the pixels the backbone takes, as the owner does it (no
    gradient); ``forward`` runs the backbone from pixels (B, C, H, W) to outputs (B, O),
    differentiable with respect to the pixels (and, light-gray, to entry tokens).
    """

    @abstractmethod
    def forward(self, pixels: torch.Tensor, entry_tokens=None) -> torch.Tensor:
        """Outputs (B, O) for pixels (B, C, H, W); ``entry_tokens`` as for a text box."""

    def preprocess(self, images: Sequence) -> torch.Tensor:
        """The owner's preprocessing of ``images`` (paths or PIL images): pixels (B, C, H, W)."""
        self.require(*GRAY)
        return to_pixels(images, self.spec)

    def check_pixels(self, pixels: torch.Tensor) -> None:
        shape = tuple(self.spec.input_shape)
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or tuple(pixels.shape[1:]) != shape:
            got = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise BoxLimitError(f"pixels must have shape (batch, {', '.join(map(str, shape))}), got {got}")
        if pixels.shape[0] > self.spec.limits.max_batch:
            raise BoxLimitError(f"batch of {pixels.shape[0]} exceeds the box's max_batch {self.spec.limits.max_batch}")

    def _encode_batch(self, images: Sequence) -> torch.Tensor:
        return self.forward(self.preprocess(images))

    @torch.no_grad()
    def encode(self, images: Sequence, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Outputs for ``images`` (N, O), without gradients: the zero-shot path."""
        return encode_sorted(
            self._encode_batch,
            list(images),
            min(batch_size, self.spec.limits.max_batch),
            self.spec.output_dim,
            progress,
            "encode images",
        )


# -- the owner's preprocessing --------------------------------------------------------------


def open_image(image, mode: str):
    """A PIL image in ``mode`` ("RGB", "L") from a path or a PIL image; a DataError names a bad file."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert(mode)
    if not isinstance(image, (str, Path)):
        raise ConfigError(f"an image must be a file path or a PIL image, got {type(image).__name__}")
    path = Path(image)
    if not path.is_file():
        raise DataError(f"image {path}: file not found")
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(
            f"image {path} cannot be read ({err.__class__.__name__}: {err}); the file is corrupt or not an image"
        ) from err


def _resize(img, size: tuple[int, int], spec: ImageSpec):
    """Shorter side to ``spec.resize`` then a centre crop of ``size`` (h, w); or straight to ``size``."""
    from PIL import Image

    resample = {
        "bicubic": Image.Resampling.BICUBIC,
        "bilinear": Image.Resampling.BILINEAR,
        "nearest": Image.Resampling.NEAREST,
    }[spec.interpolation]
    h, w = size
    if not spec.resize:
        return img.resize((w, h), resample)
    scale = spec.resize / min(img.size)
    img = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))), resample)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))


def to_pixels(images: Sequence, spec: BoxSpec) -> torch.Tensor:
    """Images -> normalised pixels (B, C, H, W) as ``spec.image`` describes."""
    if isinstance(images, (str, Path)) or not isinstance(images, Sequence) or not len(images):
        raise ConfigError("images must be a non-empty list of file paths or PIL images")
    channels, size = spec.input_shape[0], spec.image_size
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ConfigError(f"cannot read images into {channels} channels (1 or 3)")
    mean = torch.tensor(spec.image.mean).view(-1, 1, 1)  # (C, 1, 1)
    std = torch.tensor(spec.image.std).view(-1, 1, 1)
    out = torch.empty(len(images), channels, *size)
    for i, image in enumerate(images):
        array = np.asarray(_resize(open_image(image, mode), size, spec.image), dtype=np.float32) / 255.0
        pixels = torch.from_numpy(array.reshape(*size, channels)).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
        out[i] = (pixels - mean) / std
    return out


# -- a Hugging Face vision transformer ------------------------------------------------------


def size_pair(value) -> tuple[int, int]:
    """An image size given as ``n`` or ``(h, w)`` -> (h, w)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, Sequence) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ConfigError(f"an image size must be an integer or (height, width), got {value!r}")


class VisionEncoderBox(Placed, ImageBox):
    """Owner-side wrapper of a Hugging Face vision transformer (ViT, DINOv2, CLIP vision tower).

    Kept private and frozen like ``TextEncoderBox``. The output is the [CLS] state
    (``pooling="cls"``: for a CLIP tower its post-layernorm [CLS], through ``projection`` when
    given), the mean of the patch states (``"mean"``) or the model's own pooler (``"model"``:
    SigLIP's attention-pooling head). ``entry_points`` makes it light-gray: n positions
    inserted after [CLS] (at the front of a model without one) at the first layer's input
    carry each entry layer's tokens (VPT-deep), named ``"layer.<i>"`` as for text boxes
    (``entry_mode`` as there).

    ``image`` describes the preprocessing (default: resize straight to the model's input size,
    mean 0.5 and std 0.5 per channel, the ViT convention); ``digest`` identifies the weights
    when the tower is part of a larger model (a CLIP pair shares one digest); ``owner_secret``
    (a served box's) keys the digest taken here and names entry points ``"point.<j>"``, as for
    a text box. ``device``, ``dtype`` and ``precision`` as for ``TextEncoderBox`` (a pair's
    towers share one model: its text box places the whole of it, and this tower then finds
    itself there).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        image: ImageSpec | None = None,
        image_size: int | tuple[int, int] | None = None,
        projection: nn.Module | None = None,
        pooling: str = "cls",
        normalize: bool = False,
        access: str | None = None,
        limits: BoxLimits | None = None,
        entry_points: str | Sequence[int] | None = None,
        entry_tokens_max: int = 8,
        entry_mode: str = "replace",
        digest: str | None = None,
        owner_secret: str | bytes | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        precision: str = "fp32",
    ) -> None:
        self._placement = Placement(device, dtype, precision)  # checked before anything runs
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if projection is None and hasattr(model, "visual_projection") and hasattr(model, "vision_model"):
            model, projection = model.vision_model, model.visual_projection  # CLIPVisionModelWithProjection
        config = model.config
        embeddings = getattr(model, "embeddings", None)
        has_cls = any(getattr(embeddings, n, None) is not None for n in ("cls_token", "class_embedding"))
        if pooling == "cls" and not has_cls:
            raise ConfigError("pooling='cls': this vision model has no [CLS] token; use 'mean' or 'model'")
        if pooling == "model" and not any(getattr(model, n, None) is not None for n in ("head", "pooler")):
            raise ConfigError("pooling='model': this vision model has no pooler of its own; use 'cls' or 'mean'")
        self.__at = int(has_cls)  # where entry slots go: after [CLS], or at the front
        channels = int(getattr(config, "num_channels", 3))
        hidden = int(config.hidden_size)
        size = size_pair(image_size or config.image_size)
        image = image or ImageSpec(mean=(0.5,) * channels, std=(0.5,) * channels, resize=0, interpolation="bilinear")
        access, self.__layers, points = expose(
            model, entry_points, entry_tokens_max, access, opaque=owner_secret is not None, entry_mode=entry_mode
        )
        # entry slots are inserted at the input of layer 0, whether or not it is an entry layer
        self.__first = find_layers(model)[0] if self.__layers else None
        for module in (model, projection):
            if module is not None:
                module.eval()
                module.requires_grad_(False)  # explicit and idempotent: no weight gradients ever
        self.__model = model
        self.__projection = projection
        # CLIP towers pool through their own post-layernorm: read pooler_output, not the raw [CLS]
        self.__clip_pooler = str(getattr(config, "model_type", "")).startswith("clip")
        self.pooling = pooling
        self.normalize = normalize
        if digest is None:
            digest = model_digest(nn.ModuleList([m for m in (model, projection) if m is not None]), owner_secret)
        self.spec = BoxSpec(
            modality="image",
            input_kind="pixels",
            input_shape=(channels, *size),
            output_dim=int(projection.out_features) if projection is not None else hidden,
            access=access,
            model_digest=digest,
            pooling=pooling,
            normalized=normalize,
            entry_points=points,
            limits=limits or BoxLimits(max_batch=256),
            token_dim=hidden,
            image=image,
            entry_mode=entry_mode,
        )
        self._placement.apply(model, projection)  # the digest above is of the weights as given

    def forward(self, pixels: torch.Tensor, entry_tokens=None) -> torch.Tensor:
        self.require(*GRAY)
        self.check_pixels(pixels)
        back = {"device": pixels.device, "dtype": pixels.dtype}  # the answer lands where the question came from
        place = self._placement
        with place.autocast():
            if entry_tokens:
                self.require("light-gray")
                n = reserved(self.spec.entry_mode, check_entry_tokens(self.spec, entry_tokens))
                entry_tokens = {name: place.inward(t) for name, t in entry_tokens.items()}
                with (
                    insert(self.__first, n, self.__at),
                    inject(self.__layers, entry_tokens, n, self.__at, self.spec.entry_mode),
                ):
                    return self._run(place.inward(pixels), n).to(**back)
            return self._run(place.inward(pixels), 0).to(**back)

    def _run(self, pixels: torch.Tensor, n: int) -> torch.Tensor:
        out = self.__model(pixel_values=pixels)
        if self.pooling == "mean":
            z = out.last_hidden_state[:, self.__at + n :].mean(1)  # patch states: [CLS] and entry slots left out
        elif self.pooling == "model" or self.__clip_pooler:
            z = out.pooler_output  # (B, H)
        else:
            z = out.last_hidden_state[:, 0]  # (B, H)
        if self.__projection is not None:
            z = self.__projection(z)  # (B, O)
        return nn.functional.normalize(z, dim=-1) if self.normalize else z

    def __repr__(self) -> str:  # never show the module
        s = self.spec
        return (
            f"VisionEncoderBox(access={s.access!r}, input={s.input_shape}, dim={s.output_dim}, digest={s.model_digest})"
        )

"""open_clip models as a (text, image) pair of boxes. Needs the 'open-clip' extra.

Loaded with ``open_clip.create_model_and_transforms`` and ``open_clip.get_tokenizer``; driven
through ``encode_text`` / ``encode_image``. These boxes are dark-gray: open_clip's blocks are
not reachable by the entry-point mechanism (their layout differs across versions).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from exotune.boxes.clip import (
    BoxPair,
    CLIPTextBox,
    TextTower,
    openai_image_spec,
    pair_digest,
    pick_filler,
    tower_options,
)
from exotune.boxes.image import ImageBox, size_pair
from exotune.boxes.spec import GRAY, BoxLimits, BoxSpec, ImageSpec
from exotune.devices import Placed, Placement
from exotune.errors import BackboneNotFoundError, ConfigError, MissingDependencyError

PREFIX = "open_clip:"  # --backbone open_clip:ViT-B-32@laion2b_s34b_b79k
TOWER_OPTIONS = ("access", "limits", "device", "dtype", "precision")


def import_open_clip():
    try:
        import open_clip
    except ImportError as err:
        raise MissingDependencyError(
            "open_clip models need the 'open-clip' extra: pip install 'exotune[open-clip]' (open_clip_torch)"
        ) from err
    return open_clip


def parse_name(name: str) -> tuple[str, str | None]:
    """``open_clip:MODEL[@PRETRAINED]`` -> (MODEL, PRETRAINED or None)."""
    spec = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    model, _, pretrained = spec.partition("@")
    if not model:
        raise ConfigError(f"an open_clip backbone is named 'open_clip:MODEL[@PRETRAINED]', got {name!r}")
    return model, pretrained or None


def load_open_clip_boxes(
    model_name: str, pretrained: str | None = None, *, cache_dir: str | None = None, **options
) -> BoxPair:
    """Load an open_clip model (a name from ``open_clip.list_models()``, an ``hf-hub:`` id) with
    ``pretrained`` weights (a tag such as ``laion2b_s34b_b79k``, or a local checkpoint file)."""
    open_clip = import_open_clip()
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, cache_dir=cache_dir
        )
        tokenizer = open_clip.get_tokenizer(model_name)
    except (RuntimeError, OSError, ValueError) as err:
        raise BackboneNotFoundError(
            f"could not load open_clip model {model_name!r} with weights {pretrained!r}: "
            f"{err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}. Without a network, the "
            "weights must already be in the open_clip / Hugging Face cache, or pass a local checkpoint file "
            "as PRETRAINED."
        ) from err
    return open_clip_boxes(model, tokenizer, image=image_spec_of(model, preprocess), **options)


def open_clip_boxes(
    model: nn.Module,
    tokenizer,
    *,
    image: ImageSpec | None = None,
    text_options: Mapping | None = None,
    image_options: Mapping | None = None,
    owner_secret: str | bytes | None = None,
    **options,
) -> BoxPair:
    """An open_clip model (``encode_text`` / ``encode_image``) and its tokenizer as two boxes.

    ``options`` (``access``, ``limits``, ``precision``; ``device`` and ``dtype``, which place the
    whole model) apply to both towers, ``text_options`` / ``image_options`` to one; entry points
    are refused (dark-gray only). ``owner_secret`` (a served pair's) keys the shared digest and
    sets the text tower's secret input basis (``text_options={"basis": False}``: none).
    """
    text_options, image_options = tower_options(options, text_options), tower_options(options, image_options)
    for given, own in ((text_options, ("basis",)), (image_options, ())):
        if given.get("entry_points") is not None:
            raise ConfigError("open_clip boxes have no entry points (LGA); load a Hugging Face CLIP checkpoint for LGA")
        unknown = sorted(set(given) - {*TOWER_OPTIONS, *own, "entry_points", "entry_tokens_max", "entry_mode"})
        if unknown:
            raise ConfigError(f"unknown open_clip box options {unknown}; they take {', '.join(TOWER_OPTIONS)}")
    digest = pair_digest(model, owner_secret=owner_secret)  # of the weights as given, before they are placed
    text = CLIPTextBox(
        open_clip_text_tower(model, tokenizer),
        digest=digest,
        owner_secret=owner_secret,
        **{k: v for k, v in text_options.items() if k in (*TOWER_OPTIONS, "basis")},
    )
    size = size_pair(getattr(model.visual, "image_size", 224))
    image = image or openai_image_spec(min(size))
    return BoxPair(
        text,
        OpenCLIPImageBox(model, size, image, digest, **{k: v for k, v in image_options.items() if k in TOWER_OPTIONS}),
    )


def open_clip_text_tower(model: nn.Module, tokenizer) -> TextTower:
    text = getattr(model, "text", model)  # a CustomTextCLIP keeps its text tower in .text
    embeddings = getattr(text, "token_embedding", None)
    if not isinstance(embeddings, nn.Embedding):
        raise ConfigError(
            "this open_clip model's text tower has no token embedding table (a Hugging Face text tower?); "
            "it cannot take token embeddings, so it cannot be served as a gray box"
        )
    context = int(getattr(text, "context_length", None) or model.context_length)
    pool = getattr(text, "text_pool_type", None) or getattr(text, "pool_type", "argmax")
    pad = int(getattr(text, "pad_id", 0) or 0)
    # 'argmax' pools at the largest id, 'eos' at the end-of-text id; 'first'/'last' need no mark
    eos = getattr(text, "eos_id", None) or getattr(text, "text_eos_id", None)
    marker = int(eos) if pool == "eos" and eos is not None else embeddings.num_embeddings - 1
    filler = pick_filler(pad, marker)

    def tokenize(texts: list[str], limit: int):
        ids = tokenizer(list(texts), context_length=limit)  # (B, limit), padded with pad ids
        mask = (ids != pad).long()
        longest = int(mask.sum(1).max())
        return ids[:, :longest], mask[:, :longest]  # padding to the context comes back in the forward

    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model.encode_text(ids)  # (B, O)

    return TextTower(
        module=model,
        embeddings=embeddings,
        tokenize=tokenize,
        run=run,
        context_length=context,
        marker=marker,
        filler=filler,
        pad=pad,
        pad_to_context=True,
    )


class OpenCLIPImageBox(Placed, ImageBox):
    """The image tower of an open_clip model: ``encode_image`` from pixels. Dark-gray.
    ``device``, ``dtype`` (the whole model's) and ``precision`` as for ``CLIPTextBox``."""

    def __init__(
        self,
        model: nn.Module,
        size: tuple[int, int],
        image: ImageSpec,
        digest: str,
        *,
        access: str | None = None,
        limits: BoxLimits | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        precision: str = "fp32",
    ) -> None:
        self._placement = Placement(device, dtype, precision)  # checked before anything runs
        access = access or "dark-gray"
        model.eval()
        model.requires_grad_(False)
        self._placement.apply(model)  # the given digest is of the weights before
        self.__model = model
        with torch.no_grad():
            output_dim = model.encode_image(self._placement.inward(torch.zeros(1, 3, *size))).shape[-1]
        self.spec = BoxSpec(
            modality="image",
            input_kind="pixels",
            input_shape=(3, *size),
            output_dim=int(output_dim),
            access=access,
            model_digest=digest,
            pooling="model",
            image=image,
            limits=limits or BoxLimits(max_batch=256),
        )

    def forward(self, pixels: torch.Tensor, entry_tokens=None) -> torch.Tensor:
        self.require(*GRAY)
        if entry_tokens:
            raise ConfigError("this box exposes no entry points; entry_tokens must be empty")
        self.check_pixels(pixels)
        back = {"device": pixels.device, "dtype": pixels.dtype}  # the answer lands where the question came from
        with self._placement.autocast():
            return self.__model.encode_image(self._placement.inward(pixels)).to(**back)  # (B, O)

    def __repr__(self) -> str:  # never show the module
        s = self.spec
        return (
            f"OpenCLIPImageBox(access={s.access!r}, input={s.input_shape}, dim={s.output_dim}, digest={s.model_digest})"
        )


def image_spec_of(model: nn.Module, preprocess) -> ImageSpec:
    """The preprocessing open_clip applies for this model: its ``preprocess_cfg`` when it has one,
    else the ``Normalize`` step of its evaluation transform, else OpenAI CLIP's."""
    size = min(size_pair(getattr(model.visual, "image_size", 224)))
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None:
        for step in getattr(preprocess, "transforms", ()):
            if type(step).__name__ == "Normalize":
                mean, std = step.mean, step.std
    if mean is None:
        return openai_image_spec(size)
    interpolation = cfg.get("interpolation", "bicubic")
    resize_mode = cfg.get("resize_mode", "shortest")
    return ImageSpec(
        mean=tuple(mean),
        std=tuple(std),
        resize=0 if resize_mode == "squash" else size,
        interpolation=interpolation if interpolation in ("bicubic", "bilinear") else "bicubic",
    )

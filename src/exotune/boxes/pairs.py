"""Image-text models as (text, image) pairs of boxes: CLIP, SigLIP and BLIP, each from the
transformers class that holds both of its towers, and the registry the loader reads.

Every pair's two boxes share the digest of the whole model and follow its own conventions:

* **SigLIP** (``SiglipModel``): the text tower takes every text padded to its full context
  with the pad token, attends to that padding (no attention mask, as the model was trained)
  and pools at the last position; its texts start with no special token, so inserted and entry
  tokens go at the front. The image tower pools with its attention-pooling head and has no
  [CLS]. Both specs carry the model's sigmoid loss: its logit scale and bias.
* **BLIP** (the image-text contrastive part of ``BlipForImageTextRetrieval``): the text
  encoder's [CLS] state through ``text_proj``, the vision model's [CLS] state through
  ``vision_proj``; softmax InfoNCE, as CLIP. A checkpoint that keeps the retrieval model's
  learned temperature (``temp``, which the transformers class drops on load; the loader reads
  it back) states its logit scale, ``1 / temp``, in both specs: the task starts from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from exotune.boxes.clip import (
    OPENAI_MEAN,
    OPENAI_STD,
    BoxPair,
    TextTower,
    clip_boxes,
    padded_tokenizer,
    pair_digest,
    pick_filler,
    tower_boxes,
)
from exotune.boxes.spec import ImageSpec, PairLoss
from exotune.errors import ConfigError

SIGLIP_IMAGE = ImageSpec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize=0, interpolation="bicubic")
BLIP_IMAGE = ImageSpec(mean=OPENAI_MEAN, std=OPENAI_STD, resize=0, interpolation="bicubic")


def _starts_with_special(tokenizer) -> bool:
    """Whether the tokenizer opens every text with a special token ([CLS], <s>)."""
    first = tokenizer(["a"])["input_ids"][0]
    return bool(first) and first[0] in tokenizer.all_special_ids


def siglip_text_tower(model: nn.Module, tokenizer) -> TextTower:
    """The text tower of a Hugging Face ``SiglipModel``."""
    text_model = model.text_model
    config = text_model.config
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(config.pad_token_id)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else int(config.eos_token_id)

    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return text_model(input_ids=ids).pooler_output  # (B, O): no mask, SigLIP attends to its padding

    return TextTower(
        module=model,
        embeddings=text_model.embeddings.token_embedding,
        tokenize=padded_tokenizer(tokenizer),
        run=run,
        context_length=int(config.max_position_embeddings),
        marker=int(eos),
        filler=pick_filler(int(pad), int(eos)),
        pad=int(pad),
        pad_to_context=True,
        fill_padding=True,
        pooling="last",
        insert_at=int(_starts_with_special(tokenizer)),
    )


def with_pair_loss(pair: BoxPair, loss: PairLoss) -> BoxPair:
    """Both towers' specs say how their model compares them."""
    for box in pair:
        box.spec = dataclasses.replace(box.spec, pair_loss=loss)
    return pair


def siglip_boxes(
    model: nn.Module,
    tokenizer,
    *,
    image: ImageSpec | None = None,
    digest: str | None = None,
    text_options: Mapping | None = None,
    image_options: Mapping | None = None,
    owner_secret: str | bytes | None = None,
    **options,
) -> BoxPair:
    """A Hugging Face ``SiglipModel`` as a (text, image) pair of boxes; options as ``clip_boxes``."""
    digest = pair_digest(model, digest, owner_secret)
    with torch.no_grad():  # read before the text box casts the model (dtype=)
        loss = PairLoss("sigmoid", scale=float(model.logit_scale.exp()), bias=float(model.logit_bias))
    pair = tower_boxes(
        siglip_text_tower(model, tokenizer),
        model.text_model,
        model.vision_model,
        image=image or SIGLIP_IMAGE,
        digest=digest,
        owner_secret=owner_secret,
        options=(options, text_options, image_options),
        pooling="model",
    )
    return with_pair_loss(pair, loss)


def blip_text_tower(model: nn.Module, tokenizer) -> TextTower:
    """The text encoder of a Hugging Face ``BlipForImageTextRetrieval``, its [CLS] through ``text_proj``."""
    encoder, projection = model.text_encoder, model.text_proj
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else encoder.config.pad_token_id)
    filler = pick_filler(pad)  # the ids only size the lookup the box replaces: BLIP pools at [CLS]

    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return projection(encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0])  # (B, O)

    return TextTower(
        module=model,
        embeddings=encoder.embeddings.word_embeddings,
        tokenize=padded_tokenizer(tokenizer),
        run=run,
        context_length=int(encoder.config.max_position_embeddings),
        marker=filler,
        filler=filler,
        pad=pad,
        pooling="cls",
        insert_at=int(_starts_with_special(tokenizer)),
    )


def blip_pair_loss(model: nn.Module) -> PairLoss | None:
    """Softmax at the BLIP retrieval model's learned temperature, if it has one (``temp``)."""
    temp = getattr(model, "temp", None)
    if temp is None:
        return None
    with torch.no_grad():  # read before the text box casts the model (dtype=)
        return PairLoss("softmax", scale=1.0 / float(temp))


def blip_boxes(
    model: nn.Module,
    tokenizer,
    *,
    image: ImageSpec | None = None,
    digest: str | None = None,
    text_options: Mapping | None = None,
    image_options: Mapping | None = None,
    owner_secret: str | bytes | None = None,
    **options,
) -> BoxPair:
    """The image-text contrastive part of a ``BlipForImageTextRetrieval`` as a (text, image) pair."""
    digest = pair_digest(model, digest, owner_secret)
    loss = blip_pair_loss(model)
    pair = tower_boxes(
        blip_text_tower(model, tokenizer),
        model.text_encoder,
        model.vision_model,
        image=image or BLIP_IMAGE,
        digest=digest,
        owner_secret=owner_secret,
        options=(options, text_options, image_options),
        projection=model.vision_proj,
    )
    return with_pair_loss(pair, loss) if loss is not None else pair


@dataclass(frozen=True)
class PairFamily:
    """An image-text family: the transformers class holding both towers, and its pair builder.
    ``architectures``: the checkpoint classes it accepts (empty: any of its model type);
    ``kept``: tensors of the checkpoint the class drops on load but the builder reads (the
    loader puts them back on the model as buffers)."""

    name: str
    model_class: str
    build: Callable[..., BoxPair]
    architectures: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()

    def loader(self) -> Callable:
        import transformers

        return getattr(transformers, self.model_class).from_pretrained

    def boxes(self, model: nn.Module, tokenizer, **options) -> BoxPair:
        saved = tuple(getattr(model.config, "architectures", None) or ())
        if self.architectures and saved and not set(saved) & set(self.architectures):
            raise ConfigError(
                f"this {self.name} checkpoint is a {', '.join(saved)}; the {self.name} image-text boxes need a "
                f"{' or '.join(self.architectures)} checkpoint (both towers and their projections)"
            )
        return self.build(model, tokenizer, **options)


PAIRS = {
    "clip": PairFamily("CLIP", "CLIPModel", clip_boxes),
    "siglip": PairFamily("SigLIP", "SiglipModel", siglip_boxes, ("SiglipModel",)),
    "blip": PairFamily("BLIP", "BlipForImageTextRetrieval", blip_boxes, ("BlipForImageTextRetrieval",), ("temp",)),
}


# image-text families a box cannot serve, and why
UNFIT = {
    "siglip2": "a SigLIP2 (siglip2) model cannot be served as boxes: its vision tower takes patches with "
    "a patch mask and their spatial shapes (NaFlex), not a fixed-size image",
}


def pair_family(model_type: str) -> PairFamily:
    """The image-text family of a ``config.model_type``; a ConfigError names the supported ones."""
    names = ", ".join(f"{f.name} ({t})" for t, f in PAIRS.items())
    if model_type in UNFIT:
        raise ConfigError(f"{UNFIT[model_type]}; supported image-text families: {names}")
    if model_type not in PAIRS:
        raise ConfigError(
            f"a {model_type or 'model without a model_type'!r} model is not an image-text pair "
            f"with a text tower; supported image-text families: {names}"
        )
    return PAIRS[model_type]

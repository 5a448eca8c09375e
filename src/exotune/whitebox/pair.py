"""The white-box image-text baseline: both towers of a CLIP-family model the user owns, trained
(LoRA through PEFT on the attention projections of the text and the vision tower, or every
weight of both towers), with the gray-box image-text model's loss, temperature and retrieval
evaluation (``ImageTextRetriever``), so that its rows compare with the gray-box rows.

The towers compute what the pair of boxes built from the same weights computes (the same
tokenisation, pooling, preprocessing and projection; ``exotune.boxes.pairs``): the text tower
is the model's own forward from token ids (so full fine-tuning trains the token embeddings
too), the image tower the image box's forward from its own preprocessed pixels, both now
differentiable in the weights. LoRA's B starts at zero: the untrained model ranks as zero-shot.
Text-video retrieval runs each frame through the owned image tower; sketch-to-photo retrieval
runs sketches and photos through the one owned vision tower (``WhiteBoxSketchRetriever``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from exotune.boxes.base import BoxBase
from exotune.boxes.clip import TextTower, hf_text_tower
from exotune.boxes.http import check_texts
from exotune.boxes.pairs import blip_text_tower, pair_family, siglip_text_tower
from exotune.boxes.spec import ImageSpec
from exotune.data.videos import read_frames
from exotune.errors import ConfigError
from exotune.graybox.config import DGAConfig
from exotune.tasks.image_text import ImageTextConfig, ImageTextRetriever
from exotune.tasks.sketch import SketchConfig, SketchPhotoRetriever
from exotune.tasks.video_text import AttentionPooling, VideoTextRetriever
from exotune.whitebox.config import WhiteBoxConfig
from exotune.whitebox.encoder import LORA_MARK, LoraState, add_lora, lora_target_names

ADAPTER_TYPE = "whitebox-image-text-retriever"
SKETCH_ADAPTER_TYPE = "whitebox-sketch-photo-retriever"


@dataclass(frozen=True)
class OwnedPair:
    """What the white-box path needs of an image-text family beyond its boxes."""

    text_tower: Callable[..., TextTower]  # (model, tokenizer) -> the family's text tower
    towers: tuple[str, ...]  # the submodules on the contrastive path (towers and projections)
    attention: tuple[str, ...]  # LoRA's targets: both towers' attention projections


OWNED = {
    "clip": OwnedPair(
        hf_text_tower,
        ("text_model", "vision_model", "text_projection", "visual_projection"),
        ("q_proj", "k_proj", "v_proj"),
    ),
    "siglip": OwnedPair(siglip_text_tower, ("text_model", "vision_model"), ("q_proj", "k_proj", "v_proj")),
    # BLIP: the text encoder's self-attention (query/key/value), the vision tower's fused qkv
    "blip": OwnedPair(
        blip_text_tower, ("text_encoder", "vision_model", "text_proj", "vision_proj"), ("query", "key", "value", "qkv")
    ),
}
OFF_PATH = ("crossattention",)  # BLIP's text encoder attends to images only in its matching head


def owned_pair(model: nn.Module) -> OwnedPair:
    """The white-box description of ``model``'s family (a ConfigError names the supported ones)."""
    model_type = str(getattr(model.config, "model_type", ""))
    pair_family(model_type)  # an unknown family is refused by name
    return OWNED[model_type]


def _on_path(name: str, towers: tuple[str, ...]) -> bool:
    return name.split(".", 1)[0] in towers and not any(part in name.split(".") for part in OFF_PATH)


def pair_lora_names(
    model: nn.Module, config: WhiteBoxConfig, owned: OwnedPair, towers: tuple[str, ...] | None = None
) -> list[str]:
    """The layers LoRA adapts: those ``config`` targets on the contrastive path, in both towers
    (``towers``: only on these submodules, e.g. the vision tower and its projection)."""
    towers = towers or owned.towers
    names = [n for n in lora_target_names(model, config.target_modules) if _on_path(n, towers)]
    for tower in (t for t in owned.towers[:2] if t in towers):
        if not any(n.startswith(tower + ".") for n in names):
            raise ConfigError(
                f"LoRA on both towers: no layer of {tower} is named one of {list(config.target_modules)} "
                f"(this family's attention projections: {list(owned.attention)})"
            )
    return names


class OwnedTextTower(nn.Module):
    """texts -> the pair's text embeddings (B, O) through the owned weights. ``box``: the text
    box of the same weights (its spec: batch limits, output width)."""

    def __init__(self, box: BoxBase, tower: TextTower) -> None:
        super().__init__()
        self.box = box
        self.tower = tower  # a plain attribute: its module is the retriever's
        self.register_buffer("device_anchor", torch.empty(0), persistent=False)

    def forward(self, texts: list[str]) -> torch.Tensor:
        t = self.tower
        ids, mask = t.tokenize(check_texts(texts), t.context_length)  # (B, T), as the box tokenises
        if t.pad_to_context and ids.shape[1] < t.context_length:  # SigLIP: padded to its context
            rest = t.context_length - ids.shape[1]
            ids = nn.functional.pad(ids, (0, rest), value=t.pad)
            mask = nn.functional.pad(mask, (0, rest), value=0)
        device = self.device_anchor.device
        return t.run(ids.to(device), mask.to(device))  # (B, O)


class OwnedImageTower(nn.Module):
    """images -> the pair's image embeddings (B, O): the image box's preprocessing and forward,
    through weights that now take gradients."""

    def __init__(self, box: BoxBase) -> None:
        super().__init__()
        self.box = box
        self.register_buffer("device_anchor", torch.empty(0), persistent=False)

    def forward(self, images: list) -> torch.Tensor:
        return self.box.forward(self.box.preprocess(images).to(self.device_anchor.device))  # (B, O)


def own(model: nn.Module, tokenizer, whitebox: WhiteBoxConfig | None, image: ImageSpec | None, towers: tuple):
    """(the model, LoRA added on ``towers`` in ``lora`` mode; the white-box config, default
    LoRA on the family's attention projections; the model's boxes)."""
    owned = owned_pair(model)
    whitebox = whitebox or WhiteBoxConfig.lora(targets=owned.attention)
    if whitebox.mode == "lora":
        model = add_lora(model, whitebox, pair_lora_names(model, whitebox, owned, towers))
    family = pair_family(str(model.config.model_type))
    return model, whitebox, family.boxes(model, tokenizer, **({"image": image} if image else {}))


class OwnedBaseline(LoraState):
    """What the white-box retrievers share: the owned model at ``model``, its trained weights one
    parameter group, and no artifact (a benchmark baseline). Mixed in before the task's model."""

    _base_prefix = "model."
    model: nn.Module
    baseline: str  # what its messages call it

    @classmethod
    def from_backbone(cls, name_or_path: str, whitebox: WhiteBoxConfig | None = None, config=None):
        """The model a Hugging Face CLIP, SigLIP or BLIP checkpoint (a name or a folder) holds,
        with the preprocessing its boxes would use."""
        from exotune.boxes.loading import load_pair_model

        model, tokenizer, image = load_pair_model(name_or_path)
        return cls(model, tokenizer, whitebox, config, image=image)

    def take(self, model: nn.Module, whitebox: WhiteBoxConfig, towers: tuple) -> None:
        """Own ``model``: the boxes froze it; the owner trains the LoRA tensors, or ``towers`` whole."""
        self.whitebox = whitebox
        self.model = model
        for name, p in model.named_parameters():
            p.requires_grad_(LORA_MARK in name if whitebox.mode == "lora" else _on_path(name, towers))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trained weights (LoRA tensors, or all): ``weights``; the temperature goes with the head."""
        return {"weights": [p for p in self.model.parameters() if p.requires_grad]}

    def artifact_files(self) -> dict:
        raise ConfigError(
            f"the {self.baseline} is a benchmark baseline: it saves no adapter folder "
            "(train with Trainer(output_dir=None))"
        )


class WhiteBoxPairRetriever(OwnedBaseline, ImageTextRetriever):
    """Both towers of an owned CLIP, SigLIP or BLIP model, LoRA-adapted or fully fine-tuned, with
    the image-text task's loss and metrics. In ``lora`` mode ``state_dict()`` holds only the LoRA
    tensors and the temperature. A benchmark baseline: it trains and evaluates through
    ``Trainer``, but saves no artifact."""

    adapter_type = ADAPTER_TYPE
    baseline = "white-box image-text retriever"

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        whitebox: WhiteBoxConfig | None = None,
        config: ImageTextConfig | None = None,
        *,
        image: ImageSpec | None = None,
    ) -> None:
        owned = owned_pair(model)
        model, whitebox, (text_box, image_box) = own(model, tokenizer, whitebox, image, owned.towers)
        none = DGAConfig.variant("none")
        super().__init__(text_box, image_box, none, none, config)
        self.take(model, whitebox, owned.towers)
        self.text_tower = OwnedTextTower(text_box, owned.text_tower(model, tokenizer))
        self.image_tower = self.owned_visual_tower(image_box)

    def owned_visual_tower(self, box: BoxBase) -> nn.Module:
        """The visual side through the owned weights: items -> (B, O)."""
        return OwnedImageTower(box)


class OwnedVideoTower(nn.Module):
    """videos (files or frame folders) -> (B, O): ``frames`` frames each through the owned image
    tower, pooled over time as the gray-box video tower pools them (the mean, or its attention)."""

    def __init__(self, box: BoxBase, frames: int, pooling: str = "mean") -> None:
        super().__init__()
        self.frame_tower = OwnedImageTower(box)
        self.frames = frames
        self.pool = AttentionPooling(box.spec.output_dim, frames) if pooling == "attention" else None

    @property
    def box(self) -> BoxBase:
        return self.frame_tower.box

    def forward(self, videos: list) -> torch.Tensor:
        frames = [img for video in videos for img in read_frames(str(video), self.frames)]
        z = torch.cat([self.frame_tower(part) for part in self.box.spec.limits.batches(frames)])
        z = z.view(len(videos), self.frames, -1)  # (B, F, O)
        return z.mean(1) if self.pool is None else self.pool(z)  # (B, O)


class WhiteBoxVideoRetriever(WhiteBoxPairRetriever, VideoTextRetriever):
    """Text-video retrieval through both owned towers: the video task's frames, pooling, config
    (``VideoTextConfig``) and metrics; otherwise as ``WhiteBoxPairRetriever``."""

    def owned_visual_tower(self, box: BoxBase) -> nn.Module:
        return OwnedVideoTower(box, self.config.frames, self.config.temporal_pooling)


class WhiteBoxSketchRetriever(OwnedBaseline, SketchPhotoRetriever):
    """Sketch-to-photo retrieval through the owned vision tower of a CLIP, SigLIP or BLIP model,
    LoRA on its attention projections or all its weights (with its projection), with the sketch
    task's loss, temperature and metrics (``SketchPhotoRetriever``).

    One tower shared by sketches and photos, not two copies: the gray-box rows' two towers cross
    one box, so the owner adapts the one model that box holds; two copies would give full
    fine-tuning twice the weights (and memory) of the model compared."""

    adapter_type = SKETCH_ADAPTER_TYPE
    baseline = "white-box sketch-photo retriever"

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        whitebox: WhiteBoxConfig | None = None,
        config: SketchConfig | None = None,
        *,
        image: ImageSpec | None = None,
    ) -> None:
        vision = owned_pair(model).towers[1::2]  # the vision tower and its projection
        model, whitebox, boxes = own(model, tokenizer, whitebox, image, vision)
        none = DGAConfig.variant("none", modality="image")
        super().__init__(boxes.image, boxes.image, none, none, config)
        self.take(model, whitebox, vision)
        self.sketch_tower = self.photo_tower = OwnedImageTower(boxes.image)

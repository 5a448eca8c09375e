"""Image-text retrieval on a pair of boxes (a CLIP model's text and image towers).

Each tower has its own DGA/LGA adapters; the loss follows the model family unless the user
chooses: CLIP's symmetric InfoNCE over a batch of caption-image pairs (CLIP, BLIP), or SigLIP's
sigmoid loss, each caption-image pair on its own (a pair whose spec says so); evaluation ranks
every image for each caption and every caption for each image (Recall@1/5/10 both ways).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from exotune import __version__
from exotune.boxes.base import BoxBase
from exotune.configs import ConfigBase, check_field_types
from exotune.data.images import ImageCaptionData
from exotune.errors import ConfigError
from exotune.graybox.config import DGAConfig
from exotune.graybox.model import GrayBoxModel
from exotune.tasks.artifacts import box_entries
from exotune.tasks.metrics import image_text_recalls
from exotune.tasks.model import AdapterModelMixin
from exotune.tasks.retrieval import encode_in_eval

ADAPTER_TYPE = "dga-image-text-retriever"
LOSSES = ("auto", "infonce", "sigmoid")
# SigLIP's starting logit scale and bias, for a user who owns them (the box states none, or the
# user chooses): a low enough start that most of a batch's negative pairs begin near 0
SIGMOID_INIT = (10.0, -10.0)
# InfoNCE's start when the pair states no scale: CLIP's logit scale ends at its ceiling, 100
# (temperature 0.01); start below it, where the clamped scale still has a gradient both ways
DEFAULT_TEMPERATURE = 0.02


@dataclass
class ImageTextConfig(ConfigBase):
    # InfoNCE's temperature at start; None: the model's own when the pair's spec states it (a BLIP
    # checkpoint's learned one), else DEFAULT_TEMPERATURE
    temperature: float | None = None
    learn_temperature: bool = True
    # "auto": the pair's own loss (a SigLIP pair's spec says sigmoid; InfoNCE otherwise)
    loss: str = "auto"
    # sigmoid: the user's own starting logit scale and bias, learnt with learn_temperature; both
    # None: the model's own from the box's spec, held fixed (SIGMOID_INIT when it states none)
    logit_scale: float | None = None
    logit_bias: float | None = None

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("temperature", "logit_scale", "logit_bias"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            ):
                raise ConfigError(f"{name} must be a finite number or None, got {value!r}")
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.logit_scale is not None and not self.logit_scale > 0:
            raise ConfigError(f"logit_scale must be > 0, got {self.logit_scale}")


class ImageTextRetriever(AdapterModelMixin, nn.Module):
    """A text tower and an image tower, each adapted; everything in ``state_dict()`` is the user's.

    The adapters default to the paper's DGA for each side: a shift token and an extra token
    for text, an identity-initialised pixel convolution for images, linear output adapters.
    A subclass pairs texts with other visual items (videos) by its own ``build_visual_tower``,
    ``config_cls``, ``metrics`` and names.
    """

    adapter_type = ADAPTER_TYPE
    task_type = "image-text-retrieval"
    config_cls = ImageTextConfig

    def __init__(
        self,
        text_box: BoxBase,
        image_box: BoxBase,
        text_dga: DGAConfig | None = None,
        image_dga: DGAConfig | None = None,
        config: ImageTextConfig | None = None,
    ) -> None:
        super().__init__()
        if text_box.spec.modality != "text" or image_box.spec.modality != "image":
            raise ConfigError(
                f"need a text box and an image box, got {text_box.spec.modality!r} and {image_box.spec.modality!r}"
            )
        if text_box.spec.output_dim != image_box.spec.output_dim:
            raise ConfigError(
                f"the towers' outputs differ in width ({text_box.spec.output_dim} vs "
                f"{image_box.spec.output_dim}): they do not share an embedding space"
            )
        self.text_dga = text_dga if text_dga is not None else DGAConfig.variant("both", modality="text")
        self.image_dga = image_dga if image_dga is not None else DGAConfig.variant("both", modality="image")
        config = config or self.config_cls()
        if not isinstance(config, self.config_cls):
            raise ConfigError(f"config must be a {self.config_cls.__name__}, got {type(config).__name__}")
        pair = text_box.spec.pair_loss or image_box.spec.pair_loss
        if config.loss == "auto":  # saved resolved: a reloaded adapter trains on as it did
            config = dataclasses.replace(config, loss="sigmoid" if pair and pair.kind == "sigmoid" else "infonce")
        if config.temperature is None:  # the same: the start is saved
            own = pair is not None and pair.kind == "softmax" and pair.scale > 0
            config = dataclasses.replace(config, temperature=1.0 / pair.scale if own else DEFAULT_TEMPERATURE)
        self.config = config
        self.text_tower = GrayBoxModel(text_box, self.text_dga)
        self.image_tower = self.build_visual_tower(image_box, self.image_dga)
        if config.loss == "sigmoid":
            self._init_sigmoid(pair)
        else:
            scale = torch.tensor(math.log(1.0 / config.temperature))
            self.log_scale = nn.Parameter(scale, requires_grad=config.learn_temperature)

    def _init_sigmoid(self, pair) -> None:
        """The logit scale (as its log) and bias: the model's own, fixed, or the user's, learnt."""
        cfg = self.config
        own = cfg.logit_scale is not None or cfg.logit_bias is not None or not (pair and pair.kind == "sigmoid")
        start = (pair.scale, pair.bias) if pair and pair.kind == "sigmoid" else SIGMOID_INIT
        scale = cfg.logit_scale if cfg.logit_scale is not None else start[0]
        bias = cfg.logit_bias if cfg.logit_bias is not None else start[1]
        learn = own and cfg.learn_temperature
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)), requires_grad=learn)
        self.logit_bias = nn.Parameter(torch.tensor(float(bias)), requires_grad=learn)

    def build_visual_tower(self, box: BoxBase, dga: DGAConfig) -> nn.Module:
        """The adapted image side: items -> (B, O)."""
        return GrayBoxModel(box, dga)

    @staticmethod
    def metrics(texts: torch.Tensor, items: torch.Tensor, caption_item: list[int]) -> dict[str, float]:
        return image_text_recalls(texts, items, caption_item)

    @property
    def text_box(self) -> BoxBase:
        return self.text_tower.box

    @property
    def image_box(self) -> BoxBase:
        return self.image_tower.box

    # -- encoding -----------------------------------------------------------------------------

    def _encode(self, tower: GrayBoxModel, inputs: list, batch_size: int, progress: bool, desc: str):
        return encode_in_eval(self, tower, inputs, tower.box, batch_size, progress, desc)

    def encode_texts(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        """L2-normalised caption embeddings (N, O)."""
        return self._encode(self.text_tower, texts, batch_size, progress, "encode captions")

    def encode_images(self, images: list, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """L2-normalised image embeddings (M, O) for file paths or PIL images."""
        return self._encode(self.image_tower, images, batch_size, progress, "encode images")

    def evaluate(self, data: ImageCaptionData, batch_size: int = 128, progress: bool = False) -> dict[str, float]:
        """Recall@1/5/10 text-to-image and image-to-text, and their mean, over all of ``data``."""
        texts = self.encode_texts(data.captions, batch_size, progress)
        images = self.encode_images(data.images, batch_size, progress)
        return self.metrics(texts, images, data.caption_image)

    # -- training -----------------------------------------------------------------------------

    def loss(self, data: ImageCaptionData) -> torch.Tensor:
        """The configured loss over the batch's captions and images (``config.loss``)."""
        t = nn.functional.normalize(self._forward(self.text_tower, data.captions), dim=-1)  # (B, O)
        v = nn.functional.normalize(self._forward(self.image_tower, data.images), dim=-1)  # (M, O)
        owner = torch.as_tensor(data.caption_image, device=t.device)  # (B,): each caption's image
        if self.config.loss == "sigmoid":
            return self.sigmoid_loss(t, v, owner)
        return self.infonce_loss(t, v, owner)

    def sigmoid_loss(self, t: torch.Tensor, v: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """SigLIP's: every caption-image pair a binary question, its own image(s) yes, the others
        no; summed over the images and averaged over the captions."""
        logits = self.log_scale.exp() * t @ v.T + self.logit_bias  # (B, M)
        own = owner.unsqueeze(1) == torch.arange(len(v), device=v.device).unsqueeze(0)  # (B, M)
        signs = own.to(logits.dtype) * 2 - 1  # +1 for a caption's image, -1 for the others
        return -nn.functional.logsigmoid(signs * logits).sum() / len(t)

    def infonce_loss(self, t: torch.Tensor, v: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE: each caption against the batch's images, each image against the
        batch's captions. An image with several captions in the batch takes a random one as its
        target; its other captions are no negatives."""
        logits = self.log_scale.exp().clamp(max=100.0) * t @ v.T  # (B, M)
        text_loss = nn.functional.cross_entropy(logits, owner)
        own = owner.unsqueeze(0) == torch.arange(len(v), device=v.device).unsqueeze(1)  # (M, B)
        pick = torch.rand(own.shape).to(own.device).masked_fill(~own, -1.0).argmax(1)  # (M,): a random own caption
        others = own.clone()
        others[torch.arange(len(pick), device=pick.device), pick] = False
        image_loss = nn.functional.cross_entropy(logits.T.masked_fill(others, float("-inf")), pick)
        return (text_loss + image_loss) / 2

    @staticmethod
    def _forward(tower: GrayBoxModel, inputs: list) -> torch.Tensor:
        return torch.cat([tower(part) for part in tower.box.spec.limits.batches(inputs)])  # the owner's limit

    # -- artifacts ------------------------------------------------------------------------------

    def to_config_dict(self) -> dict:
        light = "light-gray" in (self.text_dga.access, self.image_dga.access)
        return {
            "type": self.adapter_type,
            "library_version": __version__,
            "access": "light-gray" if light else "dark-gray",
            **box_entries("box", self.image_box),
            **box_entries("text_box", self.text_box),
            "dga": self.image_dga.folded().to_dict(),
            "text_dga": self.text_dga.folded().to_dict(),
            "task": {"type": self.task_type, **asdict(self.config)},
        }

    @classmethod
    def from_pretrained(cls, path: str | Path, text_box: BoxBase, image_box: BoxBase) -> ImageTextRetriever:
        return cls.load_folder(path, image_box, text_box=text_box)

    @classmethod
    def from_config(cls, cfg: dict, task: dict, box: BoxBase, text_box: BoxBase) -> ImageTextRetriever:
        image_dga, text_dga = DGAConfig.from_dict(cfg["dga"]), DGAConfig.from_dict(cfg["text_dga"])
        return cls(text_box, box, text_dga, image_dga, cls.config_cls.from_dict(task))

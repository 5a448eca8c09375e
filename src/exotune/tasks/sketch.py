"""Sketch-to-photo retrieval: two image towers (over one box or two), each with its own pixel
adapter and output adapter; sketches are the queries, photos the gallery.

Training is InfoNCE both ways over a batch of sketches and one photo of each sketch's class (the
photo it was drawn from where known); photos of the same class are no negatives. Evaluation is
the Sketchy protocol: category-level mAP@all and P@100 over the whole gallery, plus instance
acc@1 (is the top photo the one the sketch was drawn from) where pairings are known.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from exotune import __version__
from exotune.boxes.base import BoxBase
from exotune.configs import ConfigBase, check_field_types
from exotune.data.sketches import SketchPhotoData
from exotune.errors import ConfigError
from exotune.graybox.config import DGAConfig
from exotune.graybox.model import GrayBoxModel
from exotune.tasks.artifacts import box_entries
from exotune.tasks.metrics import SKETCH_METRICS
from exotune.tasks.model import AdapterModelMixin
from exotune.tasks.retrieval import encode_in_eval

ADAPTER_TYPE = "dga-sketch-photo-retriever"
_CHUNK = 256  # queries ranked at once


@dataclass
class SketchConfig(ConfigBase):
    temperature: float = 0.05
    learn_temperature: bool = True

    def __post_init__(self) -> None:
        check_field_types(self)
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")


def sketch_metrics(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_labels: list[int],
    gallery_labels: list[int],
    pairs: list[int] | None = None,
) -> dict[str, float]:
    """mAP over the whole ranking and precision in the top 100 (a photo of the sketch's class is
    relevant), from L2-normalised (Q, O) and (N, O); ``acc@1`` over the sketches whose photo is
    known (``pairs[i]`` >= 0; NaN when none is)."""
    q_labels, g_labels = torch.as_tensor(query_labels), torch.as_tensor(gallery_labels)
    k = min(100, len(gallery))
    aps, p100, hits, known = [], [], 0, 0
    pairs_t = torch.as_tensor(pairs if pairs is not None else [-1] * len(queries))
    positions = torch.arange(1, len(gallery) + 1, dtype=torch.float64)
    for start in range(0, len(queries), _CHUNK):
        scores = queries[start : start + _CHUNK] @ gallery.T  # (q, N)
        order = scores.argsort(dim=1, descending=True, stable=True)  # (q, N)
        relevant = (g_labels[order] == q_labels[start : start + _CHUNK].unsqueeze(1)).double()  # (q, N)
        precision = relevant.cumsum(1) / positions  # (q, N)
        aps.append((precision * relevant).sum(1) / relevant.sum(1).clamp(min=1))
        p100.append(relevant[:, :k].mean(1))
        pair = pairs_t[start : start + _CHUNK]
        known += int((pair >= 0).sum())
        hits += int(((order[:, 0] == pair) & (pair >= 0)).sum())
    if not aps:
        return dict.fromkeys(SKETCH_METRICS, float("nan"))
    return {
        "map@all": float(torch.cat(aps).mean()),
        "precision@100": float(torch.cat(p100).mean()),
        "acc@1": hits / known if known else float("nan"),
    }


class SketchPhotoRetriever(AdapterModelMixin, nn.Module):
    """A sketch tower and a photo tower, each adapted; everything in ``state_dict()`` is the user's."""

    adapter_type = ADAPTER_TYPE

    def __init__(
        self,
        sketch_box: BoxBase,
        photo_box: BoxBase | None = None,
        sketch_dga: DGAConfig | None = None,
        photo_dga: DGAConfig | None = None,
        config: SketchConfig | None = None,
    ) -> None:
        super().__init__()
        photo_box = photo_box if photo_box is not None else sketch_box
        if sketch_box.spec.modality != "image" or photo_box.spec.modality != "image":
            raise ConfigError(f"need image boxes, got {sketch_box.spec.modality!r} and {photo_box.spec.modality!r}")
        if sketch_box.spec.output_dim != photo_box.spec.output_dim:
            raise ConfigError(
                f"the towers' outputs differ in width ({sketch_box.spec.output_dim} vs "
                f"{photo_box.spec.output_dim}): they cannot be compared"
            )
        self.sketch_dga = sketch_dga if sketch_dga is not None else DGAConfig.variant("both", modality="image")
        self.photo_dga = photo_dga if photo_dga is not None else DGAConfig.variant("both", modality="image")
        self.config = config or SketchConfig()
        self.sketch_tower = GrayBoxModel(sketch_box, self.sketch_dga)
        self.photo_tower = GrayBoxModel(photo_box, self.photo_dga)
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / self.config.temperature)), requires_grad=self.config.learn_temperature
        )

    @property
    def sketch_box(self) -> BoxBase:
        return self.sketch_tower.box

    @property
    def photo_box(self) -> BoxBase:
        return self.photo_tower.box

    def encode_sketches(self, sketches: list, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """L2-normalised sketch embeddings (Q, O)."""
        return encode_in_eval(
            self, self.sketch_tower, sketches, self.sketch_box, batch_size, progress, "encode sketches"
        )

    def encode_photos(self, photos: list, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """L2-normalised photo embeddings (N, O)."""
        return encode_in_eval(self, self.photo_tower, photos, self.photo_box, batch_size, progress, "encode photos")

    def evaluate(self, data: SketchPhotoData, batch_size: int = 64, progress: bool = False) -> dict[str, float]:
        """mAP@all, P@100 and instance acc@1 of ``data``'s sketches against its whole gallery."""
        queries = self.encode_sketches(data.sketches, batch_size, progress)
        gallery = self.encode_photos(data.photos, batch_size, progress)
        return sketch_metrics(queries, gallery, data.sketch_labels, data.photo_labels, data.sketch_photo)

    def search(self, sketches: list, photos: list, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and indices (Q, k) of the best photos for each sketch."""
        scores = self.encode_sketches(sketches) @ self.encode_photos(photos).T
        return scores.topk(min(k, len(photos)), dim=1)

    def loss(self, data: SketchPhotoData) -> torch.Tensor:
        """InfoNCE both ways between the batch's sketches and one photo each: the photo it was
        drawn from, else a random photo of its class. Other photos of its class are no negatives."""
        labels = torch.as_tensor(data.photo_labels)
        picks = []
        for label, paired in zip(data.sketch_labels, data.sketch_photo, strict=True):
            same = (labels == label).nonzero().squeeze(1)
            picks.append(paired if paired >= 0 else int(same[torch.randint(len(same), ())]))
        s = nn.functional.normalize(self._forward(self.sketch_tower, data.sketches), dim=-1)  # (B, O)
        p = nn.functional.normalize(self._forward(self.photo_tower, [data.photos[i] for i in picks]), dim=-1)
        logits = self.log_scale.exp().clamp(max=100.0) * s @ p.T  # (B, B)
        y = torch.as_tensor(data.sketch_labels, device=logits.device)
        others = (y.unsqueeze(0) == y.unsqueeze(1)) & ~torch.eye(
            len(y), dtype=torch.bool, device=y.device
        )  # same class, not self
        target = torch.arange(len(y), device=y.device)
        return (
            nn.functional.cross_entropy(logits.masked_fill(others, float("-inf")), target)
            + nn.functional.cross_entropy(logits.T.masked_fill(others, float("-inf")), target)
        ) / 2

    @staticmethod
    def _forward(tower: GrayBoxModel, inputs: list) -> torch.Tensor:
        return torch.cat([tower(part) for part in tower.box.spec.limits.batches(inputs)])

    # -- artifacts ----------------------------------------------------------------------------

    def to_config_dict(self) -> dict:
        light = "light-gray" in (self.sketch_dga.access, self.photo_dga.access)
        return {
            "type": self.adapter_type,
            "library_version": __version__,
            "access": "light-gray" if light else "dark-gray",
            **box_entries("box", self.sketch_box),
            **box_entries("photo_box", self.photo_box),
            "dga": self.sketch_dga.folded().to_dict(),
            "photo_dga": self.photo_dga.folded().to_dict(),
            "task": {"type": "sketch-photo-retrieval", **asdict(self.config)},
        }

    @classmethod
    def from_pretrained(
        cls, path: str | Path, sketch_box: BoxBase, photo_box: BoxBase | None = None
    ) -> SketchPhotoRetriever:
        return cls.load_folder(path, sketch_box, photo_box=photo_box if photo_box is not None else sketch_box)

    @classmethod
    def from_config(cls, cfg: dict, task: dict, box: BoxBase, photo_box: BoxBase) -> SketchPhotoRetriever:
        sketch_dga, photo_dga = DGAConfig.from_dict(cfg["dga"]), DGAConfig.from_dict(cfg["photo_dga"])
        return cls(box, photo_box, sketch_dga, photo_dga, SketchConfig.from_dict(task))

"""Classification on an adapted box: the model, its loss, evaluation and artifacts.

``BoxClassifierMixin`` is the adapted box + head whatever the box reads; ``TextClassifier`` reads
texts, ``exotune.tasks.image_classification.ImageClassifier`` images (with class prototypes
from a text tower).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from exotune import __version__
from exotune.boxes.base import Box, BoxBase
from exotune.configs import ConfigBase, check_field_types
from exotune.errors import ConfigError
from exotune.graybox.config import DGAConfig
from exotune.graybox.model import GrayBoxModel
from exotune.tasks.artifacts import box_entries, given_or_saved_box
from exotune.tasks.encoding import TextEncoderMixin
from exotune.tasks.heads import HEADS, PROTOTYPE_STARTS, make_head
from exotune.tasks.model import AdapterModelMixin, ClassifierMixin

ADAPTER_TYPE = "dga-classifier"


@dataclass
class ClassificationConfig(ConfigBase):
    head: str = "prototype"
    label_template: str = "{}"  # how a class name becomes the text that is encoded
    temperature: float = 0.05
    learn_prototypes: bool = True
    learn_temperature: bool = True
    prototype_start: str = "names"  # PROTOTYPE_STARTS: the class names, or the training class means

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.prototype_start not in PROTOTYPE_STARTS:
            raise ConfigError(f"prototype_start must be one of {PROTOTYPE_STARTS}, got {self.prototype_start!r}")
        if self.prototype_start != "names" and self.head != "prototype":
            raise ConfigError(f"prototype_start {self.prototype_start!r} needs the prototype head, not {self.head!r}")
        if "{}" not in self.label_template:
            raise ConfigError(f"label_template must contain '{{}}', got {self.label_template!r}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")


class BoxClassifierMixin:
    """An adapted box + a head, whatever the box reads: built by ``build_classifier``, saved
    with its head, loaded by ``from_pretrained``. ``TextClassifier`` and
    ``exotune.tasks.image_classification.ImageClassifier`` mix it in beside
    ``ClassifierMixin`` and ``AdapterModelMixin``; everything in ``state_dict()`` is the user's."""

    adapter_type: str

    def build_classifier(
        self,
        box: BoxBase,
        label_names: list[str],
        dga: DGAConfig | None,
        config: ClassificationConfig,
        init_head: bool,
        label_box: BoxBase | None,
    ) -> None:
        """Set the labels, the adapted encoder over ``box`` and the head; the prototype head
        starts from the class names encoded by ``label_box`` (default: the box itself), which
        must give outputs as wide as the box's."""
        if not isinstance(label_names, (list, tuple)) or not all(isinstance(x, str) for x in label_names):
            raise ConfigError(f"label_names must be a list of strings, got {label_names!r:.80}")
        if len(label_names) < 2:
            raise ConfigError(f"need at least 2 classes, got {label_names!r}")
        self.label_names = list(label_names)
        self.dga = dga if dga is not None else DGAConfig.variant("none")
        self.config = config
        self.encoder = GrayBoxModel(box, self.dga)
        dim, label_box = box.spec.output_dim, label_box or box
        if self.config.head == "prototype" and label_box.spec.output_dim != dim:
            raise ConfigError(
                f"class prototypes from a box with outputs of {label_box.spec.output_dim} cannot score outputs of {dim}"
            )
        self.head = make_head(self.config, self.label_names, dim, label_box.encode if init_head else None)

    @property
    def box(self) -> BoxBase:
        return self.encoder.box

    def forward(self, inputs: list) -> torch.Tensor:
        return self.head(self.encoder(inputs))  # (B, C)

    def to_config_dict(self) -> dict:
        return {
            "type": self.adapter_type,
            "library_version": __version__,
            "access": self.dga.access,
            **box_entries("box", self.box),
            "dga": self.dga.folded().to_dict(),
            "task": {"type": "classification", "labels": self.label_names, **asdict(self.config)},
        }

    @classmethod
    def from_pretrained(cls, path: str | Path, box: BoxBase | None = None, *, remote: str | None = None):
        """The adapter in ``path`` on ``box``; without one, on the box the folder names (the
        backbone it was trained on, or the served box at ``remote``), fingerprint checked."""
        return cls.load_folder(path, given_or_saved_box(path, box, remote))

    @classmethod
    def from_config(cls, cfg: dict, task: dict, box: BoxBase):
        labels = task.pop("labels")
        return cls(box, labels, DGAConfig.from_dict(cfg["dga"]), ClassificationConfig.from_dict(task), _init_head=False)


class TextClassifier(TextEncoderMixin, BoxClassifierMixin, ClassifierMixin, AdapterModelMixin, nn.Module):
    """Adapted text box + head (``BoxClassifierMixin``); ``encode`` gives the adapted
    embeddings. The prototype head starts from the class names encoded by ``label_box``
    (default: the box itself), which must give outputs as wide as the box's.
    """

    adapter_type = ADAPTER_TYPE

    def __init__(
        self,
        box: BoxBase,
        label_names: list[str],
        dga: DGAConfig | None = None,
        config: ClassificationConfig | None = None,
        _init_head: bool = True,
        label_box: Box | None = None,
    ) -> None:
        super().__init__()
        self.build_classifier(box, label_names, dga, config or ClassificationConfig(), _init_head, label_box)

    @property
    def encoding_tower(self) -> GrayBoxModel:
        """What ``encode`` runs: the adapted box, before the head."""
        return self.encoder

"""Image classification on an adapted image box, with class prototypes from a text tower.

With a CLIP pair the prototype head starts as CLIP's zero-shot classifier: each class is its
name in a prompt ("a photo of a {}."), encoded by the text tower; an image goes to the class
whose prototype is nearest (cosine) to its embedding. Training then adapts the image tower
(pixel adapter, output adapter, entry tokens) and the prototypes.
"""

from __future__ import annotations

from torch import nn

from exotune.boxes.base import Box, BoxBase
from exotune.errors import ConfigError
from exotune.graybox.config import DGAConfig
from exotune.tasks.classification import BoxClassifierMixin, ClassificationConfig
from exotune.tasks.model import AdapterModelMixin, ClassifierMixin

ADAPTER_TYPE = "dga-image-classifier"
PROMPT = "a photo of a {}."  # CLIP's prompt for zero-shot classification


class ImageClassifier(BoxClassifierMixin, ClassifierMixin, AdapterModelMixin, nn.Module):
    """Adapted image box + head (``BoxClassifierMixin``); ``text_box`` (the CLIP text tower)
    encodes the class names for the prototype head. Saved folders hold the prototypes, so
    loading needs the image box only.
    """

    adapter_type = ADAPTER_TYPE

    def __init__(
        self,
        box: BoxBase,
        label_names: list[str],
        dga: DGAConfig | None = None,
        config: ClassificationConfig | None = None,
        _init_head: bool = True,
        text_box: Box | None = None,
    ) -> None:
        if box.spec.modality != "image":
            raise ConfigError(f"ImageClassifier needs an image box, got a {box.spec.modality!r} box")
        config = config or ClassificationConfig(label_template=PROMPT)
        if config.head == "prototype" and _init_head and text_box is None:
            raise ConfigError(
                "the prototype head encodes class names: pass text_box (the text tower of the "
                "image box's CLIP pair), or use head='linear'"
            )
        if text_box is not None and text_box.spec.modality != "text":
            raise ConfigError(f"text_box must be a text box, got a {text_box.spec.modality!r} box")
        super().__init__()
        self.build_classifier(box, label_names, dga, config, _init_head, text_box)

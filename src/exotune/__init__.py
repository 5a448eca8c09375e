"""exotune: adapt foundation models you cannot open."""

__version__ = "0.1.0"

from exotune.boxes import Box, BoxSpec, TextEncoderBox, load_box, load_clip_boxes, load_image_box  # noqa: E402
from exotune.graybox import DGAConfig, GrayBoxModel  # noqa: E402
from exotune.tasks.classification import ClassificationConfig, TextClassifier  # noqa: E402
from exotune.tasks.image_classification import ImageClassifier  # noqa: E402
from exotune.tasks.image_text import ImageTextConfig, ImageTextRetriever  # noqa: E402
from exotune.tasks.retrieval import DualEncoder, RetrievalConfig  # noqa: E402
from exotune.train import TrainConfig, Trainer  # noqa: E402


def connect(url: str, token: str | None = None, **kwargs):
    """A ``RemoteBox`` for the box served at ``url`` (needs the 'serve' extra: httpx)."""
    from exotune.boxes.remote import connect as _connect

    return _connect(url, token, **kwargs)


__all__ = [
    "Box",
    "BoxSpec",
    "ClassificationConfig",
    "DGAConfig",
    "DualEncoder",
    "GrayBoxModel",
    "ImageClassifier",
    "ImageTextConfig",
    "ImageTextRetriever",
    "RetrievalConfig",
    "TextClassifier",
    "TextEncoderBox",
    "TrainConfig",
    "Trainer",
    "__version__",
    "connect",
    "load_box",
    "load_clip_boxes",
    "load_image_box",
]

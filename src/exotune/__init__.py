"""exotune: adapt foundation models you cannot open."""

__version__ = "0.1.0"

# The public names resolve on first use (PEP 562): importing exotune, or a torch-free part of
# it such as exotune.ea with a black-box API, does not pay for torch.
from exotune._lazy import lazy_names  # noqa: E402

_LAZY = {
    "Box": "exotune.boxes",
    "BoxSpec": "exotune.boxes",
    "TextEncoderBox": "exotune.boxes",
    "load_box": "exotune.boxes",
    "DGAConfig": "exotune.graybox",
    "GrayBoxModel": "exotune.graybox",
    "ClassificationConfig": "exotune.tasks.classification",
    "TextClassifier": "exotune.tasks.classification",
    "DualEncoder": "exotune.tasks.retrieval",
    "RetrievalConfig": "exotune.tasks.retrieval",
    "TrainConfig": "exotune.train",
    "Trainer": "exotune.train",
    "load_clip_boxes": "exotune.boxes",
    "load_image_box": "exotune.boxes",
    "TextBox": "exotune.boxes",
    "ImageClassifier": "exotune.tasks.image_classification",
    "ImageTextConfig": "exotune.tasks.image_text",
    "ImageTextRetriever": "exotune.tasks.image_text",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)


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
    "TextBox",
    "TextEncoderBox",
    "TrainConfig",
    "Trainer",
    "__version__",
    "connect",
    "load_box",
    "load_clip_boxes",
    "load_image_box",
]

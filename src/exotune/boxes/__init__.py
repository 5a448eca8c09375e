"""The owner's side of the boundary: what a hidden model exposes.

The names resolve on first use (PEP 562), so that the torch-free parts (``spec``, ``wire``,
``http``) can be imported by a black-box client without paying for torch.
"""

from exotune._lazy import lazy_names

_LAZY = {
    "Box": "exotune.boxes.base",
    "BoxBase": "exotune.boxes.base",
    "TokenBatch": "exotune.boxes.base",
    "BoxPair": "exotune.boxes.clip",
    "CLIPTextBox": "exotune.boxes.clip",
    "clip_boxes": "exotune.boxes.clip",
    "ImageBox": "exotune.boxes.image",
    "VisionEncoderBox": "exotune.boxes.image",
    "DEFAULT_BACKBONE": "exotune.boxes.loading",
    "load_box": "exotune.boxes.loading",
    "load_clip_boxes": "exotune.boxes.loading",
    "load_image_box": "exotune.boxes.loading",
    "ACCESS_LEVELS": "exotune.boxes.spec",
    "BoxLimits": "exotune.boxes.spec",
    "BoxSpec": "exotune.boxes.spec",
    "EntryPoint": "exotune.boxes.spec",
    "ImageSpec": "exotune.boxes.spec",
    "TextEncoderBox": "exotune.boxes.text",
    "TextBox": "exotune.boxes.base",  # Box: its former name, kept as an alias
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)


__all__ = [
    "ACCESS_LEVELS",
    "DEFAULT_BACKBONE",
    "Box",
    "BoxBase",
    "BoxLimits",
    "BoxPair",
    "BoxSpec",
    "CLIPTextBox",
    "EntryPoint",
    "ImageBox",
    "ImageSpec",
    "TextBox",
    "TextEncoderBox",
    "TokenBatch",
    "VisionEncoderBox",
    "clip_boxes",
    "load_box",
    "load_clip_boxes",
    "load_image_box",
]

"""The owner's side of the boundary: what a hidden model exposes."""

from exotune.boxes.base import Box, BoxBase, TokenBatch
from exotune.boxes.clip import BoxPair, CLIPTextBox, clip_boxes
from exotune.boxes.image import ImageBox, VisionEncoderBox
from exotune.boxes.loading import DEFAULT_BACKBONE, load_box, load_clip_boxes, load_image_box
from exotune.boxes.spec import ACCESS_LEVELS, BoxLimits, BoxSpec, EntryPoint, ImageSpec
from exotune.boxes.text import TextEncoderBox

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
    "TextEncoderBox",
    "TokenBatch",
    "VisionEncoderBox",
    "clip_boxes",
    "load_box",
    "load_clip_boxes",
    "load_image_box",
]

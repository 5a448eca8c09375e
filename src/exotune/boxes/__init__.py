"""The owner's side of the boundary: what a hidden model exposes."""

from exotune.boxes.base import Box, TokenBatch
from exotune.boxes.loading import DEFAULT_BACKBONE, load_box
from exotune.boxes.spec import ACCESS_LEVELS, BoxLimits, BoxSpec, EntryPoint
from exotune.boxes.text import TextEncoderBox

__all__ = [
    "ACCESS_LEVELS",
    "DEFAULT_BACKBONE",
    "Box",
    "BoxLimits",
    "BoxSpec",
    "EntryPoint",
    "TextEncoderBox",
    "TokenBatch",
    "load_box",
]

"""What every trainable task model shares, written once: its trainable tensors and its folder
(``adapter_config.json`` + ``adapter_model.safetensors`` + checksums, only what was trained)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from exotune.artifacts import CONFIG_NAME, WEIGHTS_NAME, write_folder
from exotune.boxes.base import BoxBase
from exotune.graybox.model import folded_state_dict
from exotune.tasks.artifacts import read_adapter_config


class AdapterModelMixin:
    """Mixed in before ``nn.Module``. A model provides ``adapter_type`` and ``to_config_dict()``;
    it gets the generic half of :class:`exotune.protocols.Trainable` and of its artifact:
    ``save_pretrained`` writes the config and ``saved_tensors()`` (override ``artifact_files``
    for more files), and ``from_pretrained`` starts from ``read_config`` (folder, checksums,
    type, the box's fingerprint)."""

    adapter_type: str

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors the folder keeps: the state dict, re-parameterised tokens folded."""
        return folded_state_dict(self)

    def artifact_files(self) -> dict:
        """Name -> JSON object, tensors or a writer function, as ``write_folder`` takes them."""
        return {CONFIG_NAME: self.to_config_dict(), WEIGHTS_NAME: self.saved_tensors()}

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the folder atomically, with checksums: only what was trained."""
        return write_folder(path, self.artifact_files())

    @classmethod
    def read_config(cls, path: str | Path, box: BoxBase, **other_boxes: BoxBase) -> dict:
        """The folder's config, checked: it exists, its checksums hold, it is a ``cls.adapter_type``
        and it was trained against ``box`` (and ``other_boxes``, under their own keys)."""
        return read_adapter_config(path, cls.adapter_type, box, **other_boxes)

"""What every trainable task model shares, written once: its trainable tensors and its folder
(``adapter_config.json`` + ``adapter_model.safetensors`` + checksums, only what was trained)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from exotune.artifacts import CONFIG_NAME, WEIGHTS_NAME, saved_config, write_folder
from exotune.boxes.base import BoxBase, encode_sorted_in_eval
from exotune.graybox.model import folded_state_dict
from exotune.tasks.artifacts import load_trained_state, read_adapter_config, task_section
from exotune.tasks.metrics import classification_metrics


class AdapterModelMixin:
    """Mixed in before ``nn.Module``. A model provides ``adapter_type`` and ``to_config_dict()``;
    it gets the generic half of :class:`exotune.protocols.Trainable` and of its artifact:
    ``save_pretrained`` writes the config and ``saved_tensors()`` (override ``artifact_files``
    for more files), and ``load_folder`` is every ``from_pretrained``'s one path: ``read_config``
    (folder, checksums, type, the boxes' fingerprints), the model's own ``from_config``, the
    trained tensors."""

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

    @classmethod
    def load_folder(cls, path: str | Path, box: BoxBase, **other_boxes: BoxBase):
        """The model saved in ``path`` on ``box`` (and ``other_boxes``, under the keys its config
        names them by): ``read_config``, then ``cls.from_config(cfg, task, box, **other_boxes)``
        (``task``: the config's task section without its type; a missing or invalid saved value
        names the file), then the trained tensors, names, shapes and values checked."""
        path = Path(path)
        cfg = cls.read_config(path, box, **other_boxes)
        with saved_config(path / CONFIG_NAME):
            model = cls.from_config(cfg, task_section(cfg), box, **other_boxes)
        load_trained_state(model, path)
        return model


class ClassifierMixin:
    """What every classifier does with its logits (``self(inputs)``, (B, C)) and
    ``label_names``: the loss, probabilities, predicted names, metrics. Gray-box, image and
    white-box classifiers share it."""

    label_names: list[str]

    def start_head(self, data, batch_size: int = 128, progress: bool = False) -> None:
        """Before training, under ``config.prototype_start == "class-means"``: the prototype head
        starts at the class means of ``data``'s outputs through the model as it stands (step 0
        is the nearest-class-mean classifier, not the zero-shot one); a class ``data`` lacks
        keeps its name. Otherwise nothing. One gradient-free pass over ``data``."""
        if self.config.prototype_start != "class-means":
            return
        data, _ = data.aligned_to(self.label_names)
        dim = self.head.prototypes.shape[1]
        outputs = encode_sorted_in_eval(self, self.encoder, list(data.inputs), batch_size, dim, progress)  # (N, O)
        self.head.start_at_class_means(outputs, torch.as_tensor(data.labels, dtype=torch.long))

    def loss(self, data) -> torch.Tensor:
        logits = self(data.inputs)
        return nn.functional.cross_entropy(logits, torch.tensor(data.labels, device=logits.device))

    def predict_proba(self, inputs: list, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        return encode_sorted_in_eval(
            self, lambda batch: self(batch).softmax(-1), inputs, batch_size, len(self.label_names), progress
        )

    def predict(self, inputs: list, batch_size: int = 128, progress: bool = False) -> list[str]:
        idx = self.predict_proba(inputs, batch_size, progress).argmax(-1).tolist()
        return [self.label_names[i] for i in idx]

    def evaluate(self, data, batch_size: int = 128, progress: bool = False) -> dict[str, float]:
        y_true, y_pred, classes = self.predictions(data, batch_size, progress)
        return classification_metrics(y_true, y_pred, len(self.label_names), classes)

    def predictions(
        self, data, batch_size: int = 128, progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(true, predicted) class indices of ``data`` in this model's numbering, and the
        classes ``data`` names (labels matched by name: any order, a subset)."""
        data, classes = data.aligned_to(self.label_names)
        pred = self.predict_proba(data.inputs, batch_size, progress).argmax(-1).numpy()
        return np.asarray(data.labels), pred, classes

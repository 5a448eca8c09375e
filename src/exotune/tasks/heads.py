"""Classification heads over the (adapted) box outputs."""

from __future__ import annotations

import math

import torch
from torch import nn

from exotune.data.text import label_texts


class PrototypeHead(nn.Module):
    """Cosine similarity to class prototypes, times a learnable scale.

    Prototypes start as the class names encoded through the box, so the head is the
    zero-shot classifier at step 0.
    """

    def __init__(
        self,
        prototypes: torch.Tensor,
        temperature: float = 0.05,
        learn_prototypes: bool = True,
        learn_temperature: bool = True,
    ) -> None:
        super().__init__()
        protos = nn.functional.normalize(prototypes.detach().clone().float(), dim=-1)  # (C, O)
        self.prototypes = nn.Parameter(protos, requires_grad=learn_prototypes)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)

    @torch.no_grad()
    def start_at_class_means(self, outputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Each prototype becomes the mean of its class's unit-length ``outputs`` (N, O), labels
        (N,) in this head's numbering: the nearest-class-mean classifier. A class with no row
        keeps its prototype."""
        z = nn.functional.normalize(outputs.to(self.prototypes), dim=-1)
        labels = labels.to(self.prototypes.device)
        sums = torch.zeros_like(self.prototypes).index_add_(0, labels, z)  # (C, O)
        seen = torch.bincount(labels, minlength=len(sums)) > 0
        self.prototypes[seen] = nn.functional.normalize(sums[seen], dim=-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = nn.functional.normalize(z, dim=-1)  # (B, O)
        protos = nn.functional.normalize(self.prototypes, dim=-1)  # (C, O)
        return self.log_scale.exp().clamp(max=100.0) * z @ protos.T  # (B, C)


class LinearHead(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.proj(z)  # (B, C)


HEADS = ("prototype", "linear")
# where a prototype head starts: the class names encoded (the zero-shot classifier), or the
# class means of the training examples' outputs (the nearest-class-mean classifier)
PROTOTYPE_STARTS = ("names", "class-means")


def make_head(config, label_names: list[str], dim: int, encode=None) -> nn.Module:
    """The head ``config.head`` names (a ``ClassificationConfig``) over outputs of ``dim``:
    class prototypes that start as ``encode`` of the class names written with the label
    template, so step 0 is the zero-shot classifier (zeros without ``encode``: a head about to
    be loaded), or a linear layer."""
    n = len(label_names)
    if config.head != "prototype":
        return LinearHead(dim, n)
    protos = encode(label_texts(label_names, config.label_template)) if encode is not None else torch.zeros(n, dim)
    return PrototypeHead(protos, config.temperature, config.learn_prototypes, config.learn_temperature)

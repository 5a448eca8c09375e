"""The box interface: what adapter and training code may call. Nothing here returns weights."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from exotune.batching import length_sorted
from exotune.boxes.basis import keyed_digest
from exotune.boxes.spec import BoxSpec
from exotune.errors import AccessError, BoxLimitError
from exotune.progress import progress_bar


def weights_hash(model: nn.Module) -> str:
    """A hash over every tensor's name and bytes (equal hashes: equal outputs for equal inputs)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_digest(model: nn.Module, owner_secret: str | bytes | None = None) -> str:
    """Identify the weights without revealing them: the weights' hash, keyed by the owner's
    secret when one is given (stable for one owner, matched by no hash of a public checkpoint)."""
    digest = weights_hash(model)
    return keyed_digest(digest, owner_secret) if owner_secret is not None else digest[:16]


@dataclass
class TokenBatch:
    """Token embeddings of a batch of texts, as the box's input layer expects them."""

    embeds: torch.Tensor  # (B, T, D)
    mask: torch.Tensor  # (B, T), 1 for real tokens

    def __len__(self) -> int:
        return self.embeds.shape[0]


class BoxBase(ABC):
    """What every box shares, whatever it takes as input: its spec and the access check."""

    spec: BoxSpec

    def require(self, *levels: str) -> None:
        if self.spec.access not in levels:
            raise AccessError(
                f"this box is served at access level {self.spec.access!r}; the operation needs one of {levels}"
            )


class TextBox(BoxBase):
    """A hidden text backbone seen from outside (``BoxBase`` is what every box shares).

    Subclasses keep the backbone private. Users get the spec, the tokeniser's embedding
    lookup (``embed``, no gradient) and ``forward`` from input embeddings, differentiable only
    with respect to those embeddings (and, at light-gray level, entry tokens). Image
    backbones are ``exotune.boxes.image.ImageBox``: pixels in, the same outputs out.
    """

    @abstractmethod
    def embed(self, texts: list[str], max_length: int | None = None) -> TokenBatch:
        """Tokenise ``texts`` and look up their token embeddings (no gradient)."""

    @abstractmethod
    def forward(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        entry_tokens: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Run the backbone from input embeddings (B, T, D) to pooled outputs (B, O).

        ``entry_tokens`` (light-gray boxes only) maps an entry point's name (see
        ``spec.entry_points``) to tokens (n, D) that the box injects at that point; the
        result is differentiable with respect to ``embeds`` and every entry token.
        """

    # -- built on the two operations above ------------------------------------------------

    def check_input(self, embeds: torch.Tensor, mask: torch.Tensor) -> None:
        """Validate shapes against the spec and the owner's limits."""
        limits = self.spec.limits
        if embeds.ndim != 3 or embeds.shape[-1] != self.spec.input_dim:
            raise BoxLimitError(
                f"embeds must have shape (batch, length, {self.spec.input_dim}), got {tuple(embeds.shape)}"
            )
        if mask.shape != embeds.shape[:2]:
            raise BoxLimitError(f"mask must have shape {tuple(embeds.shape[:2])}, got {tuple(mask.shape)}")
        if embeds.shape[0] > limits.max_batch:
            raise BoxLimitError(f"batch of {embeds.shape[0]} exceeds the box's max_batch {limits.max_batch}")
        if embeds.shape[1] > limits.max_length:
            raise BoxLimitError(
                f"sequence of {embeds.shape[1]} tokens exceeds the box's max_length {limits.max_length}"
            )

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        batch = self.embed(texts)
        return self.forward(batch.embeds, batch.mask)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        """Outputs for ``texts`` (N, O), without gradients: the zero-shot path."""
        return encode_sorted(
            self._encode_batch, texts, min(batch_size, self.spec.limits.max_batch), self.spec.output_dim, progress
        )


Box = TextBox  # the former name of the text box interface, kept for code written against it


def encode_sorted(
    fn, texts: list, batch_size: int, dim: int, progress: bool = False, desc: str = "encode"
) -> torch.Tensor:
    """``fn`` over length-sorted batches of ``texts`` (images keep their order); rows come back
    in the input order, on the CPU, whatever device ``fn`` ran on."""
    out = torch.zeros(len(texts), dim)
    batches = length_sorted(texts, batch_size)
    bar = progress_bar(total=len(texts), desc=desc, enabled=progress)
    for idx in batches:
        out[torch.as_tensor(idx)] = fn([texts[i] for i in idx]).float().cpu()  # rows land on the CPU
        bar.update(len(idx))
    bar.close()
    return out


def encode_sorted_in_eval(
    model: nn.Module, fn, inputs: list, batch_size: int, dim: int, progress: bool = False, desc: str = "encode"
) -> torch.Tensor:
    """:func:`encode_sorted` with ``model`` in eval mode and without gradients; its mode is
    restored after, whatever happens."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return encode_sorted(fn, inputs, batch_size, dim, progress, desc)
    finally:
        model.train(was_training)

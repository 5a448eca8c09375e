"""The owner's secret: a private input basis and a keyed model digest.

A box built with an owner secret hands out token embeddings as ``E @ R``, R an orthogonal
matrix derived from the secret (the same secret always gives the same R), and applies
``R^T`` inside, to the input embeddings before the first layer and to entry tokens before
they are injected. Shifts, inserted tokens and low-rank maps are equivariant under a rotation,
so DGA/LGA compute exactly what they would in the owner's coordinates, while the rows a user
collects are not the model's ``word_embeddings``. R is never stored: it is rebuilt from the
secret, which the owner keeps apart from anything a user receives.

The same secret keys the spec's ``model_digest`` (an HMAC of the weights' hash), so that it
cannot be matched against hashes of public checkpoints, yet stays stable for one owner.
Each use of the secret is derived with its own label, so one derived value says nothing
about another.
"""

from __future__ import annotations

import hashlib
import hmac

import torch

from exotune.errors import ConfigError

SECRET_MIN_BYTES = 16
_DIGEST_LABEL = "exotune/model-digest/v1"
_BASIS_LABEL = "exotune/input-basis/v1"
_BASIS_ID_LABEL = "exotune/input-basis-id/v1"


def secret_bytes(secret: str | bytes) -> bytes:
    """The owner secret as bytes, checked: at least ``SECRET_MIN_BYTES`` of them."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes) or len(secret) < SECRET_MIN_BYTES:
        got = f"{len(secret)} bytes" if isinstance(secret, bytes) else type(secret).__name__
        raise ConfigError(f"an owner secret must be at least {SECRET_MIN_BYTES} bytes, got {got}")
    return secret


def derive(secret: str | bytes, label: str) -> bytes:
    """A 32-byte value derived from the secret for one purpose (``label``)."""
    return hmac.new(secret_bytes(secret), label.encode(), hashlib.sha256).digest()


def keyed_digest(weights_hash: str, secret: str | bytes) -> str:
    """The model digest an owner shows: an HMAC of the weights' hash, keyed by the secret."""
    return hmac.new(derive(secret, _DIGEST_LABEL), weights_hash.encode(), hashlib.sha256).hexdigest()[:16]


def basis_matrix(secret: str | bytes, dim: int) -> torch.Tensor:
    """The orthogonal (dim, dim) matrix R of ``secret``: QR of a Gaussian seeded by the secret,
    signs fixed so that R is unique (and Haar-distributed). float64."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"a basis needs a dimension >= 1, got {dim!r}")
    seed = int.from_bytes(derive(secret, f"{_BASIS_LABEL}/{dim}")[:8], "big") >> 1  # 63 bits
    gaussian = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r))  # (dim, dim), columns scaled by +-1


class OwnerBasis:
    """R of one secret and width: ``to_user`` (x @ R) for what leaves the box, ``to_model``
    (x @ R^T) for what enters it. ``id`` names the basis publicly (in the spec) without
    revealing it."""

    def __init__(self, secret: str | bytes, dim: int) -> None:
        self.id = derive(secret, f"{_BASIS_ID_LABEL}/{dim}").hex()[:16]
        self.__r = basis_matrix(secret, dim).float()  # (D, D)

    def _r(self, x: torch.Tensor) -> torch.Tensor:
        return self.__r.to(device=x.device, dtype=x.dtype)

    def to_user(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self._r(x)  # (..., D)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self._r(x).T  # (..., D)

    def __repr__(self) -> str:  # never show R
        return f"OwnerBasis(id={self.id!r})"

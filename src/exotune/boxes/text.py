"""A local text-encoder box over any Hugging Face ``transformers`` encoder (BERT family)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from exotune.boxes.base import Box, TokenBatch, model_digest
from exotune.boxes.basis import OwnerBasis
from exotune.boxes.entry_points import check_entry_tokens, expose, inject, reserve
from exotune.boxes.http import check_texts
from exotune.boxes.spec import BoxLimits, BoxSpec
from exotune.errors import ConfigError

POOLINGS = ("mean", "cls")


class TextEncoderBox(Box):
    """Owner-side wrapper: keeps the encoder private and frozen; exposes a ``BoxSpec``.

    The encoder is stored under a name-mangled attribute and is never returned; the box is
    not an ``nn.Module``, so an adapter holding it does not see the backbone's parameters.

    ``entry_points`` (``"all"`` or layer indices) makes it a light-gray box: the input of each
    named transformer layer accepts up to ``entry_tokens_max`` tokens (VPT-deep), exposed as
    ``spec.entry_points`` named ``"layer.<i>"``.

    ``owner_secret`` (a served box's; see ``exotune.boxes.basis``) keys the spec's
    ``model_digest``, names entry points ``"point.<j>"`` and, unless ``basis=False``, hands out
    token embeddings in the secret's orthogonal basis (``E @ R``), undone inside before the
    first layer and on entry tokens: adapters train exactly as in the model's own coordinates,
    and ``encode`` is unchanged. A local box for the user's own use needs none.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int | None = None,
        access: str | None = None,  # default: "light-gray" with entry points, else "dark-gray"
        limits: BoxLimits | None = None,
        entry_points: str | Sequence[int] | None = None,
        entry_tokens_max: int = 8,
        owner_secret: str | bytes | None = None,
        basis: bool = True,
    ) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if entry_points is not None:
            embedding_dim = model.get_input_embeddings().embedding_dim
            if embedding_dim != model.config.hidden_size:
                raise ConfigError(
                    f"entry_points need token embeddings as wide as the hidden states; this backbone has "
                    f"{embedding_dim} vs {model.config.hidden_size}"
                )
        access, self.__layers, points = expose(model, entry_points, entry_tokens_max, access,
                                               opaque=owner_secret is not None)
        model.eval()
        model.requires_grad_(False)  # explicit and idempotent: no weight gradients ever
        self.__model = model
        self.__tokenizer = tokenizer
        self.__embeddings = model.get_input_embeddings()
        dim = int(self.__embeddings.embedding_dim)
        self.__basis = OwnerBasis(owner_secret, dim) if owner_secret is not None and basis else None
        positions = int(getattr(model.config, "max_position_embeddings", 512))
        max_length = min(max_length or positions, positions)
        limits = limits or BoxLimits(max_length=positions)
        self.pooling = pooling
        self.normalize = normalize
        self.spec = BoxSpec(
            modality="text",
            input_kind="token-embeddings",
            input_shape=(None, dim),
            output_dim=int(model.config.hidden_size),
            access=access,
            model_digest=model_digest(model, owner_secret),
            text_max_length=max_length,
            pooling=pooling,
            normalized=normalize,
            entry_points=points,
            limits=limits,
            input_basis=self.__basis.id if self.__basis else "",
        )

    # -- the two operations ---------------------------------------------------------------

    @torch.no_grad()
    def embed(self, texts: list[str], max_length: int | None = None) -> TokenBatch:
        self.require("dark-gray", "light-gray")
        batch = self._embed(texts, max_length)
        if self.__basis is not None:
            batch.embeds = self.__basis.to_user(batch.embeds)  # (B, T, D) in the owner's secret basis
        return batch

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, entry_tokens=None) -> torch.Tensor:
        self.require("dark-gray", "light-gray")
        self.check_input(embeds, mask)
        if entry_tokens:
            self.require("light-gray")
            n = self._check_entry_tokens(entry_tokens, embeds.shape[1])
            entry_tokens = {name: self._inward(t) for name, t in entry_tokens.items()}
            return self._forward_with_entry_tokens(self._inward(embeds), mask, entry_tokens, n)
        return self._forward(self._inward(embeds), mask)

    # -- private ------------------------------------------------------------------------------

    def _embed(self, texts: list[str], max_length: int | None) -> TokenBatch:
        check_texts(texts)
        limit = min(max_length or self.spec.text_max_length, self.spec.text_max_length)
        enc = self.__tokenizer(
            list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )
        embeds = self.__embeddings(enc["input_ids"]).detach()  # (B, T, D)
        return TokenBatch(embeds=embeds, mask=enc["attention_mask"])

    def _inward(self, x: torch.Tensor) -> torch.Tensor:
        """The user's tokens in the model's own coordinates (R^T undoes the secret basis)."""
        return x if self.__basis is None else self.__basis.to_model(x)

    def _check_entry_tokens(self, entry_tokens: Mapping[str, torch.Tensor], length: int) -> int:
        return check_entry_tokens(self.spec, entry_tokens, length)

    def _forward_with_entry_tokens(self, embeds, mask, entry_tokens, n: int) -> torch.Tensor:
        # VPT-deep: n reserved positions right after [CLS] ride through every layer; each entry
        # layer overwrites them with its own tokens, layers without tokens carry them through.
        embeds, full_mask = reserve(embeds, mask, n)  # (B, n + T, D), (B, n + T)
        with inject(self.__layers, entry_tokens, n):
            hidden = self.__model(inputs_embeds=embeds, attention_mask=full_mask).last_hidden_state
        # Pooling leaves the reserved positions out, as VPT-deep drops the prompts' outputs: the
        # tokens act on the text through attention, and the pooled output stays a pooling of the
        # input's own tokens (the spec's ``pooling``), so it does not depend on how many tokens
        # the user chose and compares directly with a dark-gray forward. ("cls" reads position
        # 0, which precedes them.)
        hidden = torch.cat([hidden[:, :1], hidden[:, 1 + n :]], dim=1)  # (B, T, H)
        return self._pool(hidden, mask)

    def _forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.__model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # (B, T, H)
        return self._pool(hidden, mask)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return pooled  # (B, H)

    @torch.no_grad()
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        batch = self._embed(texts, None)
        self.check_input(batch.embeds, batch.mask)
        return self._forward(batch.embeds, batch.mask)

    def __repr__(self) -> str:  # never show the module
        s = self.spec
        return f"TextEncoderBox(access={s.access!r}, dim={s.output_dim}, digest={s.model_digest})"


def read_sentence_transformers_defaults(path: Path) -> dict:
    """Pooling, normalisation and length from a sentence-transformers folder, if it is one."""
    defaults: dict = {}
    pooling_cfg = path / "1_Pooling" / "config.json"
    if pooling_cfg.is_file():
        cfg = json.loads(pooling_cfg.read_text())
        defaults["pooling"] = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
    modules = path / "modules.json"
    if modules.is_file():
        types = [m.get("type", "") for m in json.loads(modules.read_text())]
        defaults["normalize"] = any(t.endswith("Normalize") for t in types)
    st_cfg = path / "sentence_bert_config.json"
    if st_cfg.is_file():
        length = json.loads(st_cfg.read_text()).get("max_seq_length")
        if length:
            defaults["max_length"] = int(length)
    return defaults

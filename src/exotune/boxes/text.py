"""A local text-encoder box over any Hugging Face ``transformers`` encoder (BERT family)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from exotune.boxes.base import Box, TokenBatch
from exotune.boxes.spec import BoxLimits, BoxSpec
from exotune.errors import ConfigError

POOLINGS = ("mean", "cls")


def _model_digest(model: nn.Module) -> str:
    """Identify the weights without revealing them: a hash over every tensor's bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class TextEncoderBox(Box):
    """Owner-side wrapper: keeps the encoder private and frozen; exposes a ``BoxSpec``.

    The encoder is stored under a name-mangled attribute and is never returned; the box is
    not an ``nn.Module``, so an adapter holding it does not see the backbone's parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int | None = None,
        access: str = "dark-gray",
        limits: BoxLimits | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        model.eval()
        model.requires_grad_(False)  # explicit and idempotent: no weight gradients ever
        self.__model = model
        self.__tokenizer = tokenizer
        self.__embeddings = model.get_input_embeddings()
        positions = int(getattr(model.config, "max_position_embeddings", 512))
        max_length = min(max_length or positions, positions)
        limits = limits or BoxLimits(max_length=positions)
        self.pooling = pooling
        self.normalize = normalize
        self.spec = BoxSpec(
            modality="text",
            input_kind="token-embeddings",
            input_shape=(None, int(self.__embeddings.embedding_dim)),
            output_dim=int(model.config.hidden_size),
            access=access,
            model_digest=_model_digest(model),
            text_max_length=max_length,
            pooling=pooling,
            normalized=normalize,
            limits=limits,
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, **kwargs) -> TextEncoderBox:
        """Load a backbone by local path, model id or the packaged default (see ``load_box``)."""
        from exotune.boxes.loading import load_text_encoder

        model, tokenizer, defaults = load_text_encoder(name_or_path)
        return cls(model, tokenizer, **{**defaults, **kwargs})

    # -- the two operations ---------------------------------------------------------------

    @torch.no_grad()
    def embed(self, texts: list[str], max_length: int | None = None) -> TokenBatch:
        self.require("dark-gray", "light-gray")
        return self._embed(texts, max_length)

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, entry_tokens=None) -> torch.Tensor:
        self.require("dark-gray", "light-gray")
        self.check_input(embeds, mask)
        if entry_tokens:
            self.require("light-gray")
        return self._forward(embeds, mask)

    # -- private ------------------------------------------------------------------------------

    def _embed(self, texts: list[str], max_length: int | None) -> TokenBatch:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ConfigError("texts must be a list of strings")
        limit = min(max_length or self.spec.text_max_length, self.spec.text_max_length)
        enc = self.__tokenizer(
            list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )
        embeds = self.__embeddings(enc["input_ids"]).detach()  # (B, T, D)
        return TokenBatch(embeds=embeds, mask=enc["attention_mask"])

    def _forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.__model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # (B, T, H)
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

"""A local text box over a Hugging Face ``transformers`` encoder or decoder of a supported
family (``exotune.boxes.families``: BERT, RoBERTa, XLM-RoBERTa, MPNet, DeBERTa-v2, ModernBERT,
Qwen2- and Llama-style decoders)."""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from exotune.boxes.base import Box, TokenBatch, model_digest
from exotune.boxes.basis import OwnerBasis
from exotune.boxes.dropout import model_dropout, trains
from exotune.boxes.entry_points import check_entry_tokens, expose, inject, reserve, reserved
from exotune.boxes.families import family_of
from exotune.boxes.http import check_texts
from exotune.boxes.spec import BoxLimits, BoxSpec
from exotune.devices import Placed, Placement
from exotune.errors import ConfigError

POOLINGS = ("mean", "cls")  # an encoder's; a decoder's are "last" and "mean"


class TextEncoderBox(Placed, Box):
    """Owner-side wrapper: keeps the encoder private and frozen; exposes a ``BoxSpec``.

    The encoder is stored under a name-mangled attribute and is never returned; the box is
    not an ``nn.Module``, so an adapter holding it does not see the backbone's parameters.

    ``entry_points`` (``"all"`` or layer indices) makes it a light-gray box: the input of each
    named transformer layer accepts up to ``entry_tokens_max`` tokens (VPT-deep), exposed as
    ``spec.entry_points`` named ``"layer.<i>"``; ``entry_mode`` (``spec.entry_mode``) says how
    they act: overwriting reserved positions (``"replace"``), added to them (``"add"``), or on
    every position, as a shift (``"shift"``) or a gain and a shift (``"affine"``) of the layer's
    input (``exotune.boxes.entry_points``).

    The model's family (``config.model_type``) sets its conventions: the positions it can take,
    the poolings it allows (default: its first, ``"mean"`` for an encoder, ``"last"`` for a
    decoder), and where inserted tokens go (``spec.insert_at``: after the tokenizer's leading
    special token, else at the front). ``embed`` pads on the right; a decoder runs with position
    ids counted over the mask, so its outputs are those its own left or right padding gives.

    ``prompts`` (name -> text, a sentence-transformers folder's) are the owner's: ``prompt``
    names the one put before every text (``prompted(name)``: the same box with another), the
    spec tells its name, and inserted tokens go after it. ``pool_prompt=False`` leaves the
    prompt's tokens out of mean pooling (the folder's ``include_prompt``).

    ``owner_secret`` (a served box's; see ``exotune.boxes.basis``) keys the spec's
    ``model_digest``, names entry points ``"point.<j>"`` and, unless ``basis=False``, hands out
    token embeddings in the secret's orthogonal basis (``E @ R``), undone inside before the
    first layer and on entry tokens: adapters train exactly as in the model's own coordinates,
    and ``encode`` is unchanged. A local box for the user's own use needs none.

    ``device`` and ``dtype`` place and cast the weights (after the digest is taken: the spec,
    and so the adapters that match it, do not depend on them); inputs move to the box and
    outputs come back on the caller's device in the caller's format. ``precision`` (``"bf16"``,
    ``"fp16"``) autocasts the calls made without gradients (encode, evaluation, scores).

    ``training_dropout`` (the owner's choice, off by default): calls that carry gradients back
    (a user's training steps) pass through the model's dropout layers as in training
    (``exotune.boxes.dropout``); every other call is as without it.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        pooling: str | None = None,  # default: the family's first
        normalize: bool = False,
        max_length: int | None = None,
        access: str | None = None,  # default: "light-gray" with entry points, else "dark-gray"
        limits: BoxLimits | None = None,
        entry_points: str | Sequence[int] | None = None,
        entry_tokens_max: int = 8,
        entry_mode: str = "replace",
        owner_secret: str | bytes | None = None,
        basis: bool = True,
        prompts: Mapping[str, str] | None = None,
        prompt: str | None = None,
        pool_prompt: bool = True,
        device: str | torch.device | None = None,  # default: where the model is
        dtype: str | torch.dtype | None = None,  # default: the model's
        precision: str = "fp32",  # of the no-gradient calls
        training_dropout: bool = False,
    ) -> None:
        self._placement = Placement(device, dtype, precision)  # checked before anything runs
        if not isinstance(training_dropout, bool):
            raise ConfigError(f"training_dropout must be True or False, got {training_dropout!r}")
        self.__training_dropout = training_dropout
        family = family_of(str(getattr(model.config, "model_type", "")))
        pooling = pooling or family.poolings[0]
        if pooling not in family.poolings:
            raise ConfigError(f"pooling must be one of {family.poolings} for a {family.name} model, got {pooling!r}")
        if tokenizer.pad_token is None:  # decoders often ship without one; padding is masked anyway
            tokenizer.pad_token = tokenizer.eos_token
        if entry_points is not None:
            embedding_dim = model.get_input_embeddings().embedding_dim
            if embedding_dim != model.config.hidden_size:
                raise ConfigError(
                    f"entry_points need token embeddings as wide as the hidden states; this backbone has "
                    f"{embedding_dim} vs {model.config.hidden_size}"
                )
        access, self.__layers, points = expose(
            model, entry_points, entry_tokens_max, access, opaque=owner_secret is not None, entry_mode=entry_mode
        )
        model.eval()
        model.requires_grad_(False)  # explicit and idempotent: no weight gradients ever
        self.__model = model
        self.__tokenizer = tokenizer
        self.__tokenizer_lock = threading.Lock()  # fast tokenizers are not safe across threads
        self.__embeddings = model.get_input_embeddings()
        dim = int(self.__embeddings.embedding_dim)
        self.__basis = OwnerBasis(owner_secret, dim) if owner_secret is not None and basis else None
        self.__family = family
        first = tokenizer(["a"])["input_ids"][0]  # does the tokenizer start a text with a special token?
        self.__at = int(bool(first) and first[0] in tokenizer.all_special_ids)
        self.__prompts = {k: str(v) for k, v in (prompts or {}).items() if v}  # an empty prompt is none
        self.__prompt, self.__pool_prompt, self.__unpooled = "", bool(pool_prompt), 0
        positions = family.max_positions(model.config)
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
            insert_at=self.__at,
            prompts=tuple(sorted(self.__prompts)),
            entry_mode=entry_mode,
        )
        if prompt:
            self._use_prompt(prompt)
        self._placement.apply(model)  # the digest above is of the weights as given

    @property
    def training_dropout(self) -> bool:
        """Whether training calls pass through the model's dropout layers (the owner's option)."""
        return self.__training_dropout

    def prompted(self, name: str) -> TextEncoderBox:
        """The same hidden model with the owner's prompt ``name`` before every text."""
        other = copy.copy(self)
        other._use_prompt(name)
        return other

    def _use_prompt(self, name: str) -> None:
        if name not in self.__prompts:
            raise ConfigError(f"this box has no prompt {name!r}; it has {sorted(self.__prompts) or 'none'}")
        text = self.__prompts[name]
        ids = self.__tokenizer([text])["input_ids"][0]
        while ids and ids[-1] in self.__tokenizer.all_special_ids:  # a closing [SEP] / end token
            ids = ids[:-1]
        self.__prompt, self.__at = text, len(ids)
        self.__unpooled = 0 if self.__pool_prompt else len(ids)
        self.spec = dataclasses.replace(self.spec, prompt=name, insert_at=len(ids))

    # -- the two operations ---------------------------------------------------------------

    @torch.no_grad()
    def embed(self, texts: list[str], max_length: int | None = None) -> TokenBatch:
        self.require("dark-gray", "light-gray")
        batch = self._embed(texts, max_length)
        if batch.embeds.dtype in (torch.bfloat16, torch.float16):  # the user's side stays float32
            batch.embeds = batch.embeds.float()
        if self.__basis is not None:
            batch.embeds = self.__basis.to_user(batch.embeds)  # (B, T, D) in the owner's secret basis
        return batch

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, entry_tokens=None) -> torch.Tensor:
        self.require("dark-gray", "light-gray")
        self.check_input(embeds, mask)
        back = {"device": embeds.device, "dtype": embeds.dtype}  # the answer lands where the question came from
        mask = mask.to(self.device)
        dropout = self.__training_dropout and trains(embeds, *(entry_tokens or {}).values())
        with self._placement.autocast(), model_dropout(self.__model, dropout):
            if entry_tokens:
                self.require("light-gray")
                n = self._check_entry_tokens(entry_tokens, embeds.shape[1])
                entry_tokens = {name: self._to_box(t) for name, t in entry_tokens.items()}
                out = self._forward_with_entry_tokens(self._to_box(embeds), mask, entry_tokens, n)
            else:
                out = self._forward(self._to_box(embeds), mask)
        return out.to(**back)

    # -- private ------------------------------------------------------------------------------

    def _embed(self, texts: list[str], max_length: int | None) -> TokenBatch:
        check_texts(texts)
        limit = min(max_length or self.spec.text_max_length, self.spec.text_max_length)
        with self.__tokenizer_lock:  # only to tokenize: the forward needs no lock
            enc = self.__tokenizer(
                [self.__prompt + t for t in texts],
                padding=True,
                truncation=True,
                max_length=limit,
                return_tensors="pt",
                padding_side="right",  # the user's layout: every text starts at position 0
            )
        embeds = self.__embeddings(enc["input_ids"].to(self.device)).detach()  # (B, T, D), on the box's device
        return TokenBatch(embeds=embeds, mask=enc["attention_mask"].to(self.device))

    def _to_box(self, x: torch.Tensor) -> torch.Tensor:
        """The user's tokens in the model's coordinates, on its device and in its format."""
        return self._placement.inward(self._inward(x))

    def _inward(self, x: torch.Tensor) -> torch.Tensor:
        """The user's tokens in the model's own coordinates (R^T undoes the secret basis)."""
        return x if self.__basis is None else self.__basis.to_model(x)

    def _check_entry_tokens(self, entry_tokens: Mapping[str, torch.Tensor], length: int) -> int:
        return check_entry_tokens(self.spec, entry_tokens, length)

    def _forward_with_entry_tokens(self, embeds, mask, entry_tokens, n: int) -> torch.Tensor:
        # VPT-deep: n reserved positions right after [CLS] (a decoder's front, when its texts
        # start with no special token) ride through every layer; each entry layer overwrites
        # them with its own tokens (or adds them: spec.entry_mode), layers without tokens carry
        # them through. The modes that act on every position ("shift", "affine") reserve none.
        at, n = self.__at, reserved(self.spec.entry_mode, n)
        embeds, full_mask = reserve(embeds, mask, n, at)  # (B, n + T, D), (B, n + T)
        with inject(self.__layers, entry_tokens, n, at, self.spec.entry_mode):
            hidden = self._run(embeds, full_mask)
        # Pooling leaves the reserved positions out, as VPT-deep drops the prompts' outputs: the
        # tokens act on the text through attention, and the pooled output stays a pooling of the
        # input's own tokens (the spec's ``pooling``), so it does not depend on how many tokens
        # the user chose and compares directly with a dark-gray forward. ("cls" reads position
        # 0, which precedes them.)
        hidden = torch.cat([hidden[:, :at], hidden[:, at + n :]], dim=1)  # (B, T, H)
        return self._pool(hidden, mask)

    def _forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._pool(self._run(embeds, mask), mask)

    def _run(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kwargs = self.__family.forward_kwargs(mask)  # a decoder's position ids
        return self.__model(inputs_embeds=embeds, attention_mask=mask, **kwargs).last_hidden_state  # (B, T, H)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "last":  # the last real token, wherever the padding is
            last = mask.shape[1] - 1 - (mask > 0).flip(1).int().argmax(1)  # (B,)
            pooled = hidden[torch.arange(hidden.shape[0]), last]
        else:
            if self.__unpooled:  # the prompt's tokens: attended to, not pooled
                mask = torch.cat([mask[:, : self.__unpooled] * 0, mask[:, self.__unpooled :]], dim=1)
            m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return pooled  # (B, H)

    @torch.no_grad()
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        batch = self._embed(texts, None)
        self.check_input(batch.embeds, batch.mask)
        with self._placement.autocast():
            return self._forward(batch.embeds, batch.mask).float()

    def __repr__(self) -> str:  # never show the module
        s = self.spec
        return f"TextEncoderBox(access={s.access!r}, dim={s.output_dim}, digest={s.model_digest})"


def read_sentence_transformers_defaults(path: Path) -> dict:
    """Pooling, normalisation, length and prompts from a sentence-transformers folder, if it is one."""
    defaults: dict = {}
    pooling_cfg = path / "1_Pooling" / "config.json"
    if pooling_cfg.is_file():
        cfg = json.loads(pooling_cfg.read_text())
        defaults["pooling"] = (
            "cls" if cfg.get("pooling_mode_cls_token") else "last" if cfg.get("pooling_mode_lasttoken") else "mean"
        )
        if cfg.get("include_prompt") is False:
            defaults["pool_prompt"] = False
    modules = path / "modules.json"
    if modules.is_file():
        types = [m.get("type", "") for m in json.loads(modules.read_text())]
        defaults["normalize"] = any(t.endswith("Normalize") for t in types)
    prompts_cfg = path / "config_sentence_transformers.json"
    if prompts_cfg.is_file():
        cfg = json.loads(prompts_cfg.read_text())
        if any(cfg.get("prompts") or {}):
            defaults["prompts"] = dict(cfg["prompts"])
        if cfg.get("default_prompt_name"):
            defaults["prompt"] = cfg["default_prompt_name"]
    st_cfg = path / "sentence_bert_config.json"
    if st_cfg.is_file():
        length = json.loads(st_cfg.read_text()).get("max_seq_length")
        if length:
            defaults["max_length"] = int(length)
    return defaults


# the prompt names a folder may give each side of retrieval, in order of preference
ROLE_PROMPTS = {"query": ("query",), "document": ("document", "passage", "doc", "corpus")}


def for_role(box, role: str):
    """``box`` with its owner's prompt for ``role`` (``"query"``, ``"document"``) when it has one."""
    names = [n for n in ROLE_PROMPTS[role] if n in box.spec.prompts]
    return box.prompted(names[0]) if names and hasattr(box, "prompted") else box

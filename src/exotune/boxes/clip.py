"""A CLIP model as two boxes: a text tower and an image tower that share one embedding space.

Both boxes carry the digest of the whole model, so their specs name the same backbone; each
has its own input (token embeddings, pixels), adapters and, light-gray, entry points.

The text tower runs through the library's own forward (Hugging Face ``CLIPModel``, or an
open_clip model's ``encode_text``) so that its masks, position embeddings and pooling stay the
owner's: during a call, the token-embedding lookup returns the (adapted) embeddings, and the
token ids the tower sees only mark where each text ends, which is where CLIP pools.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from exotune.boxes.base import Box, TokenBatch, model_digest
from exotune.boxes.basis import OwnerBasis
from exotune.boxes.entry_points import check_entry_tokens, expose, inject, reserve, reserved
from exotune.boxes.hooks import removed_after, this_thread
from exotune.boxes.http import check_texts
from exotune.boxes.image import ImageBox, VisionEncoderBox
from exotune.boxes.spec import BoxLimits, BoxSpec, ImageSpec
from exotune.devices import Placed, Placement
from exotune.errors import ConfigError

# The OpenAI CLIP preprocessing (and most open_clip models'): shorter side to the input size,
# centre crop, bicubic, these channel statistics.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def openai_image_spec(size: int) -> ImageSpec:
    return ImageSpec(mean=OPENAI_MEAN, std=OPENAI_STD, resize=size, interpolation="bicubic")


@dataclass(frozen=True)
class BoxPair:
    """The two towers of one image-text model."""

    text: Box
    image: ImageBox

    def __iter__(self):  # text_box, image_box = pair
        return iter((self.text, self.image))


@dataclass
class TextTower:
    """How the owner drives a CLIP-style text tower from token embeddings (never shown to users).

    ``run(ids, mask)`` is the library's forward to the projected, pooled output (B, O); it
    looks the ids up in ``embeddings``, whose output the box replaces. ``marker`` is the id
    written at each text's last real token (where the tower pools: its end-of-text token);
    ``filler`` goes on the other real tokens and ``pad`` on padding. ``pad_to_context``: the
    tower only takes sequences of exactly ``context_length`` (open_clip, SigLIP).
    ``fill_padding``: the tower attends to its padding (SigLIP), so padded positions get the
    pad token's embedding whatever the user sent there. ``pooling`` names where it pools (the
    spec's), ``insert_at`` where inserted and entry tokens go (1: after a start token).
    """

    module: nn.Module
    embeddings: nn.Embedding
    tokenize: Callable[[list[str], int], tuple[torch.Tensor, torch.Tensor]]
    run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    context_length: int
    marker: int
    filler: int
    pad: int
    pad_to_context: bool = False
    fill_padding: bool = False
    pooling: str = "eos"
    insert_at: int = 1


def pick_filler(*taken: int) -> int:
    """A small token id that is none of ``taken``: below any end-of-text marker."""
    return next(i for i in range(len(taken) + 1) if i not in taken)


def padded_tokenizer(tokenizer):
    """A Hugging Face tokenizer as ``tokenize(texts, limit) -> (ids, mask)``, padded to the longest."""

    def tokenize(texts: list[str], limit: int):
        enc = tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=limit,
            return_tensors="pt",
            return_attention_mask=True,
        )
        return enc["input_ids"], enc["attention_mask"]  # (B, T), (B, T)

    return tokenize


def hf_text_tower(model: nn.Module, tokenizer) -> TextTower:
    """The text tower of a Hugging Face ``CLIPModel`` (or ``CLIPTextModelWithProjection``)."""
    text_model, projection = model.text_model, model.text_projection
    config = text_model.config
    # transformers pools at the first eos_token_id, or, for configs that still say 2, at the
    # largest id (the end-of-text token is the last of the vocabulary)
    eos = int(config.eos_token_id)
    marker = eos if eos != 2 else int(config.vocab_size) - 1
    filler = pick_filler(marker)

    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return projection(text_model(input_ids=ids, attention_mask=mask).pooler_output)  # (B, O)

    return TextTower(
        module=model,
        embeddings=text_model.embeddings.token_embedding,
        tokenize=padded_tokenizer(tokenizer),
        run=run,
        context_length=int(config.max_position_embeddings),
        marker=marker,
        filler=filler,
        pad=filler,
    )


@contextmanager
def _feed(embeddings: nn.Module, embeds: torch.Tensor):
    """For one call in this thread, the embedding lookup returns ``embeds`` whatever the ids."""

    def hook(module, args, output):
        if output.shape != embeds.shape:
            raise RuntimeError(
                f"the text tower looked up {tuple(output.shape)} embeddings, the box fed {tuple(embeds.shape)}"
            )
        return embeds.to(output.dtype, copy=True)  # a copy: some towers add positions in place (BLIP)

    with removed_after([embeddings.register_forward_hook(this_thread(hook))]):
        yield


class CLIPTextBox(Placed, Box):
    """Owner-side wrapper of a CLIP text tower: token embeddings in, the projected text embedding out.

    Like ``TextEncoderBox``: private and frozen, ``embed`` and ``forward`` from embeddings,
    light-gray with ``entry_points`` (Hugging Face towers; n positions at the tower's
    ``insert_at``, after the start token). The spec's pooling is the tower's: ``"eos"`` for
    CLIP, the state at each text's last token. ``owner_secret`` (a served box's) names entry
    points ``"point.<j>"`` and, unless ``basis=False``, hands out token embeddings in the
    secret's orthogonal basis (``E @ R``, undone inside before the tower and on entry tokens;
    ``encode`` is unchanged), as ``TextEncoderBox`` does; ``digest`` is then the pair's keyed
    one (``pair_digest``).
    ``device`` and ``dtype`` place and cast the whole model the tower belongs to (``digest`` is
    of the weights as given), ``precision`` autocasts its no-gradient calls, as for
    ``TextEncoderBox``.
    """

    def __init__(
        self,
        tower: TextTower,
        *,
        digest: str,
        layers_of: nn.Module | None = None,
        access: str | None = None,
        limits: BoxLimits | None = None,
        entry_points: str | Sequence[int] | None = None,
        entry_tokens_max: int = 8,
        entry_mode: str = "replace",
        owner_secret: str | bytes | None = None,
        basis: bool = True,
        device: str | torch.device | None = None,  # default: where the model is
        dtype: str | torch.dtype | None = None,  # default: the model's
        precision: str = "fp32",  # of the no-gradient calls
    ) -> None:
        self._placement = Placement(device, dtype, precision)  # checked before anything runs
        if not isinstance(basis, bool):
            raise ConfigError(f"basis must be True or False, got {basis!r}")
        access, self.__layers, points = expose(
            layers_of or tower.module,
            entry_points,
            entry_tokens_max,
            access,
            opaque=owner_secret is not None,
            entry_mode=entry_mode,
        )
        tower.module.eval()
        tower.module.requires_grad_(False)  # explicit and idempotent: no weight gradients ever
        self._placement.apply(tower.module)  # the given digest is of the weights before
        self.__tower = tower
        dim = int(tower.embeddings.embedding_dim)
        self.__basis = OwnerBasis(owner_secret, dim) if owner_secret is not None and basis else None
        with torch.no_grad():
            ids, mask = tower.tokenize(["a"], tower.context_length)
            output_dim = self._run(tower.embeddings(ids.to(self.device)), mask.to(self.device)).shape[-1]
        ctx = tower.context_length
        self.spec = BoxSpec(
            modality="text",
            input_kind="token-embeddings",
            input_shape=(None, dim),
            output_dim=int(output_dim),
            access=access,
            model_digest=digest,
            text_max_length=ctx,
            pooling=tower.pooling,
            insert_at=tower.insert_at,
            entry_points=points,
            limits=limits or BoxLimits(max_length=ctx),
            input_basis=self.__basis.id if self.__basis else "",
            entry_mode=entry_mode,
        )

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
        if self.__basis is not None:  # the user's tokens in the model's own coordinates
            embeds = self.__basis.to_model(embeds)
            entry_tokens = {name: self.__basis.to_model(t) for name, t in (entry_tokens or {}).items()}
        return self._forward(embeds, mask, entry_tokens)

    def _embed(self, texts: list[str], max_length: int | None) -> TokenBatch:
        check_texts(texts)
        limit = min(max_length or self.spec.text_max_length, self.spec.text_max_length)
        ids, mask = self.__tower.tokenize(list(texts), limit)
        embeds = self.__tower.embeddings(ids.to(self.device)).detach().float()  # the user's side stays float32
        return TokenBatch(embeds=embeds, mask=mask.to(self.device))  # (B, T, D), (B, T), on the box's device

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        # in the model's own coordinates: encode never takes the round trip through the basis
        batch = self._embed(texts, None)
        self.check_input(batch.embeds, batch.mask)
        return self._forward(batch.embeds, batch.mask)

    def _forward(self, embeds: torch.Tensor, mask: torch.Tensor, entry_tokens=None) -> torch.Tensor:
        """``forward`` from embeddings in the model's own coordinates."""
        back = {"device": embeds.device, "dtype": embeds.dtype}  # the answer lands where the question came from
        place = self._placement
        embeds, mask = place.inward(embeds), mask.to(self.device)
        with place.autocast():
            if entry_tokens:
                self.require("light-gray")
                n = check_entry_tokens(self.spec, entry_tokens, embeds.shape[1])
                entry_tokens = {name: place.inward(t) for name, t in entry_tokens.items()}
                at, n = self.__tower.insert_at, reserved(self.spec.entry_mode, n)
                embeds, mask = reserve(embeds, mask, n, at)  # (B, n + T, D): slots after the start token
                with inject(self.__layers, entry_tokens, n, at, self.spec.entry_mode):
                    return self._run(embeds, mask).to(**back)
            return self._run(embeds, mask).to(**back)

    def _run(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tower = self.__tower
        b, t = mask.shape
        pad_row = tower.embeddings(torch.tensor([tower.pad], device=embeds.device)).detach()  # (1, D)
        if tower.fill_padding:
            embeds = torch.where(mask.bool().unsqueeze(-1), embeds, pad_row.to(embeds.dtype))  # (B, T, D)
        if tower.pad_to_context and t < tower.context_length:
            # open_clip: the causal mask keeps the padding after a text's end from where it pools
            rest = tower.context_length - t
            embeds = torch.cat([embeds, pad_row.expand(b, rest, -1).to(embeds.dtype)], dim=1)  # (B, ctx, D)
            mask = torch.cat([mask, mask.new_zeros(b, rest)], dim=1)  # (B, ctx)
        ids = torch.where(mask.bool(), tower.filler, tower.pad)  # (B, T)
        last = (mask.sum(1) - 1).clamp(min=0)  # the end-of-text position of each text
        ids[torch.arange(b), last] = tower.marker
        with _feed(tower.embeddings, embeds):
            return tower.run(ids, mask)

    def __repr__(self) -> str:  # never show the module
        s = self.spec
        return f"CLIPTextBox(access={s.access!r}, dim={s.output_dim}, digest={s.model_digest})"


MODEL_WIDE = ("device", "dtype")  # the towers share one model: it is placed and cast once


def tower_options(options: Mapping, tower: Mapping | None) -> dict:
    """Options for one tower: those given to both, overridden by that tower's own (``precision``
    may differ per tower; ``device`` and ``dtype`` are the whole model's)."""
    if "basis" in options:
        raise ConfigError(
            "basis is the text tower's (its token embeddings; pixels have none): give it in text_options, "
            "e.g. text_options={'basis': False}"
        )
    own = sorted(set(tower or {}) & set(MODEL_WIDE))
    if own:
        raise ConfigError(
            f"{' and '.join(own)} place the whole model that both towers share: give them once, "
            "for both towers, not in one tower's options"
        )
    return {**options, **(tower or {})}


def pair_digest(model: nn.Module, digest: str | None = None, owner_secret: str | bytes | None = None) -> str:
    """The digest both towers of ``model`` carry: ``digest`` if given, else the whole model's,
    keyed by ``owner_secret`` when the pair is served (``exotune.boxes.basis``)."""
    return digest or model_digest(model, owner_secret)


def clip_boxes(
    model: nn.Module,
    tokenizer,
    *,
    image: ImageSpec | None = None,
    digest: str | None = None,
    text_options: Mapping | None = None,
    image_options: Mapping | None = None,
    owner_secret: str | bytes | None = None,
    **options,
) -> BoxPair:
    """A Hugging Face ``CLIPModel`` as a (text, image) pair of boxes.

    ``options`` (``access``, ``entry_points``, ``entry_tokens_max``, ``entry_mode``, ``limits``,
    ``precision``; ``device`` and ``dtype``, which place the whole model) apply to both towers;
    ``text_options`` / ``image_options`` override them for one. ``image`` describes the
    preprocessing (default: OpenAI CLIP's at the model's input size). ``owner_secret`` (a
    served pair's) keys the shared digest and names entry points ``"point.<j>"``.
    """
    digest = pair_digest(model, digest, owner_secret)
    size = model.vision_model.config.image_size
    return tower_boxes(
        hf_text_tower(model, tokenizer),
        model.text_model,
        model.vision_model,
        image=image or openai_image_spec(size if isinstance(size, int) else min(size)),
        digest=digest,
        owner_secret=owner_secret,
        options=(options, text_options, image_options),
        projection=model.visual_projection,
    )


def tower_boxes(
    text_tower: TextTower,
    text_layers: nn.Module,
    vision_model: nn.Module,
    *,
    image: ImageSpec,
    digest: str,
    owner_secret: str | bytes | None,
    options: tuple[Mapping, Mapping | None, Mapping | None],
    **vision,
) -> BoxPair:
    """The (text, image) pair every image-text family builds: ``text_tower`` (its layers in
    ``text_layers``) and ``vision_model`` (``vision``: its projection, pooling) under one digest;
    ``options`` are those for both towers, then the text tower's and the image tower's own."""
    both, text_options, image_options = options
    text = CLIPTextBox(
        text_tower,
        digest=digest,
        layers_of=text_layers,
        owner_secret=owner_secret,
        **tower_options(both, text_options),
    )
    box = VisionEncoderBox(
        vision_model,
        image=image,
        digest=digest,
        owner_secret=owner_secret,
        **vision,
        **tower_options(both, image_options),
    )
    return BoxPair(text, box)

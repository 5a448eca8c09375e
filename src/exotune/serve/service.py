"""What each route does, without HTTP: validate, run the box, encode the answer.

Every refusal is an ``ApiError`` whose message says what was wrong with the request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace

import torch

from exotune.boxes import wire
from exotune.boxes.base import Box
from exotune.boxes.spec import GRAY, BoxLimits
from exotune.errors import WireError
from exotune.serve.auth import TokenGate
from exotune.serve.config import ServeConfig
from exotune.serve.errors import ApiError
from exotune.serve.handles import HandleError, HandleStore, Pending

PROTOCOL = "exotune-box/1"
ENTRY = "entry."  # wire name of entry tokens: "entry.<entry point name>"
ENCODE_CHUNK = 64  # texts per forward inside /v1/encode and /v1/scores


def dtype_name(t: torch.Tensor) -> str:
    """``int64``, not ``torch.int64``: an answer does not name the library behind the box."""
    return str(t.dtype).removeprefix("torch.")


def served_limits(box: Box, config: ServeConfig) -> BoxLimits:
    own = box.spec.limits
    return BoxLimits(max_batch=min(own.max_batch, config.max_batch or own.max_batch),
                     max_length=min(own.max_length, config.max_length or own.max_length))


class BoxService:
    INPUT = "embeds"  # the wire name of the input that gradients flow to

    def __init__(self, box: Box, config: ServeConfig, gate: TokenGate) -> None:
        self.box, self.config, self.gate = box, config, gate
        self.spec = replace(box.spec, limits=served_limits(box, config))
        self.handles = HandleStore(config.max_handles, config.max_handle_bytes, config.handle_ttl_s)
        self._entries = {e.name: e for e in self.spec.entry_points}
        self._tokenizer_lock = threading.Lock()  # fast tokenizers are not safe across threads
        self._labels: OrderedDict[tuple[str, ...], torch.Tensor] = OrderedDict()  # label set -> (L, O)
        self._labels_lock = threading.Lock()

    def describe(self) -> dict:
        return {
            "protocol": PROTOCOL,
            "spec": self.spec.public(),  # at level black: only what a black-box client needs
            "server": self.config.public(),
            "wire": {"media_type": wire.MEDIA_TYPE, "embeds": "float32", "mask": "int64",
                     "entry_tokens": f"float32, named '{ENTRY}<entry point>'", "outputs": "float32"},
        }

    # -- texts in ---------------------------------------------------------------------------

    def embed(self, body: dict) -> bytes:
        self._require(*GRAY, what="/v1/embed")
        texts = self._texts(body, "texts", self.spec.limits.max_batch)
        max_length = body.get("max_length")
        if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2):
            raise ApiError(422, "invalid", f"max_length must be an integer >= 2 or null, got {max_length!r}")
        max_length = min(max_length or self.spec.limits.max_length, self.spec.limits.max_length)
        with self._tokenizer_lock:
            batch = self.box.embed(texts, max_length=max_length)
        return wire.encode({"embeds": batch.embeds.float(), "mask": batch.mask.long()})

    def encode(self, body: dict) -> bytes:
        texts = self._texts(body, "texts", self.spec.limits.max_batch)
        return wire.encode({"outputs": self._encode(texts)})

    def scores(self, body: dict) -> bytes:
        texts = self._texts(body, "texts", self.spec.limits.max_batch)
        labels = self._texts(body, "labels", self.config.max_labels)
        a = torch.nn.functional.normalize(self._encode(texts), dim=-1)  # (N, O)
        return wire.encode({"scores": a @ self._label_matrix(labels).T})  # (N, L) cosine similarities

    def _label_matrix(self, labels: list[str]) -> torch.Tensor:
        """(L, O) normalised encodings of ``labels``. A client sends the same label set with
        every batch of texts: encoding it once, not per batch, halves a probe's work or more."""
        key = tuple(labels)
        with self._labels_lock:
            cached = self._labels.get(key)
            if cached is not None:
                self._labels.move_to_end(key)
                return cached
        b = torch.nn.functional.normalize(self._encode(labels), dim=-1)
        if self.config.label_cache_size:
            with self._labels_lock:
                self._labels[key] = b
                while len(self._labels) > self.config.label_cache_size:
                    self._labels.popitem(last=False)  # least recently used
        return b

    # -- tensors in -------------------------------------------------------------------------

    def forward(self, caller: str, body: bytes, train: bool) -> bytes:
        self._require(*GRAY, what="/v1/forward")
        keep = train and not self.config.stateless
        if keep:
            self.gate.check_budget(caller)  # no graph is kept for a caller who cannot backward
        tensors = self._decode(body).tensors
        embeds, mask, entries = self._inputs(tensors)
        if not keep:
            with torch.no_grad():
                out = self._run(embeds, mask, entries)
            return wire.encode({"outputs": out}, {"stateless": "1"} if train else None)
        leaves, out, saved = self._run_for_grad(embeds, mask, entries)
        nbytes = saved + sum(t.numel() * t.element_size() for t in (*leaves.values(), out))
        try:
            handle = self.handles.put(Pending(caller, out, leaves, nbytes))
        except HandleError as err:
            raise ApiError(err.status, "limit", str(err)) from None
        return wire.encode({"outputs": out.detach()},
                           {"handle": handle, "expires_in_s": f"{self.config.handle_ttl_s:g}"})

    def backward(self, caller: str, body: bytes) -> bytes:
        self._require(*GRAY, what="/v1/backward")
        msg = self._decode(body)
        tensors = dict(msg.tensors)
        grad = tensors.pop("grad_outputs", None)
        if grad is None:
            raise ApiError(422, "invalid", "backward needs a tensor named 'grad_outputs' (batch, output_dim)")
        self._check_float("grad_outputs", grad)
        if self.config.stateless:
            embeds, mask, entries = self._inputs(tensors)
            self._check_grad_shape(grad, embeds.shape[0])
            self.gate.spend_gradient(caller)
            leaves, out, _ = self._run_for_grad(embeds, mask, entries)
        else:
            if tensors:
                raise ApiError(422, "invalid", f"with a handle, backward takes only 'grad_outputs'; got also {sorted(tensors)}")
            handle = msg.meta.get("handle")
            if not handle:
                raise ApiError(422, "invalid", "backward needs the handle of its forward in the metadata key 'handle'")
            self.gate.check_budget(caller)
            try:
                pending = self.handles.take(handle, caller, check=lambda p: self._check_grad_shape(grad, p.outputs.shape[0]))
            except HandleError as err:
                code = "handle_expired" if err.status == 410 else "handle_unknown"
                raise ApiError(err.status, code, str(err)) from None
            self.gate.spend_gradient(caller)
            leaves, out = pending.leaves, pending.outputs
        names = list(leaves)
        grads = torch.autograd.grad(out, [leaves[n] for n in names], grad, allow_unused=True)
        answer = {n: torch.zeros_like(leaves[n]) if g is None else g.float() for n, g in zip(names, grads, strict=True)}
        if not all(torch.isfinite(g).all() for g in answer.values()):
            raise ApiError(422, "invalid", "the gradients overflowed to NaN or infinity; scale 'grad_outputs' down")
        return wire.encode(answer)

    # -- helpers ----------------------------------------------------------------------------

    def _require(self, *levels: str, what: str) -> None:
        if self.spec.access not in levels:
            raise ApiError(403, "access", f"{what} is not available: this box is served at access level "
                                          f"{self.spec.access!r}; it needs one of {levels}")

    def _texts(self, body: dict, key: str, limit: int) -> list[str]:
        texts = body.get(key)
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(422, "invalid", f"'{key}' must be a non-empty list of strings")
        if len(texts) > limit:
            raise ApiError(422, "limit", f"'{key}' holds {len(texts)} texts; at most {limit} per call")
        longest = max(len(t) for t in texts)
        if longest > self.config.max_text_chars:
            raise ApiError(422, "limit", f"a text in '{key}' has {longest} characters; at most {self.config.max_text_chars}")
        for i, t in enumerate(texts):
            try:
                t.encode("utf-8")  # JSON may carry lone surrogates (\ud800), which no tokenizer takes
            except UnicodeEncodeError:
                raise ApiError(422, "invalid", f"text {i} in '{key}' is not valid Unicode (a lone surrogate)") from None
        return texts

    def _encode(self, texts: list[str]) -> torch.Tensor:
        # in chunks: one forward over max_batch long texts would hold gigabytes of attention scores
        with self._tokenizer_lock:
            return self.box.encode(texts, batch_size=min(ENCODE_CHUNK, self.spec.limits.max_batch)).float()

    def _decode(self, body: bytes) -> wire.Message:
        try:
            return wire.decode(body, self.config.max_body_bytes)
        except WireError as err:
            raise ApiError(400, "bad_tensors", str(err)) from None

    def _check_float(self, name: str, t: torch.Tensor) -> None:
        if t.dtype != torch.float32:
            raise ApiError(422, "invalid", f"'{name}' must be float32, got {dtype_name(t)}")
        if not torch.isfinite(t).all():
            raise ApiError(422, "invalid", f"'{name}' holds NaN or infinite values")

    def _check_grad_shape(self, grad: torch.Tensor, batch: int) -> None:
        want = (batch, self.spec.output_dim)
        if tuple(grad.shape) != want:
            raise ApiError(422, "invalid", f"'grad_outputs' must have shape {want}, got {tuple(grad.shape)}")

    def _inputs(self, tensors: dict[str, torch.Tensor]):
        tensors = dict(tensors)
        embeds, mask = tensors.pop("embeds", None), tensors.pop("mask", None)
        if embeds is None or mask is None:
            raise ApiError(422, "invalid", "the request needs tensors 'embeds' (batch, length, dim) and 'mask' (batch, length)")
        unknown = sorted(n for n in tensors if not n.startswith(ENTRY))
        if unknown:
            raise ApiError(422, "invalid", f"unexpected tensors {unknown}")
        self._check_float("embeds", embeds)
        if mask.dtype != torch.int64:
            raise ApiError(422, "invalid", f"'mask' must be int64, got {dtype_name(mask)}")
        lim, dim = self.spec.limits, self.spec.input_dim
        if embeds.ndim != 3 or embeds.shape[-1] != dim:
            raise ApiError(422, "invalid", f"'embeds' must have shape (batch, length, {dim}), got {tuple(embeds.shape)}")
        if tuple(mask.shape) != tuple(embeds.shape[:2]):
            raise ApiError(422, "invalid", f"'mask' must have shape {tuple(embeds.shape[:2])}, got {tuple(mask.shape)}")
        b, t = embeds.shape[:2]
        if not 1 <= b <= lim.max_batch:
            raise ApiError(422, "limit", f"batch of {b} is outside 1..{lim.max_batch} (the box's max_batch)")
        if not 1 <= t <= lim.max_length:
            raise ApiError(422, "limit", f"sequence of {t} tokens is outside 1..{lim.max_length} (the box's max_length)")
        if ((mask != 0) & (mask != 1)).any():
            raise ApiError(422, "invalid", "'mask' must hold only 0 and 1")
        if not mask.any(dim=1).all():
            raise ApiError(422, "invalid", "every row of 'mask' needs at least one 1 (a sequence with no token)")
        return embeds, mask, self._entry_tokens(tensors)

    def _entry_tokens(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The entry tokens among ``tensors`` (named ``entry.<point>``; nothing else left there),
        checked against the exposed entry points: name -> (n, entry_dim)."""
        dim = self.spec.entry_dim
        entries = {name[len(ENTRY):]: t for name, t in tensors.items()}
        if entries:
            self._require("light-gray", what="entry tokens")
        for name, tok in entries.items():
            point = self._entries.get(name)
            if point is None:
                raise ApiError(422, "invalid", f"unknown entry point {name!r}; the box exposes {sorted(self._entries)}")
            self._check_float(ENTRY + name, tok)
            if tok.ndim != 2 or tok.shape[-1] != dim or not 1 <= tok.shape[0] <= point.max_tokens:
                raise ApiError(422, "invalid", f"entry tokens for {name!r} must have shape (n, {dim}) with "
                                               f"1 <= n <= {point.max_tokens}, got {tuple(tok.shape)}")
        return entries

    def _run(self, embeds, mask, entries) -> torch.Tensor:
        out = self.box.forward(embeds, mask, entries or None)
        if out.ndim != 2 or out.shape != (embeds.shape[0], self.spec.output_dim):
            raise RuntimeError(f"box returned outputs of shape {tuple(out.shape)}")  # a server bug: 500
        if not torch.isfinite(out).all():  # finite inputs far out of range overflow inside the box
            raise ApiError(422, "invalid", "the inputs drive the box to NaN or infinite outputs; "
                                           "keep 'embeds' (and entry tokens) in the range embed returns")
        return out.float()

    def _run_for_grad(self, embeds, mask, entries):
        """Forward with a graph; returns (leaves, outputs, bytes the graph saved for backward)."""
        leaves = {self.INPUT: embeds.requires_grad_(True)}
        leaves.update({ENTRY + n: t.requires_grad_(True) for n, t in entries.items()})
        saved = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.requires_grad:  # activations; frozen weights do not require grad
                saved[0] += t.numel() * t.element_size()
            # detached: an output saved for its own backward, kept as itself, would hold its
            # graph in a reference cycle, and a graph never backpropagated would never be freed
            return t.detach()

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            ent = {n[len(ENTRY):]: t for n, t in leaves.items() if n.startswith(ENTRY)}
            out = self._run(leaves[self.INPUT], mask, ent)
        return leaves, out, saved[0]

"""What each route does, without HTTP: validate, run the box, encode the answer.

Every refusal is an ``ApiError`` whose message says what was wrong with the request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace
from functools import partial

import torch

from exotune.boxes import wire
from exotune.boxes.base import Box
from exotune.boxes.spec import GRAY, BoxLimits
from exotune.errors import ConfigError, WireError
from exotune.serve.auth import TokenGate
from exotune.serve.batched_calls import BatchedCalls, call_sizes
from exotune.serve.batcher import Batcher, Job
from exotune.serve.config import ServeConfig
from exotune.serve.errors import ApiError
from exotune.serve.fair import FairScheduler
from exotune.serve.graphs import ENTRY, GraphCost, build
from exotune.serve.handles import HandleError, HandleStore, Pending

PROTOCOL = "exotune-box/1"
FLOAT = 4  # bytes of a float32 in an answer


def token_bound(text: str, max_length: int) -> int:
    """At most this many tokens, without tokenizing: a token holds at least one UTF-8 byte,
    plus the two special tokens around a text, and truncation stops at ``max_length``."""
    return min(max_length, len(text.encode("utf-8")) + 2)


def dtype_name(t: torch.Tensor) -> str:
    """``int64``, not ``torch.int64``: an answer does not name the library behind the box."""
    return str(t.dtype).removeprefix("torch.")


def served_limits(box: Box, config: ServeConfig) -> BoxLimits:
    own = box.spec.limits
    return BoxLimits(
        max_batch=min(own.max_batch, config.max_batch or own.max_batch),
        max_length=min(own.max_length, config.max_length or own.max_length),
    )


class BoxService(BatchedCalls):
    input_name = "embeds"  # the wire name of the input and of its gradient

    def __init__(self, box: Box, config: ServeConfig, gate: TokenGate) -> None:
        if getattr(box, "training_dropout", False):
            # a served training call's outputs and its backward (kept graph, or recomputed)
            # would need one dropout mask across requests and recomputes: not offered yet
            raise ConfigError("a box with training_dropout is for local use; serve it without the option")
        self.spec = replace(box.spec, limits=served_limits(box, config))
        lim = self.spec.limits
        self.chunk_rows, unit = call_sizes(getattr(box, "device", None), lim.max_batch, config.fair_unit_tokens)
        config = replace(config, fair_unit_tokens=unit)
        self.box, self.config, self.gate = box, config, gate
        self.max_tokens = config.max_tokens_per_request or lim.max_batch * lim.max_length
        self.handles = HandleStore(config.max_handles, config.max_handle_bytes, config.handle_ttl_s)
        self.scheduler = FairScheduler(config.box_workers)
        self.batcher = Batcher(self.scheduler, config.batch_wait_ms / 1000, lim.max_batch, config.fair_unit_tokens)
        self._cost = GraphCost()
        self._entries = {e.name: e for e in self.spec.entry_points}
        self._labels: OrderedDict[tuple[str, ...], torch.Tensor] = OrderedDict()  # label set -> (L, O)
        self._labels_lock = threading.Lock()

    def describe(self) -> dict:
        return {
            "protocol": PROTOCOL,
            "spec": self.spec.public(),  # at level black: only what a black-box client needs
            "server": self._server_limits(),
            "wire": {
                "media_type": wire.MEDIA_TYPE,
                "embeds": "float32",
                "mask": "int64",
                "entry_tokens": f"float32, named '{ENTRY}<entry point>'",
                "outputs": "float32",
            },
        }

    def _server_limits(self) -> dict:
        limits = {**self.config.public(), "fair_unit_tokens": self.config.fair_unit_tokens}
        # the default work bound is max_batch x the model's max length: at level black, which
        # hides the length, it is shown only when the owner set it (a request of at most
        # max_batch texts always fits the default)
        if self.spec.access != "black" or self.config.max_tokens_per_request is not None:
            limits["max_tokens_per_request"] = self.max_tokens
        return limits

    # -- texts in ---------------------------------------------------------------------------

    def embed(self, caller: str, body: dict) -> bytes:
        self._require(*GRAY, what="/v1/embed")
        max_length = body.get("max_length")
        if max_length is not None and (
            not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2
        ):
            raise ApiError(422, "invalid", f"max_length must be an integer >= 2 or null, got {max_length!r}")
        max_length = min(max_length or self.spec.limits.max_length, self.spec.limits.max_length)
        texts = self._texts(body, "texts", max_length)
        longest = max(token_bound(t, min(max_length, self._text_length)) for t in texts)
        self._check_answer(
            "/v1/embed",
            len(texts) * longest * (self.spec.input_dim * FLOAT + 8),
            "send fewer texts, or a smaller max_length",
        )
        # tokenizing is cheap next to a forward: one unit
        embeds, mask = self.batcher.run(
            ("embed", max_length), Job(caller, texts, len(texts), 0), partial(self._embed_call, max_length)
        )
        return wire.encode({"embeds": embeds.float(), "mask": mask.long()})

    def encode_texts(self, caller: str, texts) -> torch.Tensor:
        """(N, O) float32 outputs of ``texts``, checked as ``/v1/encode`` checks them."""
        texts = self._texts({"texts": texts}, "texts")
        self._check_answer("/v1/encode", len(texts) * self.spec.output_dim * FLOAT, "send fewer texts")
        return self._encode(caller, texts)

    def encode(self, caller: str, body: dict) -> bytes:
        return wire.encode({"outputs": self.encode_texts(caller, body.get("texts"))})

    def scores(self, caller: str, body: dict) -> bytes:
        texts = self._texts(body, "texts")
        labels = self._texts(body, "labels")  # the same bound as texts: they are encoded alike
        self._check_answer("/v1/scores", len(texts) * len(labels) * FLOAT, "send fewer texts or labels")
        a = torch.nn.functional.normalize(self._encode(caller, texts), dim=-1)  # (N, O)
        return wire.encode({"scores": a @ self._label_matrix(caller, labels).T})  # (N, L) cosine similarities

    def _label_matrix(self, caller: str, labels: list[str]) -> torch.Tensor:
        """(L, O) normalised encodings of ``labels``. A client sends the same label set with
        every batch of texts: encoding it once, not per batch, halves a probe's work or more."""
        key = tuple(labels)
        with self._labels_lock:
            cached = self._labels.get(key)
            if cached is not None:
                self._labels.move_to_end(key)
                return cached
        b = torch.nn.functional.normalize(self._encode(caller, labels), dim=-1)
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
            key = None if entries else "forward"  # entry tokens are one request's own: it runs alone
            outs = [
                self.batcher.run(key, job, self._forward_call)
                for job in self._jobs(caller, embeds, entries, lambda s: (embeds[s], mask[s], entries))
            ]
            return wire.encode({"outputs": torch.cat(outs)}, {"stateless": "1"} if train else None)
        # A training forward that keeps its graph runs alone: a graph built for several
        # requests would be freed only when the last of them sent its backward (or expired),
        # holding the others' memory and handle budget meanwhile, and none could be refused
        # or retried alone; its backward, one caller's, needs only its own rows anyway.
        try:
            reservation = self.handles.reserve(self.estimate_graph_bytes(caller, embeds, entries))
        except HandleError as err:
            raise ApiError(
                err.status,
                "limit" if err.status == 413 else "busy",
                str(err),
                retry_after=1.0 if err.status == 503 else None,
            ) from None
        try:
            graph = self._graph(caller, embeds, mask, entries)
        except BaseException:
            self.handles.release(reservation)
            raise
        handle = self.handles.put(Pending(caller, graph, graph.nbytes()), reservation)
        return wire.encode(
            {"outputs": graph.outputs()}, {"handle": handle, "expires_in_s": f"{self.config.handle_ttl_s:g}"}
        )

    def backward(self, caller: str, body: bytes) -> bytes:
        self._require(*GRAY, what="/v1/backward")
        msg = self._decode(body)
        tensors = dict(msg.tensors)
        grad = tensors.pop("grad_outputs", None)
        if grad is None:
            raise ApiError(422, "invalid", "backward needs a tensor named 'grad_outputs' (batch, output_dim)")
        self._check_float("grad_outputs", grad)
        handle, pending, graph = None, None, None
        if self.config.stateless:
            embeds, mask, entries = self._inputs(tensors)
            self._check_grad_shape(grad, embeds.shape[0])
            self.gate.spend_gradient(caller)
            try:
                if entries:  # their gradients add up over the request's units: it runs alone
                    graph = self._graph(caller, embeds, mask, entries)
                else:  # each unit a forward+backward, gathered with other requests' units
                    parts = [
                        self.batcher.run("backward", job, self._backward_call)
                        for job in self._jobs(caller, embeds, {}, lambda s: (embeds[s], mask[s], grad[s]))
                    ]
                    answer = {self.input_name: torch.cat(parts)}
            except BaseException:
                self.gate.refund_gradient(caller)
                raise
        else:
            if tensors:
                raise ApiError(
                    422, "invalid", f"with a handle, backward takes only 'grad_outputs'; got also {sorted(tensors)}"
                )
            handle = msg.meta.get("handle")
            if not handle:
                raise ApiError(422, "invalid", "backward needs the handle of its forward in the metadata key 'handle'")
            self.gate.spend_gradient(caller)
            try:
                pending = self.handles.take(handle, caller, check=lambda p: self._check_grad_shape(grad, p.graph.rows))
            except (HandleError, ApiError) as err:
                self.gate.refund_gradient(caller)
                if isinstance(err, ApiError):
                    raise
                code = "handle_expired" if err.status == 410 else "handle_unknown"
                raise ApiError(err.status, code, str(err)) from None
            graph = pending.graph
        try:
            if graph is not None:
                answer = graph.grads(grad, partial(self.scheduler.turn, caller))
        except BaseException:
            self._refuse_backward(caller, handle, pending)
            raise
        if not all(torch.isfinite(g).all() for g in answer.values()):
            self._refuse_backward(caller, handle, pending)
            kept = (
                " with the same handle: it is kept, and this call did not count against your gradient budget"
                if handle
                else "; this call did not count against your gradient budget"
            )
            raise ApiError(
                422,
                "invalid",
                "the gradients overflowed to NaN or infinity: 'grad_outputs' holds values "
                f"up to {float(grad.abs().max()):.3g}; scale it down (say by 1e-3) "
                f"and send it again{kept}",
            )
        return wire.encode(answer)

    def _refuse_backward(self, caller: str, handle: str | None, pending: Pending | None) -> None:
        self.gate.refund_gradient(caller)
        if handle is not None:
            self.handles.restore(handle, pending)

    # -- helpers ----------------------------------------------------------------------------

    def _require(self, *levels: str, what: str) -> None:
        if self.spec.access not in levels:
            raise ApiError(
                403,
                "access",
                f"{what} is not available: this box is served at access level "
                f"{self.spec.access!r}; it needs one of {levels}",
            )

    @property
    def _text_length(self) -> int:
        return min(self.spec.limits.max_length, self.spec.text_max_length or self.spec.limits.max_length)

    def _texts(self, body: dict, key: str, max_length: int | None = None) -> list[str]:
        """``body[key]`` checked: a list of strings, at most max_batch of them, none too long,
        and at most ``max_tokens_per_request`` tokens in all (counted before tokenizing)."""
        texts = body.get(key)
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(422, "invalid", f"'{key}' must be a non-empty list of strings")
        limit = self.spec.limits.max_batch
        if len(texts) > limit:
            raise ApiError(422, "limit", f"'{key}' holds {len(texts)} texts; at most {limit} per call")
        longest = max(len(t) for t in texts)
        if longest > self.config.max_text_chars:
            raise ApiError(
                422, "limit", f"a text in '{key}' has {longest} characters; at most {self.config.max_text_chars}"
            )
        for i, t in enumerate(texts):
            try:
                t.encode("utf-8")  # JSON may carry lone surrogates (\ud800), which no tokenizer takes
            except UnicodeEncodeError:
                raise ApiError(422, "invalid", f"text {i} in '{key}' is not valid Unicode (a lone surrogate)") from None
        length = min(max_length or self._text_length, self._text_length)
        work = sum(token_bound(t, length) for t in texts)
        if work > self.max_tokens:
            raise ApiError(
                422,
                "limit",
                f"'{key}' holds up to {work} tokens (counted as UTF-8 bytes + 2 per text); "
                f"at most {self.max_tokens} per call: send fewer or shorter texts",
            )
        return texts

    def _encode(self, caller: str, texts: list[str]) -> torch.Tensor:
        """(N, O) outputs, in units of at most ``fair_unit_tokens`` tokens (at least one text),
        each its own turn on the box; texts of like length share a unit."""
        length = self._text_length
        order = sorted(range(len(texts)), key=lambda i: token_bound(texts[i], length))
        units, unit, work = [], [], 0
        for i in order:
            cost = token_bound(texts[i], length)
            if unit and work + cost > self.config.fair_unit_tokens:
                units.append(unit)
                unit, work = [], 0
            unit.append(i)
            work += cost
        units.append(unit)
        out = torch.zeros(len(texts), self.spec.output_dim)
        for n, unit in enumerate(units if len(units) > 1 else [list(range(len(texts)))]):  # one unit: as sent
            part = [texts[i] for i in unit]
            job = Job(caller, part, len(part), sum(token_bound(t, length) for t in part), first=n == 0)
            out[torch.as_tensor(unit)] = self.batcher.run("encode", job, self._encode_call)
        return out

    def _check_answer(self, route: str, nbytes: int, advice: str) -> None:
        if nbytes > self.config.max_response_bytes:
            raise ApiError(
                422,
                "limit",
                f"{route} would answer about {nbytes} bytes; at most "
                f"{self.config.max_response_bytes} per call: {advice}",
            )

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
            raise ApiError(
                422, "invalid", "the request needs tensors 'embeds' (batch, length, dim) and 'mask' (batch, length)"
            )
        unknown = sorted(n for n in tensors if not n.startswith(ENTRY))
        if unknown:
            raise ApiError(422, "invalid", f"unexpected tensors {unknown}")
        self._check_float("embeds", embeds)
        if mask.dtype != torch.int64:
            raise ApiError(422, "invalid", f"'mask' must be int64, got {dtype_name(mask)}")
        lim, dim = self.spec.limits, self.spec.input_dim
        if embeds.ndim != 3 or embeds.shape[-1] != dim:
            raise ApiError(
                422, "invalid", f"'embeds' must have shape (batch, length, {dim}), got {tuple(embeds.shape)}"
            )
        if tuple(mask.shape) != tuple(embeds.shape[:2]):
            raise ApiError(422, "invalid", f"'mask' must have shape {tuple(embeds.shape[:2])}, got {tuple(mask.shape)}")
        b, t = embeds.shape[:2]
        if not 1 <= b <= lim.max_batch:
            raise ApiError(422, "limit", f"batch of {b} is outside 1..{lim.max_batch} (the box's max_batch)")
        if not 1 <= t <= lim.max_length:
            raise ApiError(
                422, "limit", f"sequence of {t} tokens is outside 1..{lim.max_length} (the box's max_length)"
            )
        if ((mask != 0) & (mask != 1)).any():
            raise ApiError(422, "invalid", "'mask' must hold only 0 and 1")
        if not mask.any(dim=1).all():
            raise ApiError(422, "invalid", "every row of 'mask' needs at least one 1 (a sequence with no token)")
        return embeds, mask, self._entry_tokens(tensors)

    def _entry_tokens(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The entry tokens among ``tensors`` (named ``entry.<point>``; nothing else left there),
        checked against the exposed entry points: name -> (n, entry_dim)."""
        dim = self.spec.entry_dim
        entries = {name[len(ENTRY) :]: t for name, t in tensors.items()}
        if entries:
            self._require("light-gray", what="entry tokens")
        for name, tok in entries.items():
            point = self._entries.get(name)
            if point is None:
                raise ApiError(422, "invalid", f"unknown entry point {name!r}; the box exposes {sorted(self._entries)}")
            self._check_float(ENTRY + name, tok)
            if tok.ndim != 2 or tok.shape[-1] != dim or not 1 <= tok.shape[0] <= point.max_tokens:
                raise ApiError(
                    422,
                    "invalid",
                    f"entry tokens for {name!r} must have shape (n, {dim}) with "
                    f"1 <= n <= {point.max_tokens}, got {tuple(tok.shape)}",
                )
        return entries

    def _run(self, embeds, mask, entries) -> torch.Tensor:
        out = self.box.forward(embeds, mask, entries or None)
        if out.ndim != 2 or out.shape != (embeds.shape[0], self.spec.output_dim):
            raise RuntimeError(f"box returned outputs of shape {tuple(out.shape)}")  # a server bug: 500
        if not torch.isfinite(out).all():  # finite inputs far out of range overflow inside the box
            raise ApiError(
                422,
                "invalid",
                "the inputs drive the box to NaN or infinite outputs; "
                "keep 'embeds' (and entry tokens) in the range embed returns",
            )
        return out.float()

    def _jobs(self, caller: str, embeds: torch.Tensor, entries: dict, payload) -> list[Job]:
        """One request's units of work: ``payload(rows)`` for each slice of ``_rows_per_unit`` rows
        (a row weighing its share of a fair unit: its tokens, or an image's)."""
        rows, total = self._rows_per_unit(embeds, entries), embeds.shape[0]
        weight = max(1, self.config.fair_unit_tokens // rows)
        return [
            Job(caller, payload(slice(i, i + rows)), min(rows, total - i), min(rows, total - i) * weight, first=i == 0)
            for i in range(0, total, rows)
        ]

    def _rows_per_unit(self, embeds: torch.Tensor, entries: dict) -> int:
        length = embeds.shape[1] + sum(t.shape[0] for t in entries.values())
        return max(1, self.config.fair_unit_tokens // length)

    def _graph(self, caller: str, embeds, mask, entries):
        return build(
            self._run, embeds, mask, entries, self._rows_per_unit(embeds, entries), partial(self.scheduler.turn, caller)
        )

    def estimate_graph_bytes(self, caller: str, embeds, entries) -> int:
        """What the graph of this forward will hold, estimated before it is built."""
        if self._cost.coef is None:
            self._cost.fit(
                lambda e, m, _: self._run(e, m, {}),
                self.spec.input_dim,
                self.spec.limits.max_length,
                partial(self.scheduler.turn, caller),
            )
        length = embeds.shape[1] + sum(t.shape[0] for t in entries.values())
        return self._cost.estimate(
            embeds.shape[0], length, self.spec.input_dim, self.spec.output_dim, self._rows_per_unit(embeds, entries)
        )

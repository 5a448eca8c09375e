"""A box served over HTTP (``exotune serve``), used exactly like a local one.

``forward`` is differentiable: when a gradient is needed it asks the server to keep the graph
(``/v1/forward?train=true`` returns a handle) and its backward sends the gradient of the
outputs with that handle. If the server has dropped the handle (expired, evicted, restarted)
the forward is replayed once. Needs the 'serve' extra (httpx), imported only when used.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.autograd.function import once_differentiable

from exotune.boxes import wire
from exotune.boxes.base import Box, TokenBatch
from exotune.boxes.http import TOKEN_ENV, Channel, RemoteConfig, check_texts, get
from exotune.boxes.served import ServedCalls, entry_inputs, sorted_entries, wire_name
from exotune.boxes.spec import GRAY
from exotune.errors import ConfigError, RemoteError

__all__ = ["TOKEN_ENV", "RemoteBox", "RemoteConfig", "connect"]


class _RemoteForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, box, mask, names, embeds, *entries):
        out, handle = box._forward_call(embeds, mask, names, entries, train=True)
        ctx.box, ctx.names, ctx.handle = box, names, handle
        ctx.save_for_backward(embeds, mask, *entries)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        embeds, mask, *entries = ctx.saved_tensors
        grads = ctx.box._backward_call(ctx.handle, grad_out, embeds, mask, ctx.names, entries)
        return (None, None, None, grads["embeds"], *(grads[wire_name(n)] for n in ctx.names))


class RemoteBox(ServedCalls, Box):
    """Client of a served box. ``stats`` counts requests, retries and forward replays."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        config: RemoteConfig | None = None,
        client=None,
        channel: Channel | None = None,
    ) -> None:
        self._http = channel if channel is not None else Channel(url, token, config=config, client=client)
        self.url, self.config, self.stats = self._http.url, self._http.config, self._http.stats
        self.spec, self.server = self._http.spec, self._http.server
        self._root = self.url  # the server's default box: its prompts are under /prompt/<name>

    def prompted(self, name: str) -> RemoteBox:
        """The same served model with its owner's prompt ``name`` before every text (applied on
        the owner's side, as ``TextEncoderBox.prompted``)."""
        if name not in self.spec.prompts:
            raise ConfigError(f"this box has no prompt {name!r}; it has {sorted(self.spec.prompts) or 'none'}")
        other = RemoteBox(self._root, channel=self._http.at(f"{self._root}/prompt/{name}"))
        other._root = self._root
        return other

    # -- the box interface ------------------------------------------------------------------

    def embed(self, texts: list[str], max_length: int | None = None) -> TokenBatch:
        self.require(*GRAY)
        texts = check_texts(texts)
        msg = self._tensors("POST", "/v1/embed", json={"texts": texts, "max_length": max_length})
        return TokenBatch(embeds=self._get(msg, "embeds"), mask=self._get(msg, "mask"))

    def forward(
        self, embeds: torch.Tensor, mask: torch.Tensor, entry_tokens: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        self.require(*GRAY)
        self.check_input(embeds, mask)
        if entry_tokens:
            self.require("light-gray")
        names, entries = sorted_entries(entry_tokens)
        need_grad = torch.is_grad_enabled() and (embeds.requires_grad or any(e.requires_grad for e in entries))
        if not need_grad:
            return self._forward_call(embeds, mask, names, entries, train=False)[0]
        return _RemoteForward.apply(self, mask, names, embeds, *entries)

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        msg = self._tensors("POST", "/v1/encode", json={"texts": check_texts(texts)})
        return self._get(msg, "outputs")

    @torch.no_grad()
    def scores(self, texts: list[str], labels: list[str]) -> torch.Tensor:
        """Cosine similarity (N, L) of each text's output with each label text's: zero-shot."""
        texts, labels = check_texts(texts), check_texts(labels)
        # labels obey the same per-call bound as texts: more than max_batch go in column blocks
        outs = [
            torch.cat(
                [
                    self._get(self._tensors("POST", "/v1/scores", json={"texts": part, "labels": block}), "scores")
                    for block in self.spec.limits.batches(labels)
                ],
                dim=1,
            )
            for part in self.spec.limits.batches(texts)
        ]
        return torch.cat(outs) if outs else torch.zeros(0, len(labels))

    def __repr__(self) -> str:  # never show the token
        return f"RemoteBox({self.url!r}, access={self.spec.access!r}, dim={self.spec.output_dim})"

    # -- the two gradient calls (``ServedCalls``) ------------------------------------------

    @staticmethod
    def _inputs(embeds, mask, names, entries) -> dict[str, torch.Tensor]:
        return {"embeds": embeds.detach().float(), "mask": mask.detach().long(), **entry_inputs(names, entries)}

    def _forward_call(self, embeds, mask, names, entries, train: bool):
        return self._forward_inputs(self._inputs(embeds, mask, names, entries), embeds, train)

    def _backward_call(self, handle, grad_out, embeds, mask, names, entries) -> dict[str, torch.Tensor]:
        msg = self._backward_inputs(handle, grad_out, self._inputs(embeds, mask, names, entries), embeds)
        return self._read_grads(
            msg, {"embeds": embeds, **{wire_name(n): e for n, e in zip(names, entries, strict=True)}}
        )

    # -- HTTP -------------------------------------------------------------------------------

    def _tensors(self, method: str, path: str, **kwargs) -> wire.Message:
        return self._http.message(method, path, **kwargs)

    def _get(self, msg: wire.Message, name: str, shape: tuple | None = None) -> torch.Tensor:
        return get(msg, name, shape)


def connect(url: str, token: str | None = None, *, config: RemoteConfig | None = None, client=None):
    """Open a served box: ``exotune.connect("http://127.0.0.1:8000", token=...)``: a text box
    (``RemoteBox``), an image box (``RemoteImageBox``), or, from a server of a CLIP model's two
    towers, both as a ``BoxPair`` (``text_box, image_box = connect(url)``).

    Without ``token``, the environment variable ``EXOTUNE_TOKEN`` is used.
    """
    channel = Channel(url, token, config=config, client=client)
    if channel.towers is not None:
        from exotune.boxes.clip import BoxPair

        if sorted(channel.towers) != ["image", "text"]:
            raise RemoteError(
                f"{channel.url} serves the towers {channel.towers}; connect to one: {channel.url}/<tower>"
            )
        text, image = (
            connect(f"{channel.url}/{name}", token, config=config, client=client) for name in ("text", "image")
        )
        return BoxPair(text, image)
    if channel.spec.modality == "image":
        from exotune.boxes.remote_image import RemoteImageBox

        return RemoteImageBox(channel)
    return RemoteBox(channel.url, channel=channel)

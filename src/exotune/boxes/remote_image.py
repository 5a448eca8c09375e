"""An image box served over HTTP (``exotune serve --kind image`` or a CLIP model's ``/image``
tower), used exactly like a local one.

Images are preprocessed here as the owner's spec says (``spec.image``: resize, crop,
normalisation; the box's ``preprocess``), and the pixels travel as float32 safetensors.
``forward`` is differentiable with respect to the pixels and entry tokens: as for texts, the
server keeps the graph under a handle (or, stateless, gets the pixels again with the gradient);
an expired handle is replayed once.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.autograd.function import once_differentiable

from exotune.boxes import wire
from exotune.boxes.http import Channel, get
from exotune.boxes.image import ImageBox
from exotune.boxes.spec import GRAY
from exotune.errors import HandleExpiredError

PIXELS = "pixels"
ENTRY = "entry."


class _RemotePixels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, box, names, pixels, *entries):
        out, handle = box._forward_call(pixels, names, entries, train=True)
        ctx.box, ctx.names, ctx.handle = box, names, handle
        ctx.save_for_backward(pixels, *entries)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        pixels, *entries = ctx.saved_tensors
        grads = ctx.box._backward_call(ctx.handle, grad_out, pixels, ctx.names, entries)
        return (None, None, grads[PIXELS], *(grads[ENTRY + n] for n in ctx.names))


class RemoteImageBox(ImageBox):
    """Client of a served image box, over an open ``Channel``. ``stats`` counts requests,
    retries and forward replays."""

    def __init__(self, channel: Channel) -> None:
        self._http = channel
        self.url, self.config, self.stats = channel.url, channel.config, channel.stats
        self.spec, self.server = channel.spec, channel.server

    def forward(self, pixels: torch.Tensor, entry_tokens: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        self.require(*GRAY)
        self.check_pixels(pixels)
        if entry_tokens:
            self.require("light-gray")
        names = tuple(sorted(entry_tokens or {}))
        entries = [entry_tokens[n] for n in names] if names else []
        need_grad = torch.is_grad_enabled() and (pixels.requires_grad or any(e.requires_grad for e in entries))
        if not need_grad:
            return self._forward_call(pixels, names, entries, train=False)[0]
        return _RemotePixels.apply(self, names, pixels, *entries)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteImageBox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:  # never show the token
        return f"RemoteImageBox({self.url!r}, access={self.spec.access!r}, input={self.spec.input_shape})"

    # -- the two gradient calls -------------------------------------------------------------

    def _inputs(self, pixels, names, entries) -> dict[str, torch.Tensor]:
        tensors = {PIXELS: pixels.detach().float().contiguous()}
        tensors.update({ENTRY + n: e.detach().float() for n, e in zip(names, entries, strict=True)})
        return tensors

    def _forward_call(self, pixels, names, entries, train: bool):
        msg = self._http.message("POST", "/v1/forward", content=wire.encode(self._inputs(pixels, names, entries)),
                                 params={"train": "true"} if train else None)
        out = get(msg, "outputs", (pixels.shape[0], self.spec.output_dim))
        return out.to(device=pixels.device, dtype=pixels.dtype), msg.meta.get("handle")

    def _backward_call(self, handle, grad_out, pixels, names, entries) -> dict[str, torch.Tensor]:
        grad = {"grad_outputs": grad_out.detach().float()}
        if handle is None:  # a stateless server: send the inputs again, it recomputes
            msg = self._post_backward({**grad, **self._inputs(pixels, names, entries)}, None)
        else:
            try:
                msg = self._post_backward(grad, handle)
            except HandleExpiredError:  # expired, evicted or the server restarted: replay once
                self.stats["replays"] += 1
                _, handle = self._forward_call(pixels, names, entries, train=True)
                if handle is None:
                    return self._backward_call(None, grad_out, pixels, names, entries)
                msg = self._post_backward(grad, handle)
        grads = {PIXELS: get(msg, PIXELS, tuple(pixels.shape)).to(pixels.device, pixels.dtype)}
        for n, e in zip(names, entries, strict=True):
            grads[ENTRY + n] = get(msg, ENTRY + n, tuple(e.shape)).to(e.device, e.dtype)
        return grads

    def _post_backward(self, tensors: dict[str, torch.Tensor], handle: str | None) -> wire.Message:
        meta = {"handle": handle} if handle is not None else None
        return self._http.message("POST", "/v1/backward", content=wire.encode(tensors, meta))

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

from exotune.boxes.http import Channel
from exotune.boxes.image import ImageBox
from exotune.boxes.served import ServedCalls, entry_inputs, sorted_entries, wire_name
from exotune.boxes.spec import GRAY

PIXELS = "pixels"


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
        return (None, None, grads[PIXELS], *(grads[wire_name(n)] for n in ctx.names))


class RemoteImageBox(ServedCalls, ImageBox):
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
        names, entries = sorted_entries(entry_tokens)
        need_grad = torch.is_grad_enabled() and (pixels.requires_grad or any(e.requires_grad for e in entries))
        if not need_grad:
            return self._forward_call(pixels, names, entries, train=False)[0]
        return _RemotePixels.apply(self, names, pixels, *entries)

    def __repr__(self) -> str:  # never show the token
        return f"RemoteImageBox({self.url!r}, access={self.spec.access!r}, input={self.spec.input_shape})"

    # -- the two gradient calls (``ServedCalls``) ------------------------------------------

    @staticmethod
    def _inputs(pixels, names, entries) -> dict[str, torch.Tensor]:
        return {PIXELS: pixels.detach().float().contiguous(), **entry_inputs(names, entries)}

    def _forward_call(self, pixels, names, entries, train: bool):
        return self._forward_inputs(self._inputs(pixels, names, entries), pixels, train)

    def _backward_call(self, handle, grad_out, pixels, names, entries) -> dict[str, torch.Tensor]:
        msg = self._backward_inputs(handle, grad_out, self._inputs(pixels, names, entries), pixels)
        return self._read_grads(msg, {PIXELS: pixels, **{wire_name(n): e for n, e in zip(names, entries, strict=True)}})

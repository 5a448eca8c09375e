"""What every client of a served box shares, text or image: the two gradient calls over the
wire and the connection's lifetime.

A forward that needs a gradient asks the server to keep its graph (``/v1/forward?train=true``
returns a handle); backward sends the outputs' gradient with that handle, or, to a stateless
server, the inputs again. A handle the server has dropped (expired, evicted, restarted) is
replayed once. Each client says which tensors its inputs are (``embeds`` and ``mask``, or
``pixels``; entry tokens as ``entry.<name>``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from exotune.boxes import wire
from exotune.boxes.http import Channel, get
from exotune.errors import HandleExpiredError

ENTRY = "entry."


def wire_name(entry_point: str) -> str:
    """The wire name of an entry point's tokens."""
    return f"{ENTRY}{entry_point}"


def entry_inputs(names, entries) -> dict[str, torch.Tensor]:
    """Entry tokens as the wire carries them (float32, by wire name)."""
    return {wire_name(n): e.detach().float() for n, e in zip(names, entries, strict=True)}


def sorted_entries(entry_tokens: Mapping[str, torch.Tensor] | None) -> tuple[tuple[str, ...], list[torch.Tensor]]:
    """(names, tokens) of ``entry_tokens`` in a fixed order: how they travel through autograd."""
    names = tuple(sorted(entry_tokens or {}))
    return names, [entry_tokens[n] for n in names]


class ServedCalls:
    """Forward, backward and ``close`` of a client over ``self._http`` (a ``Channel``)."""

    _http: Channel
    stats: dict

    def _forward_inputs(self, inputs: dict[str, torch.Tensor], like: torch.Tensor, train: bool):
        """(outputs on ``like``'s device and dtype, the handle or None) of ``inputs``."""
        msg = self._http.message(
            "POST", "/v1/forward", content=wire.encode(inputs), params={"train": "true"} if train else None
        )
        out = get(msg, "outputs", (like.shape[0], self.spec.output_dim))
        return out.to(device=like.device, dtype=like.dtype), msg.meta.get("handle")

    def _backward_inputs(
        self, handle: str | None, grad_out: torch.Tensor, inputs: dict[str, torch.Tensor], like: torch.Tensor
    ) -> wire.Message:
        """The server's answer to the outputs' gradient ``grad_out`` (the inputs' gradients)."""
        grad = {"grad_outputs": grad_out.detach().float()}
        if handle is not None:
            try:
                return self._post_backward(grad, handle)
            except HandleExpiredError:  # expired, evicted or the server restarted: replay once
                self.stats["replays"] += 1
                _, handle = self._forward_inputs(inputs, like, train=True)
        if handle is None:  # a stateless server: send the inputs again, it recomputes
            return self._post_backward({**grad, **inputs}, None)
        return self._post_backward(grad, handle)

    def _post_backward(self, tensors: dict[str, torch.Tensor], handle: str | None) -> wire.Message:
        meta = {"handle": handle} if handle is not None else None
        return self._http.message("POST", "/v1/backward", content=wire.encode(tensors, meta))

    @staticmethod
    def _read_grads(msg: wire.Message, wanted: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The gradient of each ``wanted`` tensor (by wire name), shaped, placed and typed as it."""
        return {name: get(msg, name, tuple(t.shape)).to(t.device, t.dtype) for name, t in wanted.items()}

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

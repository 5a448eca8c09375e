"""The box calls of the batching engine: several requests' units of one route as one call,
padded together, and each request's share of the answer cut back out of it (its own rows,
and its own length: exactly what it would have got alone, up to float error)."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from exotune.serve.graphs import build

ENCODE_CHUNK = 64  # texts per forward inside one unit of /v1/encode and /v1/scores


def pad_cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``tensors`` (rows, length, ...) padded with zeros to the longest length, one after another."""
    if len({t.shape[1:] for t in tensors}) == 1:
        return torch.cat(tensors)
    longest = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, 0) * (t.ndim - 2) + (0, longest - t.shape[1])) for t in tensors])


class BatchedCalls:
    """What ``BoxService`` hands its batcher: ``call(payloads) -> one answer per payload``."""

    def _embed_call(self, max_length: int, payloads: list[list[str]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Several requests' texts embedded at once; each answer cut to its own longest text."""
        batch = self.box.embed([t for texts in payloads for t in texts], max_length=max_length)
        sizes = [len(texts) for texts in payloads]
        answers = []
        for embeds, mask in zip(batch.embeds.split(sizes), batch.mask.split(sizes), strict=True):
            length = int(mask.any(0).nonzero().max()) + 1  # texts start at position 0, padding follows
            answers.append((embeds[:, :length], mask[:, :length]))
        return answers

    def _encode_call(self, payloads: list[list[str]]) -> list[torch.Tensor]:
        texts = [t for part in payloads for t in part]
        out = self.box.encode(texts, batch_size=min(ENCODE_CHUNK, self.spec.limits.max_batch)).float()
        return list(out.split([len(part) for part in payloads]))

    def _forward_call(self, payloads: list[tuple]) -> list[torch.Tensor]:
        """Outputs of several requests' units in one box call, padded together (no entry tokens
        when more than one: those run alone)."""
        embeds, mask = pad_cat([p[0] for p in payloads]), pad_cat([p[1] for p in payloads])
        with torch.no_grad():
            out = self._run(embeds, mask, payloads[0][2])
        return list(out.split([p[0].shape[0] for p in payloads]))

    def _backward_call(self, payloads: list[tuple]) -> list[torch.Tensor]:
        """Input gradients of several requests' units (embeds, mask, grad_outputs) in one
        forward+backward, padded together; each cut back to its own rows and length."""
        embeds, mask = pad_cat([p[0] for p in payloads]), pad_cat([p[1] for p in payloads])
        graph = build(self._run, embeds, mask, {}, embeds.shape[0], nullcontext)
        grads = graph.grads(torch.cat([p[2] for p in payloads]), nullcontext)[graph.input_name]
        return [g[:, : p[0].shape[1]] for g, p in zip(grads.split([p[0].shape[0] for p in payloads]), payloads, strict=True)]

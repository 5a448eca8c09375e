"""The box calls of the batching engine: several requests' units of one route as one call,
padded together, and each request's share of the answer cut back out of it (its own rows,
and its own length: exactly what it would have got alone, up to float error)."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from exotune.serve.graphs import build

# Rows per forward inside a call on a CPU (texts of /v1/encode and /v1/scores, sorted by
# length; rows of forward and backward units, grouped by length): padding is most of the work
# in large groups. Served MiniLM, one thread, 64 Banking77 texts: 0.48 s in groups of 16 or 8,
# 0.58 s of 32, 1.21 s of 64; 1.09 s as 16 separate requests of 4. On a GPU a forward costs
# about the same for 16 rows as for hundreds (it waits on kernel launches, not arithmetic),
# so there a call's rows go in groups of the box's max_batch.
CHUNK_ROWS = 16
CPU_UNIT_TOKENS, GPU_UNIT_TOKENS = 512, 8192  # ServeConfig.fair_unit_tokens when it is None


def call_sizes(device: torch.device | None, max_batch: int, fair_unit_tokens: int | None) -> tuple[int, int]:
    """(rows per forward inside a call, tokens of one fair unit) for a box on ``device`` (None:
    a box that does not say, taken as on the CPU)."""
    gpu = device is not None and device.type != "cpu"
    unit = fair_unit_tokens or (GPU_UNIT_TOKENS if gpu else CPU_UNIT_TOKENS)
    return (max_batch if gpu else min(CHUNK_ROWS, max_batch)), unit


Row = tuple[int, int, int | None]  # (payload, row, extent): a row's length up to its last real token


def row_groups(payloads: list[tuple], chunk_rows: int) -> list[list[Row]]:
    """Every row of ``payloads`` (inputs and mask first), shortest first, in groups of
    ``chunk_rows``. Rows of tokens are cut after their last real token (what follows is masked
    out: it changes nothing of the row's outputs); other inputs (pixels) are whole."""
    rows = []
    for p, (x, mask, *_) in enumerate(payloads):
        if x.ndim == 3:  # tokens (rows, length, dim)  # noqa: SIM108 (two cases, each commented)
            extents = (mask.shape[1] - (mask != 0).int().flip(1).argmax(1)).tolist()
        else:
            extents = [None] * x.shape[0]
        rows += [(p, r, e) for r, e in enumerate(extents)]
    rows.sort(key=lambda row: row[2] or 0)
    return [rows[i : i + chunk_rows] for i in range(0, len(rows), chunk_rows)]


def stack_rows(tensors: list[torch.Tensor], group: list[Row]) -> torch.Tensor:
    """The rows ``group`` of ``tensors`` (one per payload), cut to their extent and padded with
    zeros to the longest of them."""
    parts = [tensors[p][r] if e is None else tensors[p][r, :e] for p, r, e in group]
    longest = max(t.shape[0] for t in parts)
    return torch.stack([torch.nn.functional.pad(t, (0, 0) * (t.ndim - 1) + (0, longest - t.shape[0])) for t in parts])


class BatchedCalls:
    """What ``BoxService`` hands its batcher: ``call(payloads) -> one answer per payload``."""

    chunk_rows: int  # rows per forward inside a call: the service sets it (``call_sizes``)

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
        out = self.box.encode(texts, batch_size=self.chunk_rows).float()
        return list(out.split([len(part) for part in payloads]))

    def _forward_call(self, payloads: list[tuple]) -> list[torch.Tensor]:
        """Outputs of several requests' units (embeds, mask, entry tokens: none when more than
        one, those run alone), their rows regrouped by length."""
        inputs, masks = [p[0] for p in payloads], [p[1] for p in payloads]
        answers = [torch.zeros(x.shape[0], self.spec.output_dim) for x in inputs]
        for group in row_groups(payloads, self.chunk_rows):
            with torch.no_grad():
                out = self._run(stack_rows(inputs, group), stack_rows(masks, group), payloads[0][2])
            for (p, r, _), o in zip(group, out, strict=True):
                answers[p][r] = o
        return answers

    def _backward_call(self, payloads: list[tuple]) -> list[torch.Tensor]:
        """Input gradients of several requests' units (embeds, mask, grad_outputs): a
        forward+backward per group of rows of like length; each row's gradient put back in
        its place (zero after its last real token, where it is zero alone too)."""
        inputs, masks, grads = [p[0] for p in payloads], [p[1] for p in payloads], [p[2] for p in payloads]
        answers = [torch.zeros_like(x) for x in inputs]
        for group in row_groups(payloads, self.chunk_rows):
            x = stack_rows(inputs, group)
            graph = build(self._run, x, stack_rows(masks, group), {}, x.shape[0], nullcontext)
            got = graph.grads(torch.stack([grads[p][r] for p, r, _ in group]), nullcontext)[graph.input_name]
            for (p, r, e), g in zip(group, got, strict=True):
                if e is None:
                    answers[p][r] = g
                else:
                    answers[p][r, :e] = g[:e]
        return answers

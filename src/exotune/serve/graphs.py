"""Forward graphs built for a later backward, in units of bounded work, and what they cost.

A training forward of B sequences runs as slices of rows (each a unit of the fair scheduler);
each slice has its own ``embeds`` leaf, so its backward is exact and no larger than the slice.
Entry tokens are leaves shared by every slice; their gradients add up over the slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

ENTRY = "entry."  # wire name of entry tokens: "entry.<entry point name>"
TENSOR_OVERHEAD = 1024  # bytes a saved tensor costs beyond its data: its object, node, allocator rounding
# What the saved tensors leave out (autograd nodes, allocator slack): on the served MiniLM,
# resident memory grew 1.39x the counted bytes for graphs of 8x32 tokens, 1.29x for 4x128 and
# 1.27x for 20x512 (many graphs held at once, after malloc_trim).
ESTIMATE_MARGIN = 1.35


@dataclass
class Graph:
    """(output slice, its embeds leaf) per unit, and the entry-token leaves they share."""

    parts: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    entries: dict[str, torch.Tensor] = field(default_factory=dict)  # wire name -> leaf
    saved_bytes: int = 0  # what the saved-tensor hook counted
    input_name: str = "embeds"  # the wire name of the input's gradient ("pixels" for an image box)

    @property
    def rows(self) -> int:
        return sum(out.shape[0] for out, _ in self.parts)

    def outputs(self) -> torch.Tensor:
        return torch.cat([out.detach() for out, _ in self.parts])  # (B, O)

    def nbytes(self) -> int:
        """What the graph holds in memory: its saved tensors and leaves, times ESTIMATE_MARGIN."""
        leaves = [leaf for _, leaf in self.parts] + [out for out, _ in self.parts] + list(self.entries.values())
        return int(ESTIMATE_MARGIN * (self.saved_bytes + sum(t.numel() * t.element_size() for t in leaves)))

    def grads(self, grad: torch.Tensor, turn) -> dict[str, torch.Tensor]:
        """Gradients of ``sum(outputs * grad)`` w.r.t. embeds and entry tokens, one unit per
        ``turn()``. The graph is kept (a refused answer may be retried with the same handle)."""
        names = list(self.entries)
        embeds, sums, start = [], {n: None for n in names}, 0
        for out, leaf in self.parts:
            rows = out.shape[0]
            with turn():
                got = torch.autograd.grad(
                    out,
                    [leaf, *(self.entries[n] for n in names)],
                    grad[start : start + rows],
                    allow_unused=True,
                    retain_graph=True,
                )
            start += rows
            embeds.append(torch.zeros_like(leaf) if got[0] is None else got[0].float())
            for n, g in zip(names, got[1:], strict=True):
                if g is not None:
                    sums[n] = g.float() if sums[n] is None else sums[n] + g.float()
        answer = {self.input_name: torch.cat(embeds)}
        answer.update({n: torch.zeros_like(self.entries[n]) if g is None else g for n, g in sums.items()})
        return answer


def build(
    run, embeds: torch.Tensor, mask: torch.Tensor, entries: dict[str, torch.Tensor], rows_per_unit: int, turn
) -> Graph:
    """``run(embeds, mask, entries)`` with a graph, over slices of ``rows_per_unit`` rows."""
    graph = Graph(entries={ENTRY + n: t.detach().requires_grad_(True) for n, t in entries.items()})
    ent = {n[len(ENTRY) :]: t for n, t in graph.entries.items()}
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.requires_grad:  # activations; frozen weights do not require grad
            saved[0] += t.numel() * t.element_size() + TENSOR_OVERHEAD
        # detached: an output saved for its own backward, kept as itself, would hold its
        # graph in a reference cycle, and a graph never backpropagated would never be freed
        return t.detach()

    for i in range(0, embeds.shape[0], rows_per_unit):
        leaf = embeds[i : i + rows_per_unit].detach().requires_grad_(True)
        with turn(), torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            graph.parts.append((run(leaf, mask[i : i + rows_per_unit], ent), leaf))
    graph.saved_bytes = saved[0]
    return graph


class GraphCost:
    """Bytes a training forward will keep, estimated before it is built: per unit of the
    graph, c (tensors whose count, not size, is fixed), and per sequence of T tokens,
    a*T + b*T**2 (activations, attention); fitted on three probe forwards."""

    PROBE = 32  # tokens of the longer probes; the shorter has half

    def __init__(self) -> None:
        self.coef: tuple[float, float, float] | None = None

    def fit(self, run, width: int, max_length: int, turn) -> None:
        t2 = min(self.PROBE, max_length)
        t1 = t2 // 2

        def saved(batch: int, length: int) -> int:
            g = build(
                run, torch.zeros(batch, length, width), torch.ones(batch, length, dtype=torch.long), {}, batch, turn
            )
            return g.saved_bytes

        s1, s2, s22 = saved(1, t1), saved(1, t2), saved(2, t2)
        per_seq2 = s22 - s2  # a*t2 + b*t2**2
        c = max(0.0, s2 - per_seq2)
        per_seq1 = s1 - c  # a*t1 + b*t1**2
        b = max(0.0, (per_seq2 / t2 - per_seq1 / t1) / (t2 - t1))
        self.coef = (c, max(0.0, per_seq1 / t1 - b * t1), b)

    def estimate(self, batch: int, length: int, width: int, out_dim: int, rows_per_unit: int) -> int:
        c, a, b = self.coef or (0.0, 0.0, 0.0)
        units = -(-batch // rows_per_unit)
        io = batch * (length * width + out_dim) * 4  # the embeds leaves and the outputs
        return int(ESTIMATE_MARGIN * (units * c + batch * (a * length + b * length**2) + io))

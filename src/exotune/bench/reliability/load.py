"""Load: N clients train DGA adapters at once through one served box, for a fixed number of
steps. Every request must succeed (no retry, no replay) and every client's gradients, at every
step, must equal those of the same client trained alone against the local box: any mixing of
one client's graph or answer into another's (cross-talk) would show as a difference."""

from __future__ import annotations

import threading
import time

import torch

from exotune.bench.reliability.common import connect, latency_summary, relative_error, run_threads

RTOL = 1e-3  # relative to the largest gradient entry; float error between two runs is ~1e-6


def _client_batches(data, client: int, steps: int, batch: int):
    start = client * steps * batch
    rows = [list(range(start + s * batch, start + (s + 1) * batch)) for s in range(steps)]
    return [data.subset([r % len(data) for r in idx]) for idx in rows]


def _model(box, labels, seed: int):
    from exotune.graybox import DGAConfig
    from exotune.tasks.classification import TextClassifier

    torch.manual_seed(seed)
    return TextClassifier(box, labels, DGAConfig())


def _train(model, batches, latencies: list | None = None) -> list[torch.Tensor]:
    """AdamW steps; the flattened gradient of every step."""
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=5e-3)
    grads = []
    for batch in batches:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model.loss(batch).backward()
        grads.append(torch.cat([p.grad.flatten() for p in params if p.grad is not None]).clone())
        opt.step()
        if latencies is not None:
            latencies.append(time.perf_counter() - t0)
    return grads


def run(server, local, data, budget) -> dict:
    n, steps, bs = budget.load_clients, budget.load_steps, budget.load_batch
    labels = data.label_names
    batches = [_client_batches(data, i, steps, bs) for i in range(n)]
    reference = [_train(_model(local, labels, seed=i), batches[i]) for i in range(n)]

    # clients share the server's tokens round-robin: handles of one token's clients must not mix
    conns = [connect(server, server.tokens[i % len(server.tokens)]) for i in range(n)]
    models = [_model(box, labels, seed=i) for i, (box, _) in enumerate(conns)]
    for _, client in conns:
        client.records.clear()  # count the training phase only, not the set-up calls
    grads: list[list[torch.Tensor] | None] = [None] * n
    step_latencies: list[list[float]] = [[] for _ in range(n)]
    errors: list[str] = []
    barrier = threading.Barrier(n)

    def client(i: int) -> None:
        barrier.wait()  # start together: the load is concurrent from the first step
        try:
            grads[i] = _train(models[i], batches[i], step_latencies[i])
        except Exception as err:  # recorded: the count of failures is the result
            errors.append(f"client {i}: {type(err).__name__}: {err}")

    wall = run_threads(client, [(i,) for i in range(n)])
    records = [r for _, c in conns for r in c.records]
    for box, c in conns:
        box.close()
        c.close()
    worst = 0.0
    mismatched = []
    for i in range(n):
        if grads[i] is None:
            continue
        errs = [relative_error(g, r) for g, r in zip(grads[i], reference[i], strict=True)]
        worst = max(worst, *errs)
        if max(errs) > RTOL:
            mismatched.append(i)
    steps_done = sum(len(x) for x in step_latencies)
    lat = sorted(t * 1000 for x in step_latencies for t in x)
    stats = latency_summary(records, wall)
    retries = sum(box.stats["retries"] for box, _ in conns)
    replays = sum(box.stats["replays"] for box, _ in conns)
    ok = (
        not errors
        and not mismatched
        and stats["failed"] == 0
        and retries == 0
        and replays == 0
        and steps_done == n * steps
    )
    return {
        "ok": ok,
        "clients": n,
        "steps_per_client": steps,
        "batch_size": bs,
        "steps": steps_done,
        "wall_s": round(wall, 1),
        "steps_per_s": round(steps_done / wall, 2),
        "step_p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
        "step_p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
        **stats,
        "retries": retries,
        "replays": replays,
        "max_relative_gradient_error": worst,
        "tolerance": RTOL,
        "clients_with_other_gradients": mismatched,
        "problems": errors[:10],
    }

"""Soak: a few clients train against the served box for minutes; some forwards are abandoned
(as by a client that crashes between forward and backward) and some requests are garbage.
Every second the server's resident memory, open file descriptors and handle store are read.
Held when memory is flat after warm-up (the first 40% of the run), the handle store never exceeds its bound and is empty
once the clients are gone and the ttl has passed, and the descriptors return to their count
before the clients came."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from exotune.bench.common import open_fds, process_rss_mb
from exotune.bench.reliability.common import connect, latency_summary, relative_error, run_threads
from exotune.boxes import wire
from exotune.serve.handles import purge_interval_s

ABANDON_EVERY = 4  # every 4th forward made for training never gets its backward
GARBAGE_EVERY = 10  # every 10th request is not a tensor message
WARM_UP_SHARE = 0.4  # allocator pools and the handle store fill first; flat means flat after that
MEMORY_SLACK_MB, MEMORY_SLACK_SHARE = 64.0, 0.05
FD_SLACK = 2


def _sampler(server, samples: list, stop: threading.Event, interval_s: float = 1.0) -> None:
    pid = server.proc.pid
    t0 = time.monotonic()
    while not stop.is_set():
        stats = server.handle_stats() or {}
        samples.append(
            {
                "t": round(time.monotonic() - t0, 1),
                "rss_mb": process_rss_mb(pid),
                "fds": open_fds(pid),
                "handles": stats.get("handles"),
                "handle_bytes": stats.get("handle_bytes"),
            }
        )
        stop.wait(interval_s)


def _client(i: int, server, texts, local_grad, deadline: float, counts: dict, lock) -> None:
    box, http = connect(server, server.tokens[i % len(server.tokens)])
    batch = box.embed(texts)
    w = torch.randn(box.spec.output_dim, generator=torch.Generator().manual_seed(i))
    auth = {"Authorization": f"Bearer {server.tokens[i % len(server.tokens)]}", "Content-Type": wire.MEDIA_TYPE}
    k = 0
    try:
        while time.monotonic() < deadline:
            k += 1
            embeds = batch.embeds.clone().requires_grad_(True)
            if k % GARBAGE_EVERY == 0:
                r = http.post(
                    f"{server.url}/v1/forward", content=b"\x05\x00\x00\x00\x00\x00\x00\x00{junk", headers=auth
                )
                key = "garbage_refused" if r.status_code == 400 else "unexpected"
            elif k % ABANDON_EVERY == 0:
                box.forward(embeds, batch.mask)  # the graph is dropped here; its handle stays on the server
                key = "abandoned"
            else:
                (box.forward(embeds, batch.mask) @ w).pow(2).sum().backward()
                key = "trained" if relative_error(embeds.grad, local_grad[i]) <= 1e-3 else "wrong_gradient"
            with lock:
                counts[key] = counts.get(key, 0) + 1
    except Exception as err:  # recorded: a failure ends this client, the others go on
        with lock:
            counts.setdefault("errors", []).append(f"client {i}: {type(err).__name__}: {err}")
    finally:
        with lock:
            counts.setdefault("records", []).extend(http.records)
            counts["retries"] = counts.get("retries", 0) + box.stats["retries"]
            counts["replays"] = counts.get("replays", 0) + box.stats["replays"]
        box.close()
        http.close()


def run(server, local, data, budget) -> dict:
    pid = server.proc.pid
    n = budget.soak_clients
    texts = [data.texts[i * budget.soak_batch : (i + 1) * budget.soak_batch] for i in range(n)]
    local_grad = []
    for i in range(n):
        batch = local.embed(texts[i])
        embeds = batch.embeds.clone().requires_grad_(True)
        w = torch.randn(local.spec.output_dim, generator=torch.Generator().manual_seed(i))
        (local.forward(embeds, batch.mask) @ w).pow(2).sum().backward()
        local_grad.append(embeds.grad)
    time.sleep(1.0)  # connections of earlier sections are closed by now
    fds_before = open_fds(pid)
    samples: list[dict] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sampler, args=(server, samples, stop), daemon=True)
    sampler.start()
    counts: dict = {}
    lock = threading.Lock()
    deadline = time.monotonic() + budget.soak_seconds
    wall = run_threads(_client, [(i, server, texts[i], local_grad, deadline, counts, lock) for i in range(n)])
    during = len(samples)
    # the clients are gone: their abandoned handles expire, and the server's timer purges them
    time.sleep(budget.handle_ttl_s + purge_interval_s(budget.handle_ttl_s) + 2.5)
    fds_after = open_fds(pid)
    stop.set()
    sampler.join()
    final = server.handle_stats() or {}

    rss = [s["rss_mb"] for s in samples[:during] if s["rss_mb"] is not None]
    warm = max(1, int(len(rss) * WARM_UP_SHARE))
    steady = rss[warm:] or rss
    k = max(1, min(5, len(steady) // 4))
    start_mb, end_mb = float(np.median(steady[:k])), float(np.median(steady[-k:]))
    slope = float(np.polyfit(np.arange(len(steady)), steady, 1)[0] * 60) if len(steady) > 2 else 0.0
    # what the handle store does not explain: RSS less the bytes the held graphs' tensors take
    other = [
        s["rss_mb"] - (s["handle_bytes"] or 0) / 2**20
        for s in samples[:during]
        if s["rss_mb"] is not None and s["handle_bytes"] is not None
    ][warm:]
    other_slope = float(np.polyfit(np.arange(len(other)), other, 1)[0] * 60) if len(other) > 2 else None
    handles_max = max((s["handles"] or 0) for s in samples) if samples else None
    bytes_max = max((s["handle_bytes"] or 0) for s in samples) if samples else None
    memory_flat = end_mb - start_mb <= max(MEMORY_SLACK_MB, MEMORY_SLACK_SHARE * start_mb)
    errors = counts.get("errors", [])
    stats = latency_summary(counts.get("records", []), wall)
    # refused on purpose: the garbage (400), and a handle evicted before its backward (410, replayed)
    expected_failures = counts.get("garbage_refused", 0) + counts.get("replays", 0)
    ok = (
        memory_flat
        and not errors
        and not counts.get("wrong_gradient")
        and not counts.get("unexpected")
        and handles_max is not None
        and handles_max <= budget.max_handles
        and final.get("handles") == 0
        and fds_after is not None
        and fds_before is not None
        and fds_after <= fds_before + FD_SLACK
        and stats["failed"] == expected_failures
    )
    return {
        "ok": ok,
        "seconds": round(wall, 1),
        "clients": n,
        "batch_size": budget.soak_batch,
        "trained": counts.get("trained", 0),
        "abandoned_forwards": counts.get("abandoned", 0),
        "garbage_refused": counts.get("garbage_refused", 0),
        "wrong_gradients": counts.get("wrong_gradient", 0),
        "requests": stats["requests"],
        "unexpected_failures": stats["failed"] - expected_failures,
        "p50_ms": stats["p50_ms"],
        "p99_ms": stats["p99_ms"],
        "retries": counts.get("retries", 0),
        "replays": counts.get("replays", 0),
        "rss_start_mb": round(start_mb, 1),
        "rss_end_mb": round(end_mb, 1),
        "rss_max_mb": round(max(rss), 1) if rss else None,
        "rss_growth_mb": round(end_mb - start_mb, 1),
        "rss_slope_mb_per_min": round(slope, 2),
        "outside_handles_mb": [round(min(other), 1), round(max(other), 1)] if other else None,
        "outside_handles_slope_mb_per_min": None if other_slope is None else round(other_slope, 2),
        "memory_flat": memory_flat,
        "memory_tolerance_mb": round(max(MEMORY_SLACK_MB, MEMORY_SLACK_SHARE * start_mb), 1),
        "handles_max": handles_max,
        "handles_bound": budget.max_handles,
        "handle_bytes_max": bytes_max,
        "handles_after_ttl": final.get("handles"),
        "fds_before": fds_before,
        "fds_after": fds_after,
        "samples": [s for i, s in enumerate(samples) if i % max(1, len(samples) // 60) == 0],
        "problems": errors[:10],
    }

"""Serve suite: a served box's total throughput and latency under 1 to 64 concurrent clients,
with the batching engine on and off, side by side in one run.

Two servers of the same box run at once, both ``--stateless``: one gathering requests
(``--batch-wait-ms``, the default) and one answering each alone (``--batch-wait-ms 0``).
Every client has its own token and connection and loops for a fixed time: encode requests
of a few texts, or forward+backward pairs on a small training batch (each client its own
texts, of their own lengths). The two servers take turns cell by cell, so a change in the
load of a shared machine falls on both alike.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exotune.bench.common import process_peak_mb, suite_header
from exotune.bench.served import served_box
from exotune.plotting import pyplot
from exotune.serve.config import ServeConfig

ROUTES = ("encode", "fwd+bwd")
MODES = ("off", "on")  # batching


@dataclass
class Budget:
    seconds: float = 6.0  # each cell: clients loop this long
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    encode_texts: int = 4  # texts per encode request
    train_texts: int = 8  # texts per forward+backward pair
    batch_wait_ms: float = ServeConfig().batch_wait_ms


def bench_texts(data_dir, n: int) -> tuple[list[str], str]:
    """``n`` Banking77 test texts, or made-up ones where the dataset is not at hand."""
    from exotune.data import load_dataset
    from exotune.errors import ExotuneError

    try:
        texts = load_dataset("banking77", "test", data_dir).texts
        return [texts[i % len(texts)] for i in range(n)], "banking77 test"
    except (ExotuneError, OSError):
        words = [
            "card",
            "payment",
            "top",
            "up",
            "refund",
            "transfer",
            "pending",
            "account",
            "exchange",
            "rate",
            "fee",
            "cash",
            "atm",
        ]
        return [" ".join(words[(i + j) % len(words)] for j in range(4 + i % 9)) for i in range(n)], "synthetic"


def cell(url: str, tokens: list[str], route: str, texts: list[str], n: int, budget: Budget) -> dict:
    """``n`` clients for ``budget.seconds``: completed calls per second and their latency."""
    from exotune.boxes.remote import connect

    size = budget.encode_texts if route == "encode" else budget.train_texts
    boxes = [connect(url, token=tokens[i]) for i in range(n)]
    parts = [texts[(i * size) % len(texts) :][:size] for i in range(n)]
    calls = [_encode(b, p) if route == "encode" else _train(b, b.embed(p)) for b, p in zip(boxes, parts, strict=True)]
    latencies, errors, lock = [], [], threading.Lock()
    clock = {}
    start = threading.Barrier(n, action=lambda: clock.update(start=time.perf_counter()))

    def client(call):
        try:
            call()  # each connection warmed, untimed
        except Exception as err:
            with lock:
                errors.append(repr(err)[:200])
        start.wait()
        while time.perf_counter() < clock["start"] + budget.seconds:  # the last call ends after: counted
            t0 = time.perf_counter()
            try:
                call()
            except Exception as err:  # recorded, not raised: the count is the result
                with lock:
                    errors.append(repr(err)[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - clock["start"]
    for b in boxes:
        b.close()
    lat = np.asarray(latencies) * 1000
    return {
        "route": route,
        "clients": n,
        "calls": len(latencies),
        "failed": len(errors),
        "errors": errors[:3],
        "calls_per_second": len(latencies) / wall,
        "texts_per_second": len(latencies) * size / wall,
        "texts_per_call": size,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
    }


def _encode(box, texts):
    return lambda: box.encode(texts)


def _train(box, batch):
    def pair():
        embeds = batch.embeds.clone().requires_grad_(True)
        box.forward(embeds, batch.mask).sum().backward()

    return pair


def run(args) -> int:
    import torch

    budget = Budget()
    if args.quick:
        budget = Budget(seconds=1.0, concurrency=(1, 4))
    out_dir = Path(args.out_dir) if args.out_dir else Path("benchmarks/results") / ("quick" if args.quick else "")
    torch.set_num_threads(1)  # the clients' own work is small: the cores are the servers'
    most = max(budget.concurrency)
    texts, source = bench_texts(args.data_dir, most * max(budget.encode_texts, budget.train_texts))
    cells = []
    with (
        served_box(args.backbone, stateless=True, n_tokens=most, extra=("--batch-wait-ms", "0")) as off,
        served_box(
            args.backbone, stateless=True, n_tokens=most, extra=("--batch-wait-ms", f"{budget.batch_wait_ms:g}")
        ) as on,
    ):
        servers = {"off": off, "on": on}
        for n in budget.concurrency:
            for route in ROUTES:
                for mode in MODES:
                    s = servers[mode]
                    cells.append({"batching": mode, **cell(s.url, s.tokens, route, texts, n, budget)})
                    c = cells[-1]
                    print(
                        f"[bench] {route} x{n} batching {mode}: {c['calls_per_second']:.1f} calls/s, "
                        f"p50 {c['p50_ms'] or 0:.0f} ms, p99 {c['p99_ms'] or 0:.0f} ms, {c['failed']} failed",
                        file=sys.stderr,
                        flush=True,
                    )
        peaks = {m: process_peak_mb(s.proc.pid) for m, s in servers.items()}
    doc = {
        **suite_header("serve", args, budget),
        "texts": source,
        "transport": "HTTP/1.1 on 127.0.0.1, safetensors bodies; both servers and the clients "
        "on the same cores, shared with other work",
        "server_peak_memory_mb": peaks,
        "cells": cells,
        "summary": summary(cells),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serve.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "serve.md").write_text(markdown(doc))
    plot(doc, out_dir)
    print((out_dir / "serve.md").read_text())
    return 0


def summary(cells: list[dict]) -> dict:
    """Per route and mode: throughput at the most clients over throughput with one client."""
    out = {}
    for route in ROUTES:
        for mode in MODES:
            mine = sorted(
                (c for c in cells if c["route"] == route and c["batching"] == mode), key=lambda c: c["clients"]
            )
            base = mine[0]["calls_per_second"] or float("nan")
            out[f"{route} {mode}"] = {str(c["clients"]): c["calls_per_second"] / base for c in mine}
    return out


def markdown(doc: dict) -> str:
    b = doc["budget"]
    lines = [
        f"# serve{' (quick)' if doc['quick'] else ''}\n",
        f"`{doc['command']}`\n",
        f"{doc['date']}, {doc['machine']}, backbone {doc['backbone']}; {doc['transport']}. Texts: "
        f"{doc['texts']}; encode requests of {b['encode_texts']} texts, forward+backward pairs on "
        f"{b['train_texts']} texts (stateless); {b['seconds']:g} s per cell; batching on = "
        f"`--batch-wait-ms {b['batch_wait_ms']:g}`, off = `--batch-wait-ms 0`.\n",
        "| route | clients | off calls/s | on calls/s | on / off | off p50 / p99 ms | on p50 / p99 ms | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {(c["route"], c["clients"], c["batching"]): c for c in doc["cells"]}
    for route in ROUTES:
        for n in b["concurrency"]:
            off, on = by[(route, n, "off")], by[(route, n, "on")]
            lines.append(
                f"| {route} | {n} | {off['calls_per_second']:.1f} | {on['calls_per_second']:.1f} | "
                f"{on['calls_per_second'] / max(off['calls_per_second'], 1e-9):.2f} | "
                f"{off['p50_ms'] or 0:.0f} / {off['p99_ms'] or 0:.0f} | {on['p50_ms'] or 0:.0f} / "
                f"{on['p99_ms'] or 0:.0f} | {off['failed'] + on['failed']} |"
            )
    lines += ["", "Total throughput over one client's (same mode):", ""]
    for key, ratios in doc["summary"].items():
        lines.append(f"- {key}: " + ", ".join(f"{n} clients {r:.2f}x" for n, r in ratios.items()))
    return "\n".join(lines) + "\n"


def plot(doc: dict, out_dir: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, route in zip(axes, ROUTES, strict=True):
        for mode in MODES:
            mine = sorted(
                (c for c in doc["cells"] if c["route"] == route and c["batching"] == mode), key=lambda c: c["clients"]
            )
            ax.plot([c["clients"] for c in mine], [c["calls_per_second"] for c in mine], "o-", label=f"batching {mode}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("calls / s" if route == "encode" else "forward+backward pairs / s")
        ax.set_title(route)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("served box, total throughput")
    fig.tight_layout()
    fig.savefig(out_dir / "serve_throughput.png", dpi=110)
    plt.close(fig)

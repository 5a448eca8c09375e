"""Remote suite: the same DGA run locally and through ``exotune serve`` on loopback.

The server runs in its own process (as an owner's would); each training run runs in a
fresh client process, so the client's peak memory is its own: the remote client never
loads the backbone. Throughput is forward+backward pairs per second from N concurrent
clients, each with its own connection, over a fixed batch.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exotune.bench.common import (
    peak_memory_mb,
    process_peak_mb,
    run_isolated,
    suite_header,
)
from exotune.bench.served import served_box
from exotune.plotting import pyplot


@dataclass
class Budget:
    epochs: int = 5
    batch_size: int = 32
    lr: float = 2e-3
    val_fraction: float = 0.1
    patience: int = 2
    max_train: int | None = None
    max_val: int | None = None
    max_test: int | None = None
    pairs_per_client: int = 8
    concurrency: tuple[int, ...] = (1, 4, 16)
    warmup_pairs: int = 0  # untimed pairs each client makes first (a GPU builds its kernels on first calls)


def train_run(variant: str, url: str | None, token: str | None, seed: int, data_dir, budget: Budget, backbone) -> dict:
    """One DGA (both sides) run on Banking77, against a local or a remote box."""
    from exotune.bench import classification
    from exotune.bench.classification import timed_eval
    from exotune.boxes import load_box
    from exotune.graybox import DGAConfig
    from exotune.tasks.classification import TextClassifier
    from exotune.train import TrainConfig, Trainer, seed_everything

    seed_everything(seed)
    split = classification.Budget(
        val_fraction=budget.val_fraction, max_train=budget.max_train, max_val=budget.max_val, max_test=budget.max_test
    )
    train, val, test = classification.split_data("banking77", data_dir, split, seed)
    if url is None:
        from exotune.bench.served import BENCH_OWNER_SECRET

        box = load_box(backbone, owner_secret=BENCH_OWNER_SECRET)  # the served box, in its basis
    else:
        from exotune.boxes.remote import connect

        box = connect(url, token=token)
    model = TextClassifier(box, train.label_names, DGAConfig())
    cfg = TrainConfig(
        epochs=budget.epochs, batch_size=budget.batch_size, lr=budget.lr, patience=budget.patience, seed=seed
    )
    result = Trainer(cfg, progress=False).fit(model, train, val)
    metrics, speed = timed_eval(model, test)
    return {
        "dataset": "banking77",
        "split": "test",
        "method": "dga",
        "variant": variant,
        "access": "dark-gray",
        "seed": seed,
        "metrics": metrics,
        "trainable_params": model.num_trainable(),
        "train_seconds": result.train_seconds,
        "seconds_per_step": result.seconds_per_step,
        "best_epoch": result.best_epoch,
        "val_accuracy": result.best_metric,
        "eval_examples_per_second": speed,
        "peak_memory_mb": peak_memory_mb(),
        "requests": getattr(box, "stats", {}).get("requests"),
        "replays": getattr(box, "stats", {}).get("replays"),
    }


def throughput_run(url: str, token: str, data_dir, budget: Budget) -> list[dict]:
    """Forward+backward pairs per second and latency percentiles at each concurrency."""
    import torch

    from exotune.boxes.remote import connect
    from exotune.data import load_dataset

    texts = load_dataset("banking77", "test", data_dir).texts[: budget.batch_size]
    out = []
    for n in budget.concurrency:
        boxes = [connect(url, token=token) for _ in range(n)]
        batch = boxes[0].embed(texts)
        if budget.warmup_pairs:
            _hammer(boxes, batch, budget.warmup_pairs)
        latencies, errors, wall = _hammer(boxes, batch, budget.pairs_per_client)
        lat = np.asarray(latencies) * 1000
        out.append(
            {
                "concurrency": n,
                "pairs": len(latencies),
                "failed": len(errors),
                "pairs_per_second": len(latencies) / wall,
                "requests_per_second": 2 * len(latencies) / wall,
                "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
                "batch_size": len(texts),
                "torch_threads": torch.get_num_threads(),
                "errors": sorted(set(errors))[:3],  # what failed, where anything did
            }
        )
        print(
            f"[bench]   concurrency {n}: {out[-1]['pairs_per_second']:.2f} fwd+bwd/s, "
            f"p50 {out[-1]['p50_ms']:.0f} ms, {len(errors)} failed",
            file=sys.stderr,
        )
    return out


def _hammer(boxes, batch, pairs: int) -> tuple[list[float], list[str], float]:
    """Each box in its own thread runs ``pairs`` forward+backward calls on ``batch``."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(box):
        for _ in range(pairs):
            embeds = batch.embeds.clone().requires_grad_(True)
            t0 = time.perf_counter()
            try:
                box.forward(embeds, batch.mask).sum().backward()
            except Exception as err:  # recorded, not raised: the count is the result
                with lock:
                    errors.append(repr(err))
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(b,)) for b in boxes]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - t0


def _record(run: dict, metric: str) -> dict:
    rec = {k: v for k, v in run.items() if k not in ("metrics", "seed")}
    value = run["metrics"][metric]
    return {**rec, "metric": metric, "mean": value, "std": 0.0, "seeds": [run["seed"]], "values": [value]}


def run(args) -> int:
    budget = Budget(**({"epochs": args.epochs} if args.epochs else {}), max_train=args.max_train)
    if args.quick:
        budget = Budget(epochs=1, max_train=256, max_val=128, max_test=256, pairs_per_client=2, concurrency=(1, 4))
    budget.lr = dict(args.lr).get("dga", budget.lr)
    seed = args.seeds[0]
    out_dir = Path(args.out_dir) if args.out_dir else Path("benchmarks/results") / ("quick" if args.quick else "")
    print("[bench] local run ...", file=sys.stderr, flush=True)
    local = run_isolated(train_run, "local", None, None, seed, args.data_dir, budget, args.backbone)
    with served_box(args.backbone) as server:
        url, token = server.url, server.token
        print(f"[bench] remote run through {url} ...", file=sys.stderr, flush=True)
        remote = run_isolated(train_run, "remote", url, token, seed, args.data_dir, budget, args.backbone)
        print("[bench] throughput ...", file=sys.stderr, flush=True)
        throughput = run_isolated(throughput_run, url, token, args.data_dir, budget)
        server_peak = process_peak_mb(server.proc.pid)
    for r in (local, remote):
        print(
            f"[bench]   {r['variant']}: accuracy {r['metrics']['accuracy']:.4f}, "
            f"{r['seconds_per_step']:.3f} s/step, client peak {r['peak_memory_mb']:.0f} MB",
            file=sys.stderr,
        )
    records = [_record(r, m) for r in (local, remote) for m in ("accuracy", "macro_f1")]
    ratio = remote["seconds_per_step"] / local["seconds_per_step"]
    doc = {
        **suite_header("remote", args, budget),
        "transport": "HTTP/1.1 on 127.0.0.1, safetensors bodies, server and clients on the same 2 cores",
        "remote_over_local_seconds_per_step": ratio,
        "server_peak_memory_mb": server_peak,
        "records": records,
        "throughput": throughput,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "remote.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "remote.md").write_text(markdown(doc))
    plot(doc, out_dir)
    print((out_dir / "remote.md").read_text())
    return 0


def markdown(doc: dict) -> str:
    lines = [
        f"# remote\n\n`{doc['command']}`\n",
        f"{doc['date']}, {doc['machine']}, backbone {doc['backbone']}; {doc['transport']}.\n",
        "| variant | accuracy | macro-F1 | s/step | train s | client peak MB |",
        "|---|---|---|---|---|---|",
    ]
    by = {(r["variant"], r["metric"]): r for r in doc["records"]}
    for v in ("local", "remote"):
        a, f = by[(v, "accuracy")], by[(v, "macro_f1")]
        lines.append(
            f"| {v} | {a['mean']:.4f} | {f['mean']:.4f} | {a['seconds_per_step']:.3f} | "
            f"{a['train_seconds']:.0f} | {a['peak_memory_mb']:.0f} |"
        )
    lines += [
        "",
        f"Remote / local seconds per step: {doc['remote_over_local_seconds_per_step']:.2f}; "
        f"server peak memory {doc['server_peak_memory_mb'] or 0:.0f} MB.",
        "",
        "| concurrent clients | fwd+bwd pairs/s | requests/s | p50 ms | p99 ms | failed |",
        "|---|---|---|---|---|---|",
    ]
    for t in doc["throughput"]:
        lines.append(
            f"| {t['concurrency']} | {t['pairs_per_second']:.2f} | {t['requests_per_second']:.2f} | "
            f"{t['p50_ms'] or 0:.0f} | {t['p99_ms'] or 0:.0f} | {t['failed']} |"
        )
    return "\n".join(lines) + "\n"


def plot(doc: dict, out_dir: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    t = doc["throughput"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([x["concurrency"] for x in t], [x["pairs_per_second"] for x in t], "o-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("forward+backward pairs / s")
    ax.set_title("served MiniLM on loopback")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "remote_throughput.png", dpi=110)
    plt.close(fig)

"""Replica benchmark: 1, 2 and 3 ``exotune serve --stateless`` replicas of the packaged model
behind nginx (the README's block), 16 clients each sending training forward + backward pairs,
with quotas counted in each replica (local) or in one redis-server (redis).

    python -m exotune.bench.replicas [--seconds 15] [--out benchmarks/results]

Writes replicas.{json,md,png}: pairs per second, and p50/p99 of each request.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from exotune.bench.cluster import nginx, redis_server, start_replica, stop, wait_replicas
from exotune.bench.common import command_line, machine
from exotune.plotting import pyplot

CLIENTS = 16
TEXTS = ["book a table for two tonight", "my card was charged twice", "what is the exchange rate", "cancel it"]


def _client(url: str, token: str, body_fwd: bytes, body_bwd: bytes, until: float, out: list, errors: list) -> None:
    import httpx

    from exotune.boxes import wire

    headers = {"Authorization": f"Bearer {token}", "Content-Type": wire.MEDIA_TYPE}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        while time.monotonic() < until:
            for path, body in (("/v1/forward?train=true", body_fwd), ("/v1/backward", body_bwd)):
                start = time.perf_counter()
                r = client.post(path, content=body)
                out.append((path.split("?")[0], time.perf_counter() - start))
                if r.status_code != 200:
                    errors.append(r.status_code)


def _bodies(url: str, token: str) -> tuple[bytes, bytes]:
    import exotune
    from exotune.boxes import wire

    with exotune.connect(url, token=token) as box:
        batch = box.embed(TEXTS)
        grad = np.ones((len(TEXTS), box.spec.output_dim), dtype="float32")
    import torch

    tensors = {"embeds": batch.embeds, "mask": batch.mask}
    return wire.encode(tensors), wire.encode({**tensors, "grad_outputs": torch.from_numpy(grad)})


def measure(n: int, store: str, seconds: float, tmp: Path) -> dict:
    tokens = [f"bench-token-{i:02d}-abcdef" for i in range(CLIENTS)]
    with ExitStack() as stack:
        quota = []
        if store == "redis":
            quota = ["--quota-store", stack.enter_context(redis_server(tmp / "redis"))]
        limits = ["--rate", "1e6", "--burst", "1000000", "--grad-budget", "1000000000"]
        procs = [start_replica(None, tmp, tokens, "--stateless", *quota, *limits) for _ in range(n)]
        stack.callback(lambda: [stop(p) for p, _ in procs])
        wait_replicas(procs)
        url = stack.enter_context(nginx(tmp / "nginx", [port for _, port in procs]))
        fwd, bwd = _bodies(url, tokens[0])
        _client(url, tokens[0], fwd, bwd, time.monotonic() + 2, [], [])  # warm up
        out, errors = [], []
        until = time.monotonic() + seconds
        threads = [threading.Thread(target=_client, args=(url, t, fwd, bwd, until, out, errors)) for t in tokens]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
    lat = {p: np.array([s for q, s in out if q == p]) * 1000 for p in ("/v1/forward", "/v1/backward")}
    return {
        "replicas": n,
        "store": store,
        "clients": CLIENTS,
        "seconds": round(elapsed, 1),
        "errors": len(errors),
        "pairs_per_s": round(len(lat["/v1/backward"]) / elapsed, 2),
        **{
            f"{p.rsplit('/', 1)[1]}_{q}_ms": round(float(np.percentile(v, q)), 1)
            for p, v in lat.items()
            for q in (50, 99)
        },
    }


def store_cost(store: str, tmp: Path, calls: int = 2000) -> dict:
    """Milliseconds the gate's bookkeeping of one gradient request takes (admit + spend), alone."""
    from exotune.serve.auth import TokenGate
    from exotune.serve.quota import quota_store

    with ExitStack() as stack:
        url = stack.enter_context(redis_server(tmp / "redis")) if store == "redis" else None
        gate = TokenGate(["bench-token-abcdef"], 1e6, 10**6, 10**9, store=quota_store(url))
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            gate.admit("t0")
            gate.spend_gradient("t0")
            times.append((time.perf_counter() - start) * 1000)
    return {"store": store, "calls": calls, **{f"p{q}_ms": round(float(np.percentile(times, q)), 3) for q in (50, 99)}}


def markdown(doc: dict) -> str:
    lines = [
        "# Replicas behind nginx",
        "",
        f"{doc['machine']}; `{doc['command']}`",
        "",
        f"{CLIENTS} clients, each sending training forward + backward pairs of {len(TEXTS)} texts "
        "to stateless replicas of the packaged model behind nginx (the README's block).",
        "",
        "| replicas | quota store | pairs/s | forward p50 / p99 ms | backward p50 / p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        lines.append(
            f"| {r['replicas']} | {r['store']} | {r['pairs_per_s']} | {r['forward_50_ms']} / "
            f"{r['forward_99_ms']} | {r['backward_50_ms']} / {r['backward_99_ms']} | {r['errors']} |"
        )
    lines += [
        "",
        "The quota bookkeeping of one gradient request alone (rate bucket + budget, loopback Redis):",
        "",
        "| quota store | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    lines += [f"| {c['store']} | {c['p50_ms']} | {c['p99_ms']} |" for c in doc["store_cost"]]
    return "\n".join(lines) + "\n"


def plot(doc: dict, out_dir: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for store in ("local", "redis"):
        runs = [r for r in doc["runs"] if r["store"] == store]
        a.plot([r["replicas"] for r in runs], [r["pairs_per_s"] for r in runs], marker="o", label=store)
        b.plot([r["replicas"] for r in runs], [r["backward_99_ms"] for r in runs], marker="o", label=store)
    a.set(xlabel="replicas", ylabel="forward+backward pairs/s", title=f"{CLIENTS} clients")
    b.set(xlabel="replicas", ylabel="backward p99 (ms)", title="per request")
    for ax in (a, b):
        ax.set_xticks([1, 2, 3])
        ax.legend(title="quota store")
    fig.tight_layout()
    fig.savefig(out_dir / "replicas.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m exotune.bench.replicas")
    p.add_argument("--seconds", type=float, default=15.0, help="load per configuration (default: 15)")
    p.add_argument("--replicas", default="1,2,3")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    runs = []
    for n in [int(x) for x in args.replicas.split(",")]:
        for store in ("local", "redis"):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(measure(n, store, args.seconds, Path(tmp)))
            print(runs[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cost = [store_cost(store, Path(tmp)) for store in ("local", "redis")]
    doc = {"suite": "replicas", "machine": machine(), "command": command_line(), "runs": runs, "store_cost": cost}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "replicas.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "replicas.md").write_text(markdown(doc))
    plot(doc, out)
    print(markdown(doc))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

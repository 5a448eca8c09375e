"""GPU served throughput: forward+backward pairs per second and latency at 1 and 16 concurrent
clients against ``exotune serve --device cuda`` in float32 and bfloat16, stateful and
``--stateless`` (the remote suite's own client code, on Banking77 test texts: needs the datasets).

    python benchmarks/gpu/served.py --out benchmarks/results/gpu --data-dir DIR
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from exotune.bench.remote import Budget, throughput_run
from exotune.bench.served import served_box


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/gpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--pairs-per-client", type=int, default=16)
    p.add_argument("--warmup-pairs", type=int, default=2, help="untimed pairs per client first")
    p.add_argument("--backbone", default=None, help="a model folder (default: the packaged MiniLM)")
    p.add_argument("--modes", nargs="+", default=["stateful", "stateless"], choices=["stateful", "stateless"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--max-handle-mb", type=int, default=8192, help="the server's graph store (a GPU has room)")
    args = p.parse_args()
    budget = Budget(concurrency=(1, 16), pairs_per_client=args.pairs_per_client, warmup_pairs=args.warmup_pairs)
    rows = []
    # stateful: forwards keep graphs (unbatched); stateless: backward recomputes, so concurrent
    # clients' backward calls are gathered into one box call (the batching engine)
    for mode, dtype in itertools.product(args.modes, args.dtypes):
        extra = ("--device", args.device, "--dtype", dtype, "--max-handle-mb", str(args.max_handle_mb))
        with served_box(args.backbone, stateless=mode == "stateless", extra=extra) as server:
            for row in throughput_run(server.url, server.token, args.data_dir, budget):
                rows.append({"mode": mode, "dtype": dtype, **row})
                print(
                    f"[gpu] {mode} {dtype} x{row['concurrency']}: {row['pairs_per_second']:.1f} fwd+bwd/s, "
                    f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms",
                    flush=True,
                )
    doc = {
        "suite": "gpu-served",
        "date": time.strftime("%Y-%m-%d"),
        "device": args.device,
        "backbone": args.backbone or "all-MiniLM-L6-v2 (packaged)",
        "max_handle_mb": args.max_handle_mb,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_served.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# GPU served throughput\n",
        f"{doc['date']}, exotune serve --device {args.device}, backbone {doc['backbone']}; clients and server "
        f"on the same machine over loopback HTTP; one batch of 32 texts per call; each client makes "
        f"{args.warmup_pairs} untimed pairs, then {args.pairs_per_client} timed ones; the server keeps "
        f"forward graphs in up to {args.max_handle_mb} MB (--max-handle-mb).\n",
        "| mode | dtype | clients | fwd+bwd pairs/s | p50 ms | p99 ms | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['mode']} | {r['dtype']} | {r['concurrency']} | {r['pairs_per_second']:.1f} | {r['p50_ms']:.0f} | "
        f"{r['p99_ms']:.0f} | {r['failed']} |"
        for r in rows
    ]
    failures = sorted({e for r in rows for e in r["errors"]})
    lines += ["", "Failures: " + "; ".join(failures)] if failures else []
    (out / "gpu_served.md").write_text("\n".join(lines) + "\n")
    print((out / "gpu_served.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

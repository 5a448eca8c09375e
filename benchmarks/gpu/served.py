"""GPU served throughput: forward+backward pairs per second and latency at 1 and 16 concurrent
clients against ``exotune serve --device cuda`` in float32 and bfloat16 (the remote suite's
own client code, on Banking77 test texts: needs the datasets).

    python benchmarks/gpu/served.py --out benchmarks/results/gpu --data-dir DIR
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--pairs-per-client", type=int, default=8)
    args = p.parse_args()
    budget = Budget(concurrency=(1, 16), pairs_per_client=args.pairs_per_client)
    rows = []
    for dtype in ("float32", "bfloat16"):
        with served_box(None, extra=("--device", args.device, "--dtype", dtype)) as server:
            for row in throughput_run(server.url, server.token, args.data_dir, budget):
                rows.append({"dtype": dtype, **row})
                print(
                    f"[gpu] {dtype} x{row['concurrency']}: {row['pairs_per_second']:.1f} fwd+bwd/s, "
                    f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms",
                    flush=True,
                )
    doc = {"suite": "gpu-served", "date": time.strftime("%Y-%m-%d"), "device": args.device, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_served.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# GPU served throughput\n",
        f"{doc['date']}, exotune serve --device {args.device}; clients and server "
        "on the same machine over loopback HTTP; one batch of 32 texts per call.\n",
        "| dtype | clients | fwd+bwd pairs/s | p50 ms | p99 ms | failed |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['dtype']} | {r['concurrency']} | {r['pairs_per_second']:.1f} | {r['p50_ms']:.0f} | "
        f"{r['p99_ms']:.0f} | {r['failed']} |"
        for r in rows
    ]
    (out / "gpu_served.md").write_text("\n".join(lines) + "\n")
    print((out / "gpu_served.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

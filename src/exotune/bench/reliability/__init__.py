"""Reliability suite: a served box under load, over minutes, under bad input and faults.

``exotune bench reliability [--quick]`` starts ``exotune serve`` on 127.0.0.1 (the packaged
MiniLM unless ``--backbone``) and runs, in order, bounded in count and time:

- ``load``: 16 concurrent clients train DGA adapters for a fixed number of steps; every
  request must succeed and every client's gradients equal a local reference.
- ``soak``: clients train (and abandon forwards) for minutes while the server's resident
  memory, open file descriptors and handle store are sampled every second.
- ``fuzz``: property-based bad input on every route (schemathesis over the OpenAPI
  document, hypothesis over safetensors and JSON payloads): 4xx with a message, never 5xx.
- ``access``: every route without or with a wrong token, another client's handle, rate and
  gradient limits, and no backbone name in any answer.
- ``faults``: the server killed mid-training (``exotune train --resume`` loses nothing), a
  black-box endpoint failing every way, a crash while probing it, corrupted adapter files.
- ``fairness``: work per request is bounded, and one token's heaviest allowed request delays
  another token's small request by at most a small multiple of its idle latency (a figure).
- ``slow``: slow-loris heads, a trickled body and a connection flood are cut; others are served.
- ``admission``: concurrent training forwards cannot overshoot the handle-byte bound.
- ``abandon``: after abandoned forwards and the handle ttl, memory is back within 15%.

It writes ``reliability.json`` and ``reliability.md`` and exits 1 if anything did not hold.
Needs the 'serve' extra and hypothesis + schemathesis (the 'dev' extra).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from exotune.bench.common import RESULTS_DIR, command_line, machine
from exotune.errors import MissingDependencyError

SECTIONS = ("load", "soak", "fuzz", "access", "faults", "fairness", "slow", "admission", "abandon", "pixels")


@dataclass
class Budget:
    load_clients: int = 16
    load_steps: int = 8  # training steps per client
    load_batch: int = 16
    soak_seconds: float = 120.0
    soak_clients: int = 4
    soak_batch: int = 8
    max_handles: int = 48  # the served box's handle store, small so that eviction is exercised
    handle_ttl_s: float = 10.0
    fuzz_examples: int = 40  # per OpenAPI operation and generation mode (positive, negative)
    wire_examples: int = 600  # hypothesis payloads for the tensor and JSON routes
    train_rows: int = 96  # the kill-and-resume drill: rows of its CSV
    train_epochs: int = 2
    train_batch: int = 16
    crash_at_step: int = 8  # the server dies on this backward call
    probe_rows: int = 120  # the EA probing crash drill
    probe_crash_at: int = 12  # the client is killed when this request arrives
    probe_concurrency: tuple[int, ...] = (1, 4)
    cli_corruptions: int | None = None  # how many corruption cases also go through the CLI (None: all)
    serve_max_batch: int = 64  # the served box's --max-batch: bounds the heaviest request
    fairness_samples: int = 10  # small requests timed idle, and again behind the heaviest
    slow_connections: int = 200  # slow-loris connections at once
    header_timeout_s: float = 5.0
    body_timeout_s: float = 10.0
    max_connections: int = 256
    admission_clients: int = 4
    admission_batch: int = 8  # sequences of the box's max length per training forward
    admission_rounds: int = 2
    abandon_forwards: int = 600


def quick_budget() -> Budget:
    return replace(
        Budget(),
        load_steps=2,
        load_batch=8,
        soak_seconds=8.0,
        soak_clients=3,
        handle_ttl_s=2.0,
        fuzz_examples=6,
        wire_examples=60,
        train_rows=48,
        crash_at_step=4,
        probe_rows=40,
        probe_crash_at=4,
        probe_concurrency=(4,),
        cli_corruptions=1,
        fairness_samples=4,
        slow_connections=30,
        header_timeout_s=2.0,
        body_timeout_s=2.0,
        max_connections=64,
        admission_batch=4,
        abandon_forwards=40,
    )


def _requirements() -> None:
    for module, extra in (("httpx", "serve"), ("hypothesis", "dev"), ("schemathesis", "dev")):
        try:
            __import__(module)
        except ImportError as err:
            raise MissingDependencyError(
                f"the reliability suite needs {module}: pip install 'exotune[{extra}]'"
            ) from err


def _section(name: str, fn, *args) -> dict:
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        result = fn(*args)
    except Exception as err:  # reported, not raised: the other sections still run
        result = {"ok": False, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-3000:]}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(
        f"[bench]   {name}: {'held' if result['ok'] else 'FAILED'} ({result['seconds']:.0f} s)"
        + ("" if result["ok"] else f": {result.get('error') or result.get('problems')}"),
        file=sys.stderr,
        flush=True,
    )
    return result


def run(args) -> int:
    _requirements()
    from exotune.bench.reliability import (
        access,
        fairness,
        faults,
        fuzz,
        hostile,
        load,
        pixels,
        soak,
    )
    from exotune.bench.reliability.common import task_data
    from exotune.bench.served import BENCH_OWNER_SECRET, served_box
    from exotune.boxes import load_box

    budget = quick_budget() if args.quick else Budget()
    out_dir = Path(args.out_dir) if args.out_dir else (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    t0, load_start = time.perf_counter(), os.getloadavg()[0]
    local = load_box(args.backbone, owner_secret=BENCH_OWNER_SECRET)  # the served box: every gradient's reference
    data = task_data(args.data_dir, budget.load_clients * budget.load_steps * budget.load_batch)
    extra = (
        "--max-handles",
        str(budget.max_handles),
        "--handle-ttl",
        f"{budget.handle_ttl_s:g}",
        "--max-batch",
        str(budget.serve_max_batch),
        "--header-timeout",
        f"{budget.header_timeout_s:g}",
        "--body-timeout",
        f"{budget.body_timeout_s:g}",
        "--max-connections",
        str(budget.max_connections),
        "--login-failures",
        "1000000",
    )  # the access section sends wrong tokens by the dozen; its own app throttles
    sections: dict[str, dict] = {}
    with served_box(args.backbone, n_tokens=4, stats=True, extra=extra) as server:
        sections["load"] = _section("load", load.run, server, local, data, budget)
        sections["soak"] = _section("soak", soak.run, server, local, data, budget)
        sections["fuzz"] = _section("fuzz", fuzz.run, server, local, budget)
        sections["access"] = _section("access", access.run, server, local)
        sections["faults"] = _section("faults", faults.run, server, local, args.backbone, budget)
        sections["fairness"] = _section("fairness", fairness.run, server, budget)
        sections["slow"] = _section("slow", hostile.slow, server, budget)
        sections["abandon"] = _section("abandon", hostile.abandon, server, local, data, budget)
    sections["admission"] = _section("admission", hostile.admission, args.backbone, local, data, budget)
    sections["pixels"] = _section("pixels", pixels.run, budget)  # an image box, served in-process
    doc = {
        "suite": "reliability",
        "command": command_line(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "backbone": args.backbone or "all-MiniLM-L6-v2",
        "quick": args.quick,
        "budget": asdict(budget),
        "seconds": round(time.perf_counter() - t0, 1),
        "cpus": os.cpu_count(),
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "ok": all(s["ok"] for s in sections.values()),
        "summary": summary(sections),
        "sections": sections,
        "records": [],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "reliability.json").write_text(json.dumps(doc, indent=2) + "\n")
    from exotune.bench.reliability.report import markdown

    (out_dir / "reliability.md").write_text(markdown(doc))
    if fairness.figure(sections["fairness"], out_dir / "reliability_fairness.png"):
        print(f"figure written to {out_dir / 'reliability_fairness.png'}", file=sys.stderr)
    print((out_dir / "reliability.md").read_text())
    print(f"results written to {out_dir / 'reliability.json'}", file=sys.stderr)
    return 0 if doc["ok"] else 1


def summary(sections: dict[str, dict]) -> dict:
    """The answers the suite exists to give."""
    load, soak, fuzz = sections.get("load", {}), sections.get("soak", {}), sections.get("fuzz", {})
    faults = sections.get("faults", {})
    drills = faults.get("drills", [])
    held = {name: bool(sections.get(name, {}).get("ok")) for name in ("fairness", "slow", "admission", "abandon")}
    return {
        **{f"{name}_held": ok for name, ok in held.items()},
        "load_held": bool(load.get("ok")),
        "soak_held": bool(soak.get("ok")),
        "faults_survived": f"{sum(d['ok'] for d in drills)}/{len(drills)}",
        "bad_inputs_tried": fuzz.get("cases", 0),
        "server_errors_5xx": fuzz.get("status_classes", {}).get("5xx", 0)
        + load.get("server_errors", 0)
        + sections.get("pixels", {}).get("status_classes", {}).get("5xx", 0),
        "data_lost": faults.get("data_lost", "not measured"),
        "tampered_folders": faults.get("tampered", "not measured"),
    }

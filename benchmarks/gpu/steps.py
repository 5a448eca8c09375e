"""GPU steps: seconds per training step and peak GPU memory of DGA (both sides) and LoRA (r=8)
on one fixed batch (32 and 256 texts), in fp32 and under bf16 autocast, all in one process on one GPU.

    python benchmarks/gpu/steps.py --out benchmarks/results/gpu [--data-dir DIR] [--steps 20] [--batch-sizes 32 256]

The batch is Banking77's first training texts when the datasets are found (--data-dir, else
$EXOTUNE_DATA), else synthetic sentences of similar length (said in the results).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from exotune.boxes import load_box
from exotune.data import TextLabelData, load_dataset
from exotune.devices import autocast, resolve_device
from exotune.errors import DatasetNotFoundError
from exotune.graybox import DGAConfig
from exotune.tasks.classification import TextClassifier


def batch_of(data_dir: str | None, n: int) -> tuple[TextLabelData, str]:
    try:
        return load_dataset("banking77", "train", data_dir).head(n, 0), "banking77"
    except DatasetNotFoundError:
        sentence = "my card payment was declined again while abroad and the transfer has not arrived yet"
        words = sentence.split(" ")
        texts = [" ".join(words[i % 5 : i % 5 + 8 + i % 7]) for i in range(n)]
        return TextLabelData(texts, [i % 4 for i in range(n)], ["a", "b", "c", "d"], "synthetic"), "synthetic"


def build(method: str, labels: list[str], device: torch.device):
    if method == "dga":
        return TextClassifier(load_box(None, device=device), labels, DGAConfig()).to(device)
    from exotune.whitebox import WhiteBoxClassifier, WhiteBoxConfig

    return WhiteBoxClassifier.from_backbone(None, labels, WhiteBoxConfig.lora(r=8)).to(device)


def time_steps(model, batch, precision: str, device: torch.device, steps: int, warmup: int = 3) -> dict:
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    model.train()
    gpu = device.type == "cuda"  # --device cpu: a smoke test of this script (no GPU memory to read)
    if gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            loss = model.loss(batch)
        loss.backward()
        optimizer.step()
        if gpu:
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {
        "seconds_per_step": statistics.median(times),
        "seconds_per_step_p90": sorted(times)[int(0.9 * len(times))],
        "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if gpu else float("nan"),
        "trainable_params": sum(p.numel() for p in params),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/gpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    args = p.parse_args()
    device = resolve_device(args.device)
    records = []
    for method, batch_size, precision in itertools.product(("dga", "lora"), args.batch_sizes, ("fp32", "bf16")):
        batch, source = batch_of(args.data_dir, batch_size)
        model = build(method, batch.label_names, device)
        rec = {
            "method": method,
            "precision": precision,
            "batch_size": len(batch),
            **time_steps(model, batch, precision, device, args.steps),
        }
        print(
            f"[gpu] {method} batch {len(batch)} {precision}: {rec['seconds_per_step'] * 1000:.1f} ms/step, "
            f"peak {rec['peak_gpu_mb']:.0f} MB",
            flush=True,
        )
        records.append(rec)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    doc = {
        "suite": "gpu-steps",
        "date": time.strftime("%Y-%m-%d"),
        "device": name,
        "torch": torch.__version__,
        "batch": source,
        "steps_timed": args.steps,
        "records": records,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_steps.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# GPU steps\n",
        f"{doc['date']}, {doc['device']}, torch {doc['torch']}; one fixed batch of {source} texts per row, "
        f"median of {args.steps} steps after 3 warm-up steps, one process.\n",
        "| method | batch | precision | trainable params | ms/step (median) | ms/step (p90) | peak GPU MB |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['batch_size']} | {r['precision']} | {r['trainable_params']:,} | "
        f"{r['seconds_per_step'] * 1000:.1f} | "
        f"{r['seconds_per_step_p90'] * 1000:.1f} | {r['peak_gpu_mb']:,.0f} |"
        for r in records
    ]
    (out / "gpu_steps.md").write_text("\n".join(lines) + "\n")
    print((out / "gpu_steps.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

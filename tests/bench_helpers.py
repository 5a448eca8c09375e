"""A benchmark suite's quick pass from the command line, and the document it writes, checked for
the keys every suite's records carry."""

from __future__ import annotations

import json

from exotune.cli import main

DOC_KEYS = {"suite", "command", "date", "machine", "backbone", "records"}
RECORD_KEYS = {
    "dataset",
    "split",
    "method",
    "variant",
    "access",
    "metric",
    "mean",
    "std",
    "seeds",
    "trainable_params",
    "train_seconds",
    "seconds_per_step",
    "peak_memory_mb",
}


def quick_bench(suite: str, data_dir, out, *args: str, record_keys: set[str] = RECORD_KEYS) -> dict:
    """``exotune bench SUITE --quick`` on ``data_dir`` into ``out`` (``args``: more options): the
    ``SUITE.json`` it wrote, its document and every record holding the keys they must."""
    assert main(["bench", suite, "--quick", "--data-dir", str(data_dir), "--out-dir", str(out), *args]) == 0
    doc = json.loads((out / f"{suite}.json").read_text())
    assert set(doc) >= DOC_KEYS
    assert all(record_keys <= set(r) for r in doc["records"])
    return doc

"""The EA suite end to end on tiny data: datasets chosen, SSMs kept, latency measured."""

from __future__ import annotations

import json
import random

import pytest

import exotune.bench.ea
from exotune.bench.common import BenchOptions
from exotune.cli import main
from exotune.errors import ConfigError

from .conftest import WORDS


def _write_datasets(root):
    rng = random.Random(0)
    cats = ["card", "sky", "leaf"]

    def texts(n, tag):
        rows = []
        for i in range(n):
            y = rng.randrange(len(cats))
            rows.append((f"the {rng.choice(WORDS)} {cats[y]} is {rng.choice(WORDS)} {tag}{i}", y))
        return rows

    (root / "banking77").mkdir(parents=True)
    (root / "banking77" / "categories.json").write_text(json.dumps(cats))
    for split, n in (("train", 90), ("test", 30)):
        lines = ["text,category", *(f"{t},{cats[y]}" for t, y in texts(n, split))]
        (root / "banking77" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (root / "sst2").mkdir()
    for name, n in (("train.tsv", 80), ("dev.tsv", 30)):
        rows = [
            (f"a {'fast' if y else 'slow'} {rng.choice(WORDS)} car {name[:3]}{i}", y)
            for i, y in ((i, rng.randrange(2)) for i in range(n))
        ]
        (root / "sst2" / name).write_text("label\tsentence\n" + "".join(f"{y}\t{t}\n" for t, y in rows))


def test_bench_ea_quick_on_two_datasets(tiny_backbone, tmp_path, monkeypatch):
    data, out = tmp_path / "data", tmp_path / "results"
    _write_datasets(data)
    monkeypatch.setattr(exotune.bench.ea, "run_isolated", lambda fn, *args: fn(*args))  # in process: faster
    assert (
        main(
            [
                "bench",
                "ea",
                "--quick",
                "--datasets",
                "banking77",
                "sst2",
                "--data-dir",
                str(data),
                "--backbone",
                str(tiny_backbone),
                "--out-dir",
                str(out),
            ]
        )
        == 0
    )
    doc = json.loads((out / "ea.json").read_text())
    assert doc["datasets"] == ["banking77", "sst2"] and doc["seeds"] == [0]
    acc = [r for r in doc["records"] if r["metric"] == "accuracy"]
    for dataset in ("banking77", "sst2"):
        mine = {(r["method"], r["variant"]) for r in acc if r["dataset"] == dataset}
        assert {m for m, _ in mine} == {"ea", "lm", "ssm", "linear-probe", "lora"}
        assert ("ssm", "embeddings: embedding-lr-raw alone") in mine
        assert ("ea", "embeddings, ssm-first, budget=0.3") in mine and ("ea", "label-only, lm-first, budget=1") in mine
    sst2 = next(r for r in acc if r["dataset"] == "sst2" and r["method"] == "ea")
    assert sst2["label_template"] == "a {} movie review" and sst2["n_test"] == 30
    table = doc["ssm_selection"]["sst2, embeddings, seed 0"]
    assert [r["name"] for r in table] == list(exotune.bench.ea.CANDIDATES) and sum(r["kept"] for r in table) >= 1
    assert all("val_accuracy" in r and r["why"] for r in table)
    # latency: EA at every budget of the table, the LM alone and LoRA, per dataset
    lat = doc["latency"]
    for dataset in ("banking77", "sst2"):
        systems = {(r["system"], r["variant"]) for r in lat if r["dataset"] == dataset}
        assert ("lora", "r=8, served locally") in systems and ("lm", "label-only") in systems
        assert ("ea", "embeddings, ssm-first, budget=0.3") in systems
    assert all(0 < r["p50_ms"] <= r["p99_ms"] and r["n"] == 20 for r in lat)
    label_only = [r for r in lat if r["system"] == "ea" and r["variant"].startswith("label-only, lm-first")]
    assert all(r["lm_call_share"] == 1.0 for r in label_only)
    embedding = [r for r in lat if r["system"] == "ea" and r["variant"].startswith("embeddings")]
    assert all(r["box_call_share"] == 1.0 for r in embedding)  # the SSMs read the box's embeddings
    md = (out / "ea.md").read_text()
    assert "## sst2" in md and "## Latency per input" in md and "## SSMs kept" in md
    assert (out / "ea_cost_quality.png").is_file()
    # a second call with fewer datasets: the EA runs come from the run log, none is redone

    def no_ea_runs(fn, *args):
        assert fn is not exotune.bench.ea.ea_run, "an EA run was redone"
        return fn(*args)

    monkeypatch.setattr(exotune.bench.ea, "run_isolated", no_ea_runs)
    assert (
        main(
            [
                "bench",
                "ea",
                "--quick",
                "--datasets",
                "sst2",
                "--data-dir",
                str(data),
                "--backbone",
                str(tiny_backbone),
                "--out-dir",
                str(out),
            ]
        )
        == 0
    )
    again = json.loads((out / "ea.json").read_text())
    assert {r["dataset"] for r in again["records"]} == {"sst2"}
    assert again["ssm_selection"]["sst2, embeddings, seed 0"] == table


def test_bench_ea_rejects_an_unknown_dataset(tmp_path):
    with pytest.raises(ConfigError, match="no dataset"):
        exotune.bench.ea.run(BenchOptions("ea", datasets=["imdb"], quick=True))

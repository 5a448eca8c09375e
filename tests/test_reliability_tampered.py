"""The reliability suite's tampered-folder drills, run directly (the full suite serves a box)."""

from __future__ import annotations

from exotune.bench.reliability import tampered
from exotune.tasks.classification import TextClassifier

from .conftest import colour_data
from .ea_fakes import FakeOpenAI, colour_task, ea_fit, one_blas_thread, write_csv  # noqa: F401


def test_no_tampered_folder_is_loaded_or_followed(tiny_box, tmp_path, capsys):
    data = colour_data(20)
    adapter = TextClassifier(tiny_box, data.label_names).save_pretrained(tmp_path / "adapter")
    csv = write_csv(tmp_path / "train.csv", colour_task(60, seed=1))
    with FakeOpenAI() as server:
        lm = ["--lm", "openai-chat", "--base-url", server.base_url, "--model", "fake"]
        assert ea_fit(csv, lm, tmp_path / "ea") == 0
    records = tampered.drills(adapter, tiny_box, tmp_path / "ea", tmp_path / "work")
    assert len(records) == len(tampered.ADAPTER) + len(tampered.EA) + 1
    assert all(r["ok"] for r in records), [r for r in records if not r["ok"]]
    assert (
        tampered.verdict(records) == f"no tampered folder is loaded or followed ({len(records)}/{len(records)} refused)"
    )
    assert tampered.verdict([*records, {"drill": "x", "ok": False}]).startswith("1/")

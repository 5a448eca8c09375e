"""The reliability suite's tampered-folder drills, run directly (the full suite serves a box)."""

from __future__ import annotations

from exotune.bench.reliability import tampered
from exotune.cli import main
from exotune.tasks.classification import TextClassifier

from .conftest import colour_data
from .ea_fakes import FakeOpenAI, colour_task, one_blas_thread  # noqa: F401


def test_no_tampered_folder_is_loaded_or_followed(tiny_box, tmp_path, capsys):
    data = colour_data(20)
    adapter = TextClassifier(tiny_box, data.label_names).save_pretrained(tmp_path / "adapter")
    train = colour_task(60, seed=1)
    csv = tmp_path / "train.csv"
    csv.write_text(
        "text,label\n"
        + "".join(f"{t},{train.label_names[y]}\n" for t, y in zip(train.texts, train.labels, strict=True))
    )
    with FakeOpenAI() as server:
        assert (
            main(
                [
                    "ea",
                    "fit",
                    "--file",
                    str(csv),
                    "--lm",
                    "openai-chat",
                    "--base-url",
                    server.base_url,
                    "--model",
                    "fake",
                    "--output-dir",
                    str(tmp_path / "ea"),
                    "--clusters",
                    "2",
                    "--cv-folds",
                    "2",
                    "--val-fraction",
                    "0.3",
                ]
            )
            == 0
        )
    records = tampered.drills(adapter, tiny_box, tmp_path / "ea", tmp_path / "work")
    assert len(records) == len(tampered.ADAPTER) + len(tampered.EA) + 1
    assert all(r["ok"] for r in records), [r for r in records if not r["ok"]]
    assert (
        tampered.verdict(records) == f"no tampered folder is loaded or followed ({len(records)}/{len(records)} refused)"
    )
    assert tampered.verdict([*records, {"drill": "x", "ok": False}]).startswith("1/")

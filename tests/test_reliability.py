"""``exotune bench reliability --quick`` on the tiny model, as CI runs it: a served box under
16 concurrent clients, a short soak, property-based bad input on every route, the access
matrix, the fault drills (server killed mid-training, a failing black box, a crash while
probing it, corrupted files) and the attacks (a heavy token against a light one, slow and
many connections, concurrent training forwards, abandoned forwards). Every section must
hold; nothing may be lost."""

from __future__ import annotations

import json

import pytest

from exotune.cli import main

pytest.importorskip("fastapi")
pytest.importorskip("hypothesis")
pytest.importorskip("schemathesis")


def _failures(doc: dict) -> dict:
    return {
        name: section.get("error")
        or section.get("problems")
        or section.get("failed")
        or [d for d in section.get("drills", []) if not d["ok"]]
        for name, section in doc["sections"].items()
        if not section["ok"]
    }


@pytest.mark.slow
def test_reliability_suite_quick(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("EXOTUNE_DATA", str(tmp_path / "no-datasets"))  # the synthetic task: same run everywhere
    code = main(["bench", "reliability", "--quick", "--backbone", str(tiny_backbone), "--out-dir", str(tmp_path)])
    doc = json.loads((tmp_path / "reliability.json").read_text())
    assert code == 0 and doc["ok"], _failures(doc)
    summary, sections = doc["summary"], doc["sections"]
    assert summary["data_lost"] == "none" and summary["server_errors_5xx"] == 0
    assert (
        summary["bad_inputs_tried"] >= 100
        and summary["faults_survived"].split("/")[0] == summary["faults_survived"].split("/")[1]
    )
    assert sections["load"]["clients"] == 16 and sections["load"]["failed"] == 0
    assert sections["soak"]["handles_after_ttl"] == 0
    assert all(summary[f"{name}_held"] for name in ("fairness", "slow", "admission", "abandon"))
    assert (
        sections["slow"]["trickled_body"].startswith("HTTP/1.1 408") and sections["abandon"]["handles_after_ttl"] == 0
    )
    assert sections["fairness"]["slowdown"] <= sections["fairness"]["slowdown_bound"]
    assert (tmp_path / "reliability.md").read_text().startswith("# reliability (quick)")

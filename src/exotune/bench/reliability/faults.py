"""Faults, each a drill with a pass rule; together they measure what a failure can lose.

- ``server killed``: ``exotune train --remote`` against a server that SIGKILLs itself on the
  n-th backward call. The command must exit with a clear error (no trace) after saving the
  last completed step; ``exotune train --resume`` against a restarted server must end with
  the same steps and the same weights as an uninterrupted run: nothing lost.
- ``black box``: an OpenAI-compatible endpoint that answers 429, 500, nothing (timeout), a
  reset connection, HTML, cut JSON or an empty object, once (the client retries and gets the
  answer) and then for good (a clear ``BlackBoxError`` after the retries); a 400 is not retried.
- ``probing crash``: ``exotune ea fit`` SIGKILLed while probing; the rerun must ask again for
  nothing the first run had received and stored.
- ``corrupted files``: truncated, emptied, bit-flipped, garbled or missing adapter files, a
  corrupted checkpoint and a corrupted EA folder: a clear error each, never a silent load.
- ``tampered folders`` (:mod:`~exotune.bench.reliability.tampered`): files added or unlisted,
  hostile values behind re-recorded checksums, an lm.json that redirects ``ea predict``: each
  refused, none loaded or followed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from exotune.bench.reliability import tampered
from exotune.ea.testing import FAULT_DRILLS, FakeOpenAI, colour_task, fault_drill

CLI_TIMEOUT_S = 600


def _cli(argv: list[str], token: str | None = None, key: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if token:
        env["EXOTUNE_TOKEN"] = token
    if key:
        env["OPENAI_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "exotune.cli", *argv], capture_output=True, text=True, env=env, timeout=CLI_TIMEOUT_S
    )


def _clear_failure(proc) -> tuple[bool, str]:
    """Exit status 2 with an 'error:' line and no Python trace: what a user should see."""
    err = proc.stderr
    line = next((x for x in err.splitlines() if x.startswith("error:")), "")
    return proc.returncode == 2 and bool(line) and "Traceback" not in err, line[:300]


def _write_csv(path: Path, data) -> Path:
    path.write_text(
        "text,label\n" + "".join(f"{t},{data.label_names[y]}\n" for t, y in zip(data.texts, data.labels, strict=True))
    )
    return path


def train_argv(csv: Path, budget) -> list[str]:
    """``exotune train`` of the drills: ``csv`` at the budget's epochs and batch size, quiet (the
    box, ``--remote``, and the run folder are the caller's)."""
    return [
        "train",
        "--file",
        str(csv),
        "--epochs",
        str(budget.train_epochs),
        "--batch-size",
        str(budget.train_batch),
        "--val-fraction",
        "0.25",
        "--patience",
        "5",
        "--lr",
        "0.01",
        "--seed",
        "0",
        "--quiet",
    ]


# -- the server killed mid-training ------------------------------------------------------------


def server_killed(server, backbone, budget, work: Path) -> dict:
    from exotune.artifacts import read_tensors
    from exotune.bench.served import free_port, served_box

    csv = _write_csv(work / "train.csv", colour_task(budget.train_rows, seed=5))
    argv = train_argv(csv, budget)
    reference = _cli([*argv, "--remote", server.url, "--output-dir", str(work / "reference")], server.token)
    if reference.returncode != 0:
        return {"drill": "server killed mid-training", "ok": False, "error": reference.stderr[-800:]}
    tokens, port = [secrets.token_urlsafe(24)], free_port()
    run_dir = work / "run"
    with served_box(backbone, tokens=tokens, port=port, crash_after_backward=budget.crash_at_step) as dying:
        crashed = _cli([*argv, "--remote", dying.url, "--output-dir", str(run_dir)], tokens[0])
        dying.proc.wait(timeout=30)
        killed = dying.proc.returncode == -signal.SIGKILL
    clear, message = _clear_failure(crashed)
    saved = (
        json.loads((run_dir / "last" / "trainer_state.json").read_text())["state"]["global_step"]
        if (run_dir / "last" / "trainer_state.json").is_file()
        else None
    )
    with served_box(backbone, tokens=tokens, port=port) as again:
        resumed = _cli([*argv, "--remote", again.url, "--output-dir", str(run_dir), "--resume"], tokens[0])
    ref_summary = json.loads((work / "reference" / "summary.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text()) if resumed.returncode == 0 else {}
    diffs = {}
    if resumed.returncode == 0:
        for name in ("best/adapter_model.safetensors", "last/checkpoint.safetensors"):
            a, b = read_tensors(work / "reference" / name), read_tensors(run_dir / name)
            if set(a) != set(b):
                diffs[name] = float("inf")
                continue
            diffs[name] = max(
                (
                    float((a[k].double() - b[k].double()).abs().max())
                    for k in a
                    if a[k].is_floating_point() and a[k].numel()
                ),
                default=0.0,
            )
    same = bool(diffs) and all(d <= 1e-4 for d in diffs.values())
    steps_lost = (ref_summary["steps"] - summary["steps"]) if summary else None
    ok = (
        killed
        and clear
        and saved == budget.crash_at_step - 1
        and resumed.returncode == 0
        and steps_lost == 0
        and same
        and summary.get("best_val") == ref_summary["best_val"]
    )
    return {
        "drill": "server killed mid-training",
        "ok": ok,
        "server_killed_on_backward": budget.crash_at_step,
        "server_sigkilled": killed,
        "client_error": message,
        "client_exit": crashed.returncode,
        "checkpoint_step": saved,
        "resume_exit": resumed.returncode,
        "steps_reference": ref_summary["steps"],
        "steps_resumed": summary.get("steps"),
        "steps_lost": steps_lost,
        "max_weight_difference": diffs,
        "val_accuracy": [ref_summary["best_val"], summary.get("best_val")],
        "resume_error": resumed.stderr[-500:] if resumed.returncode else "",
    }


# -- a crash while probing the black box -----------------------------------------------------


def probing_crash(budget, work: Path, concurrency: int) -> dict:
    """Kill ``exotune ea fit`` when request n+1 arrives; rerun; compare what each run asked."""
    from exotune.data import load_text_file
    from exotune.ea import OpenAIChatClient, ResponseCache

    data = colour_task(budget.probe_rows, seed=7)
    csv = _write_csv(work / f"probe{concurrency}.csv", data)
    cache, out = work / f"probe{concurrency}.sqlite", work / f"ea{concurrency}"
    with FakeOpenAI() as lm:
        argv = [
            "ea",
            "fit",
            "--file",
            str(csv),
            "--lm",
            "openai-chat",
            "--base-url",
            lm.base_url,
            "--model",
            "fake",
            "--output-dir",
            str(out),
            "--cache",
            str(cache),
            "--clusters",
            "2",
            "--cv-folds",
            "2",
            "--val-fraction",
            "0.25",
            "--concurrency",
            str(concurrency),
            "--max-retries",
            "1",
            "--timeout",
            "20",
        ]
        env = dict(os.environ, OPENAI_API_KEY="k")
        child = subprocess.Popen(
            [sys.executable, "-m", "exotune.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        killed = threading.Event()

        def kill_at(n: int):
            if n == budget.probe_crash_at + 1 and not killed.is_set():
                os.kill(child.pid, signal.SIGKILL)
                killed.set()
            return not killed.is_set()  # after the kill: no answer to anyone

        lm.on_request = kill_at
        child.communicate(timeout=CLI_TIMEOUT_S)
        time.sleep(0.5)  # answers in flight when the client died have been written by now
        lm.on_request = None
        first_asked, answered_first = len(lm.requests), [t for t in lm.answered]
        client = OpenAIChatClient("fake", base_url=lm.base_url)  # the CLI's client: its cache key
        labels = load_text_file(csv, "text", "label").label_names  # in the order the CLI reads them
        stored = set(ResponseCache(cache).get_many(client.fingerprint(labels), data.texts))
        rerun = _cli(argv, key="k")
        asked_again = [t for _, t in lm.requests[first_asked:]]
    again = set(asked_again)
    stored_asked_again = sorted(stored & again)
    in_flight = sorted((set(answered_first) - stored) & again)
    probe = json.loads(rerun.stdout).get("probe", {}) if rerun.returncode == 0 else {}
    ok = (
        child.returncode == -signal.SIGKILL
        and rerun.returncode == 0
        and not stored_asked_again
        and len(in_flight) <= concurrency - 1
        and probe.get("calls") == len(data) - len(stored)
    )
    return {
        "drill": f"probing crash (concurrency {concurrency})",
        "ok": ok,
        "killed_at_request": budget.probe_crash_at + 1,
        "answered_before_kill": len(answered_first),
        "stored_before_kill": len(stored),
        "asked_on_rerun": len(asked_again),
        "stored_asked_again": len(stored_asked_again),
        "in_flight_asked_again": len(in_flight),
        "rerun_exit": rerun.returncode,
        "rerun_calls": probe.get("calls"),
        "rerun_cache_hits": probe.get("cache_hits"),
        "rerun_error": rerun.stderr[-500:] if rerun.returncode else "",
    }


# -- corrupted files -------------------------------------------------------------------------


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def _garble_header(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[8:16] = b"#" * 8
    path.write_bytes(bytes(raw))


def _edit_json(path: Path) -> None:
    cfg = json.loads(path.read_text())
    cfg["task"]["temperature"] = cfg["task"].get("temperature", 0.05) * 2  # still valid JSON, other meaning
    path.write_text(json.dumps(cfg))


W, C, S = "adapter_model.safetensors", "adapter_config.json", "checksums.sha256"
#: name -> (file, what is done to it); shared with the unit tests
CORRUPTIONS = {
    "weights truncated to half": (W, lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
    "weights emptied": (W, lambda p: p.write_bytes(b"")),
    "weights: one bit flipped in tensor data": (W, lambda p: _flip(p, -3)),
    "weights: header garbled": (W, _garble_header),
    "weights missing": (W, lambda p: p.unlink()),
    "config truncated": (C, lambda p: p.write_text(p.read_text()[: len(p.read_text()) // 2])),
    "config: a value changed, still valid JSON": (C, _edit_json),
    "config missing": (C, lambda p: p.unlink()),
    "checksums: one digit changed": (
        S,
        lambda p: p.write_text(("1" if p.read_text()[0] != "1" else "2") + p.read_text()[1:]),
    ),
    "checksums emptied": (S, lambda p: p.write_text("")),
}


def corrupt(folder: Path, case: str, into: Path) -> Path:
    """A copy of ``folder`` with ``CORRUPTIONS[case]`` applied."""
    shutil.copytree(folder, into)
    name, damage = CORRUPTIONS[case]
    damage(into / name)
    return into


def corrupted_files(
    adapter: Path, box, server, budget, work: Path, checkpoint_run: Path | None, ea_folder: Path | None
) -> list[dict]:
    from exotune.errors import ExotuneError
    from exotune.tasks.classification import TextClassifier

    out = []
    for i, case in enumerate(CORRUPTIONS):
        folder = corrupt(adapter, case, work / f"corrupt{i}")
        rec = {"drill": f"corrupted adapter: {case}"}
        try:
            TextClassifier.from_pretrained(folder, box)
            rec["api"], api_ok = "LOADED", False
        except ExotuneError as err:
            rec["api"], api_ok = f"{type(err).__name__}: {err}"[:300], True
        cli_ok = True
        if budget.cli_corruptions is None or i < budget.cli_corruptions:
            proc = _cli(
                ["predict", "--remote", server.url, "--adapter", str(folder), "--text", "a red car"], server.token
            )
            cli_ok, rec["cli"] = _clear_failure(proc)
        rec["ok"] = api_ok and cli_ok
        out.append(rec)
    if checkpoint_run is not None and (checkpoint_run / "last").is_dir():
        run = work / "corrupt-run"
        shutil.copytree(checkpoint_run, run)
        _flip(run / "last" / "checkpoint.safetensors", -3)
        argv = [*train_argv(work / "train.csv", budget), "--remote", server.url, "--output-dir", str(run), "--resume"]
        proc = _cli(argv, server.token)
        ok, line = _clear_failure(proc)
        out.append(
            {
                "drill": "corrupted checkpoint: one bit flipped, then --resume",
                "ok": ok and "corrupted" in line,
                "cli": line,
            }
        )
    if ea_folder is not None and ea_folder.is_dir():
        from exotune.ea import EasyAdapter

        bad = work / "corrupt-ea"
        shutil.copytree(ea_folder, bad)
        _flip(bad / "router.skops", -40)
        try:
            EasyAdapter.from_pretrained(bad)
            rec = {"api": "LOADED", "ok": False}
        except ExotuneError as err:
            rec = {"api": f"{type(err).__name__}: {err}"[:300], "ok": "corrupted" in str(err)}
        out.append({"drill": "corrupted EA folder: one bit flipped in router.skops", **rec})
    return out


# -- all of it ---------------------------------------------------------------------------------


def run(server, local, backbone, budget) -> dict:
    with tempfile.TemporaryDirectory(prefix="exotune-faults-") as tmp:
        work = Path(tmp)
        drills = [server_killed(server, backbone, budget, work)]
        print(
            f"[bench]   {drills[-1]['drill']}: {'held' if drills[-1]['ok'] else 'FAILED'}", file=sys.stderr, flush=True
        )
        drills += [fault_drill(kind, client) for kind, client in FAULT_DRILLS]
        for concurrency in budget.probe_concurrency:
            drills.append(probing_crash(budget, work, concurrency))
        drills += corrupted_files(
            work / "run" / "best", local, server, budget, work, work / "run", work / f"ea{budget.probe_concurrency[-1]}"
        )
        tampered_drills = tampered.drills(
            work / "run" / "best", local, work / f"ea{budget.probe_concurrency[-1]}", work
        )
        drills += tampered_drills
    for d in drills:  # the temporary folder's name says nothing: keep the messages short
        for key in ("api", "cli", "client_error", "rerun_error", "resume_error"):
            if isinstance(d.get(key), str):
                d[key] = d[key].replace(f"{work}/", "")
    silent = [d["drill"] for d in drills if d.get("api") == "LOADED"]
    killed = drills[0]
    probes = [d for d in drills if d["drill"].startswith("probing crash")]
    lost = []
    if killed.get("steps_lost") != 0 or not killed["ok"]:
        lost.append(
            f"training: {killed.get('steps_lost')} steps lost, weights differ by {killed.get('max_weight_difference')}"
        )
    lost += [
        f"{d['drill']}: {d['stored_asked_again']} stored answers paid for again"
        for d in probes
        if d.get("stored_asked_again")
    ]
    lost += [f"silently loaded: {x}" for x in silent]
    return {
        "ok": all(d["ok"] for d in drills),
        "drills": drills,
        "data_lost": lost or "none",
        "calls_in_flight_asked_again": {d["drill"]: d.get("in_flight_asked_again") for d in probes},
        "tampered": tampered.verdict(tampered_drills),
    }

"""Tampered folders: what someone who edits a shared folder can try, each a drill that must be
refused (an ``ExotuneError``, never a load, a crash or a request the user did not confirm).

- the list of files: a file added, a checksum line deleted, the list deleted, lm.json edited;
- values behind re-recorded checksums (the list guards against corruption, not against whoever
  rewrites it): configs asking for huge allocations or holding wrong types, ``dga: null``, deeply
  nested JSON, a box spec edited without its fingerprint, NaN or integer tensors;
- an EA folder: skops files holding trusted types with hostile contents, and an lm.json naming
  another server and another secret's variable (``ea predict`` must not follow it unconfirmed).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

from exotune.artifacts import write_checksums

W, C, S = "adapter_model.safetensors", "adapter_config.json", "checksums.sha256"


def _json(name: str, change):
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))

    return edit


def _tensors(change):
    def edit(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        state = load_file(str(folder / W))
        change(state)
        save_file(state, str(folder / W))

    return edit


def _drop_line(name: str):
    def edit(folder: Path) -> None:
        text = (folder / S).read_text().splitlines()
        (folder / S).write_text("".join(f"{line}\n" for line in text if not line.endswith(f"  {name}")))

    return edit


def _deep(folder: Path) -> None:
    text = (folder / C).read_text().rstrip()
    (folder / C).write_text(text[:-1] + ', "deep": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "}")


def _skops(name: str, change):
    def edit(folder: Path) -> None:
        import skops.io as sio

        obj = sio.load(folder / name, trusted=sio.get_untrusted_types(file=folder / name))
        change(obj)
        (folder / name).write_bytes(sio.dumps(obj))

    return edit


def _gate_swapped(router) -> None:
    import numpy as np
    from sklearn.cluster import KMeans

    router.gate_ = KMeans(n_clusters=2, n_init=1, random_state=0).fit(np.random.default_rng(0).random((8, 5)))


def _set(*path):
    *keys, last, value = path

    def change(data):
        for k in keys:
            data = data[k]
        data[last] = value

    return change


#: name -> (what is done to a copy of the adapter folder, whether the checksums are re-recorded)
ADAPTER = {
    "a file added": (lambda f: (f / "notes.txt").write_text("hello"), False),
    "weights edited, their checksum line deleted": (
        lambda f: (_tensors(lambda s: s[next(iter(s))].mul_(-1))(f), _drop_line(W)(f)),
        False,
    ),
    "checksum list deleted": (lambda f: (f / S).unlink(), False),
    "extra_tokens: 10**9": (
        _json(C, _set("dga", "input_adapter", {"type": "text-shift", "extra_tokens": 10**9})),
        True,
    ),
    "temperature: 'hot'": (_json(C, _set("task", "temperature", "hot")), True),
    "dga: null": (_json(C, _set("dga", None)), True),
    "JSON nested 100,000 deep": (_deep, True),
    "box_spec edited, fingerprint kept": (_json(C, _set("box_spec", "output_dim", 4096)), True),
    "NaN prototypes": (_tensors(lambda s: s["head.prototypes"].fill_(float("nan"))), True),
    "int64 prototypes": (_tensors(lambda s: s.update({"head.prototypes": s["head.prototypes"].long()})), True),
}
EA = {
    "lm.json edited": (_json("lm.json", _set("base_url", "http://127.0.0.1:9/v1")), False),
    "router threshold '-Infinity' (a string)": (
        _skops("router.skops", lambda r: setattr(r, "threshold_", "-Infinity")),
        True,
    ),
    "router gate swapped for another trusted estimator": (_skops("router.skops", _gate_swapped), True),
    "ea_config n_global_ssms: 10**9": (_json("ea_config.json", _set("n_global_ssms", 10**9)), True),
}


def _attempt(load) -> tuple[bool, str]:
    from exotune.errors import ExotuneError

    try:
        load()
    except ExotuneError as err:
        return True, f"{type(err).__name__}: {err}"[:300]
    except Exception as err:  # a crash is not a refusal
        return False, f"CRASH {type(err).__name__}: {err}"[:300]
    return False, "LOADED"


def _copy(folder: Path, into: Path, damage, rerecord: bool) -> Path:
    shutil.copytree(folder, into)
    damage(into)
    if rerecord:
        write_checksums(into)
    return into


def _lm_redirect(ea_folder: Path, into: Path) -> dict:
    """lm.json names another server and another secret's variable, checksums re-recorded:
    ``ea predict`` must stop and ask; confirmed, it must still send only the user's own key."""
    import os

    from exotune.cli import main
    from exotune.ea.testing import FakeOpenAI

    folder = shutil.copytree(ea_folder, into)
    with FakeOpenAI() as evil:
        lm = json.loads((folder / "lm.json").read_text())
        (folder / "lm.json").write_text(
            json.dumps(
                {
                    **lm,
                    "base_url": evil.base_url,
                    "api_key_env": "SOME_SECRET",
                    "cache": str(into.parent / "evil.sqlite"),
                }
            )
        )
        write_checksums(folder)
        old = {k: os.environ.get(k) for k in ("SOME_SECRET", "OPENAI_API_KEY")}
        os.environ.update(SOME_SECRET="s3cret", OPENAI_API_KEY="users-key")
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(["ea", "predict", "--adapter", str(folder), "--text", "a red car", "--max-retries", "0"])
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k)
                else:
                    os.environ[k] = v
        secret_sent = any("s3cret" in (a or "") for a in evil.authorizations)
        ok = code == 2 and not evil.requests and not secret_sent and not (into.parent / "evil.sqlite").exists()
    line = next((x for x in err.getvalue().splitlines() if x.startswith("error:")), "")
    return {
        "drill": "tampered EA folder: lm.json redirected to another server and secret",
        "ok": ok,
        "followed": bool(evil.requests),
        "secret_sent": secret_sent,
        "cli": line[:300],
    }


def drills(adapter: Path, box, ea_folder: Path | None, work: Path) -> list[dict]:
    """Every tampering case against copies of ``adapter`` (and ``ea_folder``, when given)."""
    from exotune.tasks.classification import TextClassifier

    out = []
    for i, (case, (damage, rerecord)) in enumerate(ADAPTER.items()):
        folder = _copy(adapter, work / f"tampered{i}", damage, rerecord)
        ok, message = _attempt(lambda f=folder: TextClassifier.from_pretrained(f, box))
        out.append({"drill": f"tampered adapter: {case}", "ok": ok, "api": message})
    if ea_folder is not None and (ea_folder / "lm.json").is_file():
        from exotune.ea import EasyAdapter

        for i, (case, (damage, rerecord)) in enumerate(EA.items()):
            folder = _copy(ea_folder, work / f"tampered-ea{i}", damage, rerecord)
            ok, message = _attempt(lambda f=folder: EasyAdapter.from_pretrained(f))
            out.append({"drill": f"tampered EA folder: {case}", "ok": ok, "api": message})
        out.append(_lm_redirect(ea_folder, work / "tampered-ea-lm"))
    return out


def verdict(records: list[dict]) -> str:
    held = sum(r["ok"] for r in records)
    if held == len(records):
        return f"no tampered folder is loaded or followed ({held}/{len(records)} refused)"
    return f"{len(records) - held}/{len(records)} tampered folders loaded or followed: " + "; ".join(
        r["drill"] for r in records if not r["ok"]
    )

"""``exotune serve`` in a subprocess on 127.0.0.1, and what the suites read of that process.

``served_box`` starts the real command (``python -m exotune.cli serve``) and waits for it to
answer. With ``stats`` or ``crash_after_backward`` it starts this module instead: the same
app, built by the same ``build_server``, plus one owner-side instrument (the handle store's
size written to a file once a second; or a SIGKILL of its own process on the n-th backward
call, to drill a server dying mid-training). Nothing here is reachable over HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# The owner secret of every served box the suites start: fixed, so that a suite's local reference
# box (``load_box(..., owner_secret=BENCH_OWNER_SECRET)``) is the served one, in the same basis,
# and a restarted server keeps its predecessor's basis, as an owner keeping the secret file does.
BENCH_OWNER_SECRET = "exotune-bench-owner-secret-0001"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    """A running server: its URL, the tokens it accepts, its process and its stats file."""

    url: str
    tokens: list[str]
    proc: subprocess.Popen
    stats: Path | None = None
    port: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def token(self) -> str:
        return self.tokens[0]

    def handle_stats(self) -> dict | None:
        """The last line the server wrote: {"t", "handles", "handle_bytes"}."""
        if self.stats is None or not self.stats.is_file():
            return None
        with self.stats.open("rb") as f:  # the file grows all run long: read its tail, not all of it
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode().splitlines()
        return json.loads(lines[-1]) if lines else None


@contextmanager
def served_box(
    backbone: str | None,
    stateless: bool = False,
    level: str = "dark-gray",
    *,
    tokens: list[str] | None = None,
    n_tokens: int = 1,
    port: int | None = None,
    extra: tuple[str, ...] = (),
    stats: bool = False,
    crash_after_backward: int | None = None,
    rate: float = 100000,
    timeout_s: float = 180.0,
):
    """Start a served box on 127.0.0.1 in a subprocess; yield a ``Served``; stop it after.

    ``tokens`` (else ``n_tokens`` fresh ones) go in its tokens file; ``extra`` are more
    ``exotune serve`` arguments; ``port`` lets a restarted server take its predecessor's place.
    """
    import httpx

    tokens = list(tokens) if tokens else [secrets.token_urlsafe(24) for _ in range(n_tokens)]
    port = port or free_port()
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "tokens"
        token_file.write_text("\n".join(tokens) + "\n")
        secret_file = Path(tmp) / "owner-secret"
        secret_file.write_text(BENCH_OWNER_SECRET + "\n")
        instrumented = stats or crash_after_backward is not None
        cmd = [sys.executable, "-m", "exotune.bench.served" if instrumented else "exotune.cli"]
        cmd += ([] if instrumented else ["serve"]) + [
            "--port",
            str(port),
            "--tokens-file",
            str(token_file),
            "--rate",
            str(rate),
            "--burst",
            str(int(rate)),
            "--level",
            level,
            "--owner-secret-file",
            str(secret_file),
            *extra,
        ]
        stats_path = Path(tmp) / "stats.jsonl" if stats else None
        if stats_path:
            cmd += ["--stats", str(stats_path)]
        if crash_after_backward is not None:
            cmd += ["--crash-after-backward", str(crash_after_backward)]
        if backbone:
            cmd += ["--model", backbone]
        if stateless:
            cmd.append("--stateless")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        served = Served(f"http://127.0.0.1:{port}", tokens, proc, stats_path, port)
        drain = threading.Thread(target=_drain, args=(proc, served.log), daemon=True)
        drain.start()
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    drain.join(timeout=5)
                    raise RuntimeError(f"exotune serve exited with {proc.returncode}: {''.join(served.log)[-2000:]}")
                try:
                    if httpx.get(f"{served.url}/v1/health", timeout=1.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"exotune serve did not answer on {served.url} within {timeout_s:.0f} s")
                time.sleep(0.3)
            yield served
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=20)


def _drain(proc: subprocess.Popen, log: list[str]) -> None:
    """Keep reading the server's stderr (a full pipe would block it); keep the last lines."""
    for line in proc.stderr:
        log.append(line)
        del log[:-200]


# -- the instrumented server (python -m exotune.bench.served) ---------------------------------


def _instrument(app, stats: str | None, crash_after: int | None, interval_s: float = 1.0) -> None:
    service = app.state.service
    if stats:

        def write_stats() -> None:
            with open(stats, "a") as f:
                while True:  # read only: the server purges expired handles on its own timer
                    f.write(
                        json.dumps(
                            {"t": time.time(), "handles": len(service.handles), "handle_bytes": service.handles.nbytes}
                        )
                        + "\n"
                    )
                    f.flush()
                    time.sleep(interval_s)

        threading.Thread(target=write_stats, daemon=True).start()
    if crash_after is not None:
        backward, calls, lock = service.backward, [0], threading.Lock()

        def dying_backward(caller, body):
            with lock:
                calls[0] += 1
                if calls[0] >= crash_after:
                    os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9`: no cleanup, no answer
            return backward(caller, body)

        service.backward = dying_backward


def main(argv: list[str] | None = None) -> int:
    from exotune.cli.serve import add_serve_args, build_server, listen_config, run_server

    p = argparse.ArgumentParser(prog="python -m exotune.bench.served")
    add_serve_args(p)
    p.add_argument("--stats", default=None, help="append the handle store's size to this file every second")
    p.add_argument("--crash-after-backward", type=int, default=None, help="SIGKILL this process on that backward call")
    args = p.parse_args(argv)
    app = build_server(args)
    _instrument(app, args.stats, args.crash_after_backward)
    run_server(app, args.host, args.port, listen_config(args))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

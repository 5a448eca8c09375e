"""Replicas as one service, for real: a redis-server, ``exotune serve`` replicas as processes,
and nginx running the README's balancer block (only its ports templated). Used by the replica
tests and the replica benchmark; needs a checkout (the README) and both programs installed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from exotune.errors import MissingDependencyError

README = Path(__file__).resolve().parents[3] / "README.md"
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
REDIS = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/local/bin")
STARTUP_S = 120.0  # a replica loads torch and its model on a busy machine


def need(binary: str | None, name: str) -> str:
    if binary is None:
        raise MissingDependencyError(
            f"{name} is not installed (Debian: apt-get install -y redis-server nginx; .ci/run installs both)"
        )
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(ready, what: str, proc: subprocess.Popen | None = None, timeout: float = STARTUP_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if ready():
                return
        except Exception:  # not up yet (refused, reset, a client's connect error)
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start within {timeout:g} s")


def _listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def redis_server(tmp: Path, port: int | None = None):
    """A throwaway redis-server on a free loopback port; yields its URL (database 0)."""
    binary = need(REDIS, "redis-server")
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: _listening(port), "redis-server", proc, timeout=20)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


def readme_nginx(upstreams: list[int], listen: int, sticky: bool = False) -> str:
    """The README's nginx block for these ports (and the sticky line switched on if asked)."""
    if not README.is_file():
        raise MissingDependencyError(f"the balancer configuration is read from the checkout's README ({README})")
    text = README.read_text(encoding="utf-8")
    block = re.search(r"\*\*Serving replicas\.\*\*.*?```nginx\n(.*?)```", text, re.S).group(1)
    servers = re.findall(r"^( *)server 127\.0\.0\.1:\d+;.*$", block, re.M)
    if not servers:
        raise ValueError("the README's nginx block lists no upstream server")
    lines = "".join(f"{servers[0]}server 127.0.0.1:{p};\n" for p in upstreams)
    block = re.sub(r"^ *server 127\.0\.0\.1:\d+;.*\n", "", block, flags=re.M)
    block = block.replace("upstream exotune {\n", "upstream exotune {\n" + lines, 1)
    if not re.search(r"listen \d+;", block):
        raise ValueError("the README's nginx block has no listen line")
    block = re.sub(r"listen \d+;", f"listen 127.0.0.1:{listen};", block)
    if sticky:
        if "# hash $http_authorization consistent;" not in block:
            raise ValueError("the README's nginx block has no sticky line to switch on")
        block = block.replace("# hash $http_authorization consistent;", "hash $http_authorization consistent;")
    return block


@contextmanager
def nginx(tmp: Path, upstreams: list[int], sticky: bool = False):
    """nginx in the foreground with the README's block in an http context; yields its URL."""
    binary = need(NGINX, "nginx")
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    temps = "".join(f"    {k}_temp_path {tmp / k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = tmp / "nginx.conf"
    conf.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\nworker_processes 1;\npid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'};\n"
        f"events {{}}\nhttp {{\n    access_log off;\n{temps}" + readme_nginx(upstreams, port, sticky) + "}\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait(lambda: _listening(port), "nginx", proc, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def start_replica(model: Path | None, tmp: Path, tokens: list[str], *args: str) -> tuple[subprocess.Popen, int]:
    """``exotune serve`` in its own process on a free port (same tokens and owner secret for all)."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "tokens").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    secret = tmp / "owner-secret"
    if not secret.exists():
        secret.write_text("s" * 40 + "\n", encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    log = open(tmp / f"replica-{port}.log", "wb")  # noqa: SIM115 - open while the process runs
    model_args = [] if model is None else ["--model", str(model)]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exotune.cli",
            "serve",
            *model_args,
            "--port",
            str(port),
            "--tokens-file",
            str(tmp / "tokens"),
            "--owner-secret-file",
            str(secret),
            *args,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, port


def wait_replicas(procs: list[tuple[subprocess.Popen, int]]) -> None:
    import httpx

    for proc, port in procs:
        _wait(
            lambda p=port: httpx.get(f"http://127.0.0.1:{p}/v1/health", timeout=2).status_code == 200,
            f"replica on port {port}",
            proc,
        )

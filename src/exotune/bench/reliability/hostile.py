"""What an attacker does to a served box's connections and memory.

- ``slow``: connections that send their request head or body a byte at a time, and more
  connections than the server takes; the server must cut them (request-head and body
  timeouts, a connection cap), keep answering others, and give its descriptors back.
- ``admission``: concurrent training forwards whose graphs together exceed the handle-byte
  bound, on a server started with that bound tight; the store must never hold more than the
  bound and the server's memory must not pass it by more than a graph being built.
- ``abandon``: forwards made for training and never backpropagated; once the handle ttl has
  passed (and nothing else was asked), the server's resident memory must be back within 15%
  of what it was before.
"""

from __future__ import annotations

import select
import socket
import threading
import time

from exotune.bench.common import open_fds, process_rss_mb
from exotune.boxes import wire
from exotune.serve.handles import purge_interval_s

RSS_RETURN = 1.15  # resident memory after the ttl, at most this times the baseline
FD_SLACK = 4


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _closed(sockets: list[socket.socket]) -> set[int]:
    """Indices of sockets the server has closed (readable, and reading gives nothing or fails)."""
    gone = set()
    readable, _, _ = select.select(sockets, [], [], 0)
    for s in readable:
        try:
            if s.recv(4096) == b"":
                gone.add(sockets.index(s))
        except OSError:
            gone.add(sockets.index(s))
    return gone


def _health(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/v1/health", timeout=10.0).status_code == 200
    except httpx.TransportError:
        return False


def slow(server, budget) -> dict:
    pid, (host, port) = server.proc.pid, _address(server.url)
    fds_before = open_fds(pid)
    # 1. slow-loris: heads sent a byte every 0.2 s, never finished
    loris = [socket.create_connection((host, port)) for _ in range(budget.slow_connections)]
    for s in loris:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
    t0, closed, answered = time.monotonic(), set(), []
    while len(closed) < len(loris) and time.monotonic() - t0 < budget.header_timeout_s + 10:
        for i, s in enumerate(loris):
            if i not in closed:
                try:
                    s.send(b"X")
                except OSError:
                    closed.add(i)
        closed |= _closed([s for s in loris])
        answered.append(_health(server.url))
        time.sleep(0.2)
    cut_after = round(time.monotonic() - t0, 1)
    for s in loris:
        s.close()
    # 2. a body sent a byte at a time: 408 within the body timeout
    body = socket.create_connection((host, port))
    body.sendall(
        b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {server.token}\r\nContent-Length: 100000\r\n\r\n".encode()
    )
    t0, answer = time.monotonic(), b""
    while not answer and time.monotonic() - t0 < budget.body_timeout_s + 10:
        try:
            body.send(b" ")
        except OSError:
            break
        if select.select([body], [], [], 0.2)[0]:
            answer = body.recv(200)
    body_status = answer[:12].decode(errors="replace")
    body_after = round(time.monotonic() - t0, 1)
    body.close()
    # 3. a flood: more connections than the cap, all idle
    flood = [socket.create_connection((host, port)) for _ in range(budget.max_connections + 20)]
    time.sleep(1.0)
    closed_at_once = len(_closed(flood))
    fds_peak = open_fds(pid)
    time.sleep(budget.header_timeout_s + 2.0)
    closed_by_then = len(_closed(flood))  # those closed on accept read as closed again
    for s in flood:
        s.close()
    time.sleep(1.0)
    healthy_after, fds_after = _health(server.url), open_fds(pid)
    problems = []
    if len(closed) < len(loris):
        problems.append(f"{len(loris) - len(closed)} of {len(loris)} slow heads still open after {cut_after} s")
    if not all(answered):
        problems.append(f"health unanswered {answered.count(False)} times during the slow-loris")
    if not body_status.startswith("HTTP/1.1 408"):
        problems.append(f"a trickled body got {body_status!r} after {body_after} s, not 408")
    if closed_at_once < 20 or closed_by_then < len(flood):
        problems.append(
            f"flood of {len(flood)}: {closed_at_once} closed on accept, {closed_by_then} after the head timeout"
        )
    if not healthy_after or fds_after is None or fds_before is None or fds_after > fds_before + FD_SLACK:
        problems.append(f"after: health {healthy_after}, descriptors {fds_before} -> {fds_after}")
    return {
        "ok": not problems,
        "problems": problems,
        "slow_heads": len(loris),
        "slow_heads_cut_after_s": cut_after,
        "health_answered_during": f"{sum(answered)}/{len(answered)}",
        "trickled_body": body_status,
        "trickled_body_cut_after_s": body_after,
        "header_timeout_s": budget.header_timeout_s,
        "body_timeout_s": budget.body_timeout_s,
        "flood": len(flood),
        "max_connections": budget.max_connections,
        "closed_on_accept": closed_at_once,
        "closed_after_head_timeout": closed_by_then,
        "fds_before": fds_before,
        "fds_peak": fds_peak,
        "fds_after": fds_after,
    }


def _train_body(local, texts) -> bytes:
    batch = local.embed(texts)
    return wire.encode({"embeds": batch.embeds, "mask": batch.mask})


def _sample_rss(pid: int, out: list, stop: threading.Event) -> None:
    while not stop.is_set():
        out.append(process_rss_mb(pid) or 0.0)
        stop.wait(0.05)


def admission(backbone, local, data, budget) -> dict:
    import httpx

    from exotune.bench.served import served_box
    from exotune.serve import ServeConfig, create_app

    texts = [(t + " ") * 64 for t in data.texts[: budget.admission_batch]]  # long: the graph is large
    body = _train_body(local, texts)
    batch = local.embed(texts)
    one = create_app(local, None, ServeConfig(no_auth=True)).state.service.estimate_graph_bytes(
        "anonymous", batch.embeds, {}
    )
    bound_mb = 2.5 * one / 2**20  # two graphs fit, not four
    extra = ("--max-handle-mb", f"{bound_mb:.3f}", "--handle-ttl", "600")
    statuses, handle_bytes, rss = [], [], []
    with served_box(backbone, n_tokens=budget.admission_clients, stats=True, extra=extra) as server:
        pid = server.proc.pid
        rss_before = process_rss_mb(pid)
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(pid, rss, stop), daemon=True)
        sampler.start()

        def client(token: str) -> None:
            with httpx.Client(timeout=600.0) as http:
                for _ in range(budget.admission_rounds):
                    r = http.post(
                        server.url + "/v1/forward",
                        params={"train": "true"},
                        content=body,
                        headers={"Authorization": f"Bearer {token}", "Content-Type": wire.MEDIA_TYPE},
                    )
                    statuses.append((r.status_code, r.json().get("error") if r.status_code >= 400 else None))
                    handle_bytes.append((server.handle_stats() or {}).get("handle_bytes") or 0)

        threads = [threading.Thread(target=client, args=(t,)) for t in server.tokens]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        sampler.join()
    peak = max(rss) if rss else None
    admitted = sum(1 for s, _ in statuses if s == 200)
    busy = sum(1 for s, e in statuses if s == 503 and e == "busy")
    bound = bound_mb * 2**20
    # what may be resident: the bound, one graph being built beyond it, and the margin
    allowed_mb = (bound + one) / 2**20 + 64.0
    problems = []
    if admitted + busy != len(statuses) or not admitted:
        problems.append(f"answers {sorted(set(statuses))}: want 200 or 503 busy, some 200")
    if max(handle_bytes, default=0) > bound:
        problems.append(f"the store held {max(handle_bytes)} bytes, over its bound {int(bound)}")
    if peak is None or rss_before is None or peak - rss_before > allowed_mb:
        problems.append(f"memory rose {None if peak is None else round(peak - rss_before)} MB, over {allowed_mb:.0f}")
    return {
        "ok": not problems,
        "problems": problems,
        "clients": budget.admission_clients,
        "rounds": budget.admission_rounds,
        "batch": f"{batch.embeds.shape[0]} x {batch.embeds.shape[1]} tokens",
        "graph_estimate_mb": round(one / 2**20, 1),
        "handle_bound_mb": round(bound_mb, 1),
        "admitted": admitted,
        "refused_busy": busy,
        "handle_mb_max": round(max(handle_bytes, default=0) / 2**20, 1),
        "rss_before_mb": rss_before,
        "rss_peak_mb": peak,
        "rss_rise_mb": None if peak is None or rss_before is None else round(peak - rss_before, 1),
        "rss_rise_allowed_mb": round(allowed_mb, 1),
    }


def abandon(server, local, data, budget) -> dict:
    import httpx

    pid = server.proc.pid
    time.sleep(budget.handle_ttl_s + purge_interval_s(budget.handle_ttl_s) + 1.0)  # earlier sections' handles go
    rss_before = process_rss_mb(pid)
    bodies = [_train_body(local, data.texts[i * budget.soak_batch : (i + 1) * budget.soak_batch]) for i in range(4)]
    failures, peaks = [], [rss_before or 0.0]

    def client(k: int, token: str) -> None:
        with httpx.Client(timeout=120.0) as http:
            for i in range(k, budget.abandon_forwards, len(server.tokens)):
                r = http.post(
                    server.url + "/v1/forward",
                    params={"train": "true"},
                    content=bodies[i % len(bodies)],
                    headers={"Authorization": f"Bearer {token}", "Content-Type": wire.MEDIA_TYPE},
                )
                if r.status_code != 200:
                    failures.append(r.status_code)
                peaks.append(process_rss_mb(pid) or 0.0)

    threads = [threading.Thread(target=client, args=(k, t)) for k, t in enumerate(server.tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handles_held = (server.handle_stats() or {}).get("handles")
    time.sleep(budget.handle_ttl_s + purge_interval_s(budget.handle_ttl_s) + 2.0)
    rss_after, handles_after = process_rss_mb(pid), (server.handle_stats() or {}).get("handles")
    failed, peak = len(failures), max(peaks)
    problems = []
    if failed:
        problems.append(f"{failed} forwards refused: {sorted(set(failures))}")
    if handles_after != 0:
        problems.append(f"{handles_after} handles still held after the ttl")
    if rss_before is None or rss_after is None or rss_after > RSS_RETURN * rss_before:
        problems.append(f"resident memory {rss_before} -> {rss_after} MB after the ttl (at most {RSS_RETURN}x)")
    return {
        "ok": not problems,
        "problems": problems,
        "abandoned_forwards": budget.abandon_forwards,
        "handles_held_at_end": handles_held,
        "handles_after_ttl": handles_after,
        "rss_before_mb": rss_before,
        "rss_peak_mb": round(peak, 1),
        "rss_after_ttl_mb": rss_after,
        "rss_after_share": None if not rss_before or rss_after is None else round(rss_after / rss_before, 3),
        "rss_bound_share": RSS_RETURN,
    }

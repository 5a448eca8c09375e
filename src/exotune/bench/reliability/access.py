"""Access: who may call what. Every route (from the OpenAPI document, so a new route is
covered) refuses a missing, wrong or malformed token with 401; a handle belongs to the token
that made it; the rate limit and the gradient budget are enforced per token, across replicas
too when they share a Redis quota store; and no answer,
refusals included, names the backbone's modules or carries a tensor other than the route's.

The served process is checked over HTTP; the limits, which need a server configured tight,
on the same app in-process over the same local box."""

from __future__ import annotations

import torch

from exotune.bench.reliability.common import answer_problems
from exotune.boxes import wire

SPEC_KEYS = {"protocol", "spec", "server", "wire"}


def _bodies(local, handle: str) -> dict[str, tuple[bytes, str]]:
    batch = local.embed(["where is my card", "top up failed"])
    grad = wire.encode({"grad_outputs": torch.ones(2, local.spec.output_dim)}, {"handle": handle})
    texts = b'{"texts": ["where is my card"], "labels": ["card", "top up"]}'
    return {
        "/v1/forward": (wire.encode({"embeds": batch.embeds, "mask": batch.mask}), wire.MEDIA_TYPE),
        "/v1/backward": (grad, wire.MEDIA_TYPE),
        "/v1/embed": (texts, "application/json"),
        "/v1/encode": (texts, "application/json"),
        "/v1/scores": (texts, "application/json"),
    }


def _forward_handle(http, url: str, token: str, local) -> str:
    body, ctype = _bodies(local, "")["/v1/forward"]
    r = http.post(
        url + "/v1/forward",
        params={"train": "true"},
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": ctype},
    )
    return wire.decode(r.content).meta["handle"]


def run(server, local) -> dict:
    import httpx

    from exotune.serve import ServeConfig, create_app

    checks: list[tuple[str, bool, str]] = []

    def expect(name: str, r, status: int, code: str | None = None) -> None:
        try:
            body = r.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        if isinstance(body.get("error"), dict):  # the OpenAI-compatible routes' shape
            body = {"error": body["error"].get("code"), "message": body["error"].get("message")}
        ok = r.status_code == status and (code is None or body.get("error") == code)
        problems = answer_problems(r.status_code, r.headers.get("content-type", ""), r.content)
        checks.append(
            (name, ok and not problems, f"HTTP {r.status_code} {body.get('error', '')} {problems or ''}".strip())
        )

    http = httpx.Client(timeout=60.0)
    url, (mine, theirs) = server.url, server.tokens[:2]
    routes = sorted(
        (m.upper(), p) for p, item in create_app(local, ["x" * 16]).openapi()["paths"].items() for m in item
    )
    handle = _forward_handle(http, url, mine, local)
    bodies = _bodies(local, handle)
    bad_auth = {
        "no token": None,
        "wrong token": "Bearer " + "w" * len(mine),
        "wrong scheme": f"Basic {mine}",
        "bearer without a token": "Bearer",
        "token plus junk": f"Bearer {mine} x",
        "token in other case": f"Bearer {mine.swapcase()}",
        "token prefix": f"Bearer {mine[:-1]}",
    }
    for method, path in routes:
        body, ctype = bodies.get(path, (b"", None))
        for label, value in bad_auth.items():
            headers = {"Content-Type": ctype} if ctype else {}
            if value is not None:
                headers["Authorization"] = value
            r = http.request(method, url + path, content=body or None, headers=headers)
            if path == "/v1/health":
                expect(f"{method} {path}, {label}: open, says only ok", r, 200)
                checks[-1] = (checks[-1][0], checks[-1][1] and r.json() == {"status": "ok"}, checks[-1][2])
            else:
                expect(f"{method} {path}, {label}", r, 401, "unauthorized")
                if r.headers.get("www-authenticate") != "Bearer":
                    checks[-1] = (checks[-1][0], False, checks[-1][2] + " (no WWW-Authenticate: Bearer)")

    matrix = len(checks)
    # a handle is its token's: others get 404, as for a handle that never existed
    grad_body, ctype = bodies["/v1/backward"]
    as_theirs = {"Authorization": f"Bearer {theirs}", "Content-Type": ctype}
    as_mine = {"Authorization": f"Bearer {mine}", "Content-Type": ctype}
    expect(
        "backward with another token's handle",
        http.post(url + "/v1/backward", content=grad_body, headers=as_theirs),
        404,
        "handle_unknown",
    )
    guessed = wire.encode({"grad_outputs": torch.ones(2, local.spec.output_dim)}, {"handle": "A" * 24})
    expect(
        "backward with a guessed handle",
        http.post(url + "/v1/backward", content=guessed, headers=as_mine),
        404,
        "handle_unknown",
    )
    expect(
        "backward by the handle's owner, after both",
        http.post(url + "/v1/backward", content=grad_body, headers=as_mine),
        200,
    )
    expect(
        "the same handle again",
        http.post(url + "/v1/backward", content=grad_body, headers=as_mine),
        410,
        "handle_expired",
    )
    slash = http.get(url + "/v1/spec/", headers={"Authorization": f"Bearer {mine}", "Host": "evil.example"})
    expect("a trailing slash, with another Host: 404, no redirect", slash, 404)
    if "location" in slash.headers:
        checks[-1] = (checks[-1][0], False, f"redirects to {slash.headers['location']}")
    spec = http.get(url + "/v1/spec", headers={"Authorization": f"Bearer {mine}"}).json()
    checks.append(("/v1/spec holds only protocol, spec, server, wire", set(spec) == SPEC_KEYS, str(sorted(spec))))
    http.close()
    checks += _limits(local, create_app, ServeConfig)
    checks += replicated_checks(local, create_app, ServeConfig)
    failed = [c for c in checks if not c[1]]
    return {
        "ok": not failed,
        "checks": len(checks),
        "routes": [f"{m} {p}" for m, p in routes],
        "failed": [f"{name}: {detail}" for name, _, detail in failed][:20],
        "credentials_refused": f"{len(routes) - 1} routes x {len(bad_auth)} bad credentials: {', '.join(bad_auth)}",
        "checked": [name for name, _, _ in checks[matrix:]],
    }


def _limits(local, create_app, ServeConfig) -> list[tuple[str, bool, str]]:
    """Rate limit and gradient budget, per token, on an in-process app over the same box."""
    from fastapi.testclient import TestClient

    a, b = "token-alpha-0001", "token-bravo-0002"
    out = []
    app = create_app(local, [a, b], ServeConfig(rate_per_s=0.2, burst=3))
    first, second = (TestClient(app, headers={"Authorization": f"Bearer {t}"}) for t in (a, b))
    codes = [first.get("/v1/spec").status_code for _ in range(4)]
    limited = first.get("/v1/spec")
    out.append(
        (
            "rate limit: a burst of 3, then 429 with Retry-After",
            codes[:3] == [200] * 3
            and codes[3] == 429
            and limited.json().get("error") == "rate_limited"
            and int(limited.headers.get("retry-after", 0)) >= 1,
            f"{codes} then {limited.status_code}",
        )
    )
    out.append(("rate limit is per token: the other still passes", second.get("/v1/spec").status_code == 200, ""))

    app = create_app(local, [a, b], ServeConfig(login_failures=3))
    guesser = TestClient(app, headers={"Authorization": "Bearer " + "w" * len(a)})
    codes = [guesser.get("/v1/spec").status_code for _ in range(4)]
    right = TestClient(app, headers={"Authorization": f"Bearer {a}"}).get("/v1/spec")
    out.append(
        (
            "wrong tokens: 3 from one address, then 429 login_throttled, the right token included",
            codes == [401] * 3 + [429] and right.status_code == 429 and right.json().get("error") == "login_throttled",
            f"{codes} then {right.status_code}",
        )
    )

    app = create_app(local, [a, b], ServeConfig(grad_budget=2))
    first, second = (TestClient(app, headers={"Authorization": f"Bearer {t}"}) for t in (a, b))
    body, ctype = _bodies(local, "")["/v1/forward"]

    def pair(client) -> tuple[int, int]:
        return _pair(client, local, body, ctype)

    spent = [pair(first) for _ in range(2)]
    over = pair(first)
    plain = first.post("/v1/forward", content=body, headers={"Content-Type": ctype}).status_code
    out.append(
        (
            "gradient budget: 2 backward calls, then 429 budget_exhausted",
            spent == [(200, 200)] * 2 and over[0] == 429,
            f"{spent} then {over}",
        )
    )
    out.append(("a spent budget still allows plain forwards", plain == 200, str(plain)))
    app = create_app(local, [a, b], ServeConfig(grad_budget=1))
    first = TestClient(app, headers={"Authorization": f"Bearer {a}"})
    f = first.post("/v1/forward?train=true", content=body, headers={"Content-Type": ctype})
    handle = wire.decode(f.content).meta["handle"]
    huge = wire.encode({"grad_outputs": torch.full((2, local.spec.output_dim), 3e38)}, {"handle": handle})
    refused = first.post("/v1/backward", content=huge, headers={"Content-Type": ctype}).status_code
    retried = first.post(
        "/v1/backward",
        content=wire.encode({"grad_outputs": torch.ones(2, local.spec.output_dim)}, {"handle": handle}),
        headers={"Content-Type": ctype},
    ).status_code
    out.append(
        (
            "a backward refused for overflow (422) keeps its handle and its budget unit",
            (refused, retried) == (422, 200),
            f"{refused} then {retried}",
        )
    )
    out.append(("gradient budget is per token: the other still trains", pair(second) == (200, 200), ""))
    return out


def _pair(client, local, body: bytes, ctype: str) -> tuple[int, int]:
    """Statuses of a training forward and the backward with its handle."""
    f = client.post("/v1/forward?train=true", content=body, headers={"Content-Type": ctype})
    if f.status_code != 200:
        return f.status_code, 0
    grad = wire.encode(
        {"grad_outputs": torch.ones(2, local.spec.output_dim)}, {"handle": wire.decode(f.content).meta["handle"]}
    )
    return f.status_code, client.post("/v1/backward", content=grad, headers={"Content-Type": ctype}).status_code


def replicated_checks(local, create_app, ServeConfig) -> list[tuple[str, bool, str]]:
    """Three replicas (in-process apps over the same box) sharing a real redis-server: one
    budget and one bucket per token for all; Redis away: gradient calls 503, never unlimited."""
    import tempfile
    from pathlib import Path

    from fastapi.testclient import TestClient

    from exotune.bench import cluster

    if cluster.REDIS is None:
        return [("replicated: skipped, redis-server is not installed", True, "")]
    a = "token-alpha-0001"
    body, ctype = _bodies(local, "")["/v1/forward"]
    out = []
    with tempfile.TemporaryDirectory() as tmp, cluster.redis_server(Path(tmp)) as url:
        replicas = [
            TestClient(
                create_app(local, [a], ServeConfig(grad_budget=3, burst=12, rate_per_s=0.01, quota_store=url)),
                headers={"Authorization": f"Bearer {a}"},
            )
            for _ in range(3)
        ]
        backwards = [_pair(replicas[i % 3], local, body, ctype)[1] for i in range(3)]
        after = [_pair(c, local, body, ctype)[0] for c in replicas]
        out.append(
            (
                "replicated: budget 3 across 3 replicas on one Redis: 3 backward calls in all, then 429 on each",
                backwards == [200] * 3 and after == [429] * 3,
                f"{backwards} then {after}",
            )
        )
        codes = [replicas[i % 3].get("/v1/spec").status_code for i in range(6)]  # 9 of the burst are used
        out.append(
            (
                "replicated: one rate bucket across replicas: the burst of 12 in all, then 429 on each",
                codes == [200] * 3 + [429] * 3,
                str(codes),
            )
        )
    away = TestClient(
        create_app(local, [a], ServeConfig(grad_budget=5, quota_store=f"redis://127.0.0.1:{cluster.free_port()}/0")),
        headers={"Authorization": f"Bearer {a}"},
    )
    f = away.post("/v1/forward?train=true", content=body, headers={"Content-Type": ctype})
    out.append(
        (
            "replicated: quota store unreachable: a training forward gets 503, never unlimited",
            f.status_code == 503 and f.json().get("error") == "quota_store_unreachable",
            str(f.status_code),
        )
    )
    return out

"""What the serve and remote tests share: a fake light-gray box and client factories."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import torch

from exotune.boxes import Box, EntryPoint
from exotune.serve import ServeConfig, create_app

TOKEN, OTHER = "token-alpha-123", "token-bravo-456"


class EntryBox(Box):
    """A light-gray box for tests: a tiny BERT box plus entry tokens whose mean is mapped
    linearly into the output (a stand-in until the text box injects them inside)."""

    def __init__(self, inner: Box, max_tokens: int = 3) -> None:
        self.inner = inner
        d, o = inner.spec.input_dim, inner.spec.output_dim
        g = torch.Generator().manual_seed(0)
        self.proj = {"layer.1": torch.randn(d, o, generator=g), "layer.2": torch.randn(d, o, generator=g)}
        points = tuple(EntryPoint(n, max_tokens) for n in self.proj)
        self.spec = replace(inner.spec, access="light-gray", entry_points=points)

    def embed(self, texts, max_length=None):
        return self.inner.embed(texts, max_length)

    def forward(self, embeds, mask, entry_tokens=None):
        self.require("dark-gray", "light-gray")
        self.check_input(embeds, mask)
        out = self.inner.forward(embeds, mask)  # (B, O)
        for name, tokens in sorted((entry_tokens or {}).items()):
            out = out + torch.tanh(tokens.mean(0) @ self.proj[name])  # (O,) broadcast over B
        return out


def input_grads(box, ref_box, texts, entries: dict | None = None):
    """Outputs and gradients of a random linear loss, w.r.t. embeds (``ref_box``'s embeddings of
    ``texts``) and entry tokens."""
    batch = ref_box.embed(texts)
    embeds = batch.embeds.clone().requires_grad_(True)
    tokens = {k: v.clone().requires_grad_(True) for k, v in (entries or {}).items()}
    w = torch.randn(box.spec.output_dim, generator=torch.Generator().manual_seed(1))
    out = box.forward(embeds, batch.mask, tokens or None)
    (out @ w).pow(2).sum().backward()
    return out.detach(), embeds.grad, {k: t.grad for k, t in tokens.items()}


def make_app(box, tokens=(TOKEN,), **config):
    return create_app(box, list(tokens), ServeConfig(**config))


def make_client(app, token: str | None = TOKEN):
    from fastapi.testclient import TestClient

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return TestClient(app, headers=headers)


def remote(app, token: str | None = TOKEN, **kwargs):
    """A RemoteBox talking to ``app`` in-process (TestClient is an httpx client)."""
    from fastapi.testclient import TestClient

    import exotune

    return exotune.connect("http://testserver", token=token, client=TestClient(app), **kwargs)


class Served(str):
    """The URL of a running test server, with ``stop()`` to shut it down early."""

    stop: callable


@contextmanager
def running_server(app, listen=None):
    """``app`` on a real uvicorn server on 127.0.0.1 in a thread, as ``exotune serve`` runs it
    (``listen``: a ``ListenConfig``); yields its URL (a ``Served``), stops it after."""
    import threading
    import time

    import uvicorn

    from exotune.bench.served import free_port
    from exotune.serve.listen import uvicorn_config

    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, listen, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):  # at most 10 s for the server to start
            if server.started:
                break
            time.sleep(0.05)
        if not server.started:
            raise RuntimeError("the test server did not start within 10 s")
        served = Served(f"http://127.0.0.1:{port}")

        def stop():
            server.should_exit = True
            thread.join(timeout=10)

        served.stop = stop
        yield served
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# Headers a proxy must not copy: they describe one hop, and httpx has already decoded the body.
HOP_HEADERS = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
               "proxy-connection", "te", "trailer", "upgrade"}


class RoundRobinProxy:
    """A test stand-in for nginx: forwards each request, body unchanged, to the next of
    ``upstreams`` in turn. ``seen`` counts (upstream index, path) of what was forwarded."""

    def __init__(self, upstreams: list[str]) -> None:
        from collections import Counter

        self.upstreams = list(upstreams)
        self.seen: Counter = Counter()
        self._turn = 0

    def app(self):
        import httpx
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        async def forward(request):
            i, self._turn = self._turn, (self._turn + 1) % len(self.upstreams)
            self.seen[(i, request.url.path)] += 1
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
            async with httpx.AsyncClient(base_url=self.upstreams[i], timeout=30.0) as client:
                answer = await client.request(request.method, request.url.path, params=request.query_params,
                                              content=await request.body(), headers=headers)
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
            return Response(answer.content, status_code=answer.status_code, headers=kept)

        return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "DELETE"])])

    def hits(self, upstream: int, prefix: str = "/") -> int:
        return sum(n for (i, path), n in self.seen.items() if i == upstream and path.startswith(prefix))

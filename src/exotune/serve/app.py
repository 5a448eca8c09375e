"""The HTTP face of a served box (FastAPI). Routes are thin: auth, a bounded read, the service.

Torch work runs in the thread pool; answers are safetensors bytes or small JSON. Errors are
JSON ``{"error": code, "message": text}``; anything unexpected is logged here and answered
with a generic 500, so no stack trace or server internal reaches a client. A client that
hangs up is one log line, not an error.
"""

import asyncio
import logging  # no "from __future__ import annotations": FastAPI reads the route annotations
import math
import re
import time
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from exotune import __version__
from exotune.boxes import wire
from exotune.boxes.base import Box
from exotune.errors import AccessError, BoxLimitError, ConfigError, ExotuneError, WireError
from exotune.serve.auth import TokenGate
from exotune.serve.config import ServeConfig
from exotune.serve.errors import ApiError
from exotune.serve.fair import InflightLimit
from exotune.serve.openai_routes import install_openai_routes, is_openai_path, openai_error
from exotune.serve.pixels import PixelBoxService
from exotune.serve.quota import quota_store
from exotune.serve.service import PROTOCOL, BoxService

log = logging.getLogger("exotune.serve")

_TENSOR_BODY = {
    "requestBody": {"required": True, "content": {wire.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}
}


def _json_body(properties: dict) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object", "properties": properties}}},
        }
    }


_TEXTS = {"texts": {"type": "array", "items": {"type": "string"}}}


def error_response(
    status: int, code: str, message: str, retry_after: float | None = None, request: Request | None = None
) -> JSONResponse:
    """The JSON refusal: ``{"error", "message"}``, or OpenAI's shape on the OpenAI routes."""
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if status == 408:  # the rest of a body that came too slowly is not read: end the connection
        headers["Connection"] = "close"
    if request is not None and is_openai_path(request.url.path):
        return openai_error(status, code, message, headers)
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def wants_json(request: Request) -> bool:
    """The client asked for JSON (``Accept: application/json``) rather than safetensors."""
    accept = request.headers.get("accept", "").lower()
    return "application/json" in accept and wire.MEDIA_TYPE not in accept


class _Guard:
    """Outermost ASGI layer: refuse bodies announced as too large before reading them, and
    turn any unhandled exception into a generic 500 (logged with its trace, server-side)."""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            msg = (
                (
                    f"request body of {length.decode(errors='replace')} bytes exceeds the limit of "
                    f"{self.max_body_bytes} bytes"
                )
                if length.isdigit()
                else "invalid Content-Length"
            )
            await error_response(413 if length.isdigit() else 400, "limit", msg)(scope, receive, send)
            return
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            client = scope.get("client") or ("?", 0)
            log.info("client %s:%s hung up during %s %s", client[0], client[1], scope.get("method"), scope.get("path"))
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await error_response(500, "internal", "internal server error")(scope, receive, send)


def check_media_type(request: Request, expected: str) -> None:
    """Refuse a body declared as something else (a missing Content-Type is taken as ``expected``)."""
    declared = request.headers.get("content-type")
    if declared is not None and declared.partition(";")[0].strip().lower() != expected:
        raise ApiError(
            415, "media_type", f"{request.url.path} takes {expected} bodies, got Content-Type {declared[:100]!r}"
        )


async def read_body(
    request: Request, limit: int, media_type: str = wire.MEDIA_TYPE, timeout_s: float | None = None
) -> bytes:
    """Read at most ``limit`` bytes, whatever Content-Length said (chunked bodies included),
    all of them within ``timeout_s`` (else 408: a body sent a byte at a time holds no slot)."""
    check_media_type(request, media_type)
    timeout_s = timeout_s or request.app.state.body_timeout_s
    deadline = time.monotonic() + timeout_s
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - time.monotonic()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise ApiError(408, "timeout", f"the request body did not arrive within {timeout_s:g} s") from None
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "limit", f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> dict:
    body = await read_body(request, limit, "application/json")
    try:
        data = wire.loads_json(body, "request body")
    except WireError as err:
        raise ApiError(400, "bad_json", str(err)) from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "request body must be a JSON object")
    return data


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request, err: ApiError):
        return error_response(err.status, err.code, err.message, err.retry_after, request)

    async def exotune_error(request, err: ExotuneError):
        # raised by the box on a request it refuses; messages describe the request only
        if isinstance(err, AccessError):
            return error_response(403, "access", str(err), request=request)
        if isinstance(err, (BoxLimitError, ConfigError)):
            return error_response(
                422, "limit" if isinstance(err, BoxLimitError) else "invalid", str(err), request=request
            )
        log.error("box refused a request: %r", err)
        return error_response(422, "invalid", "the box refused the request", request=request)

    async def validation_error(request, err: RequestValidationError):
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in err.errors())
        return error_response(422, "invalid", f"invalid request parameters: {where}", request=request)

    async def http_error(request, err: StarletteHTTPException):
        return error_response(err.status_code, "http", str(err.detail), request=request)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(ExotuneError, exotune_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


PROMPT_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # the owner's prompts served under /prompt/<name>
JSON_ENCODE_MAX = 64  # texts /v1/encode answers as JSON when asked; more travel as safetensors


def _gate(tokens: list[str] | None, config: ServeConfig) -> TokenGate:
    if not tokens and not config.no_auth:
        raise ConfigError("serving a box needs at least one token (or no_auth=True, explicitly)")
    if tokens and config.no_auth:
        raise ConfigError("no_auth=True contradicts the tokens given; pass one or the other")
    return TokenGate(
        None if config.no_auth else list(tokens),
        config.rate_per_s,
        config.burst,
        config.grad_budget,
        login_failures=config.login_failures,
        login_window_s=config.login_window_s,
        store=quota_store(config.quota_store, config.quota_fallback),
    )


def _base_app(config: ServeConfig, gate: TokenGate):
    """An app with the guard and the error handlers, and the dependency that admits a caller."""
    # no redirect of "/v1/spec/" to "/v1/spec": it would be built from the request's Host header
    app = FastAPI(
        title="exotune served box",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )
    app.state.body_timeout_s = config.body_timeout_s
    app.add_middleware(_Guard, max_body_bytes=config.max_body_bytes)
    _install_error_handlers(app)

    def caller(request: Request) -> str:
        who = gate.identify(request.headers.get("authorization"), request.client.host if request.client else None)
        gate.admit(who)
        return who

    return app, Annotated[str, Depends(caller)]


def create_towers_app(towers: dict[str, Box], tokens: list[str] | None, config: ServeConfig | None = None) -> FastAPI:
    """Several boxes (a CLIP model's text and image towers) under one server and one token set
    (rate limits and gradient budgets shared): each a full box under ``/<name>``
    (``/image/v1/spec``...); ``/v1/spec`` names the towers."""
    config = config or ServeConfig()
    gate = _gate(tokens, config)
    app, Caller = _base_app(config, gate)
    app.state.services, app.state.prompt_routes = {}, []
    for name, box in towers.items():
        sub = create_app(box, tokens, config, gate=gate)
        app.state.services[name] = sub.state.service
        app.state.prompt_routes += [f"/{name}{route}" for route in sub.state.prompt_routes]
        app.mount(f"/{name}", sub)

    @app.get("/v1/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/spec")
    def spec(who: Caller) -> dict:
        return {"protocol": PROTOCOL, "towers": list(towers)}

    return app


def create_app(
    box: Box,
    tokens: list[str] | None,
    config: ServeConfig | None = None,
    model_name: str | None = None,
    *,
    gate: TokenGate | None = None,
    prompts: bool = True,
) -> FastAPI:
    """An ASGI app serving ``box`` at its access level to holders of ``tokens`` (an image box
    takes pixels); ``gate``: one shared with other boxes of the same server. A text box also
    answers the OpenAI routes, naming the model ``model_name`` (default: ``exotune-`` and the
    digest's first 12). With ``prompts``, a text box with prompts of its owner's serves each as
    the same box under ``/prompt/<name>`` (``RemoteBox.prompted``), sharing the gate."""
    config = config or ServeConfig()
    gate = gate if gate is not None else _gate(tokens, config)
    service = (PixelBoxService if box.spec.modality == "image" else BoxService)(box, config, gate)
    app, Caller = _base_app(config, gate)
    app.state.service = service
    run = InflightLimit(config.max_inflight_per_token)
    limit = config.max_body_bytes

    def tensors(data: bytes) -> Response:
        return Response(content=data, media_type=wire.MEDIA_TYPE)

    @app.get("/v1/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/spec")
    def spec(who: Caller) -> dict:
        return service.describe()

    @app.post("/v1/embed", openapi_extra=_json_body({**_TEXTS, "max_length": {"type": "integer"}}))
    async def embed(request: Request, who: Caller) -> Response:
        body = await read_json(request, limit)
        return tensors(await run(who, service.embed, who, body))

    @app.post("/v1/forward", openapi_extra=_TENSOR_BODY)
    async def forward(request: Request, who: Caller, train: bool = False) -> Response:
        body = await read_body(request, limit)
        return tensors(await run(who, service.forward, who, body, train))

    @app.post("/v1/backward", openapi_extra=_TENSOR_BODY)
    async def backward(request: Request, who: Caller) -> Response:
        body = await read_body(request, limit)
        return tensors(await run(who, service.backward, who, body))

    @app.post("/v1/encode", openapi_extra=_json_body(_TEXTS))
    async def encode(request: Request, who: Caller) -> Response:
        body = await read_json(request, limit)
        if (
            wants_json(request) and service.spec.modality == "text"
        ):  # a few texts, for people and scripts: {"outputs": [[...], ...]}
            texts = body.get("texts")
            if isinstance(texts, list) and len(texts) > JSON_ENCODE_MAX:
                raise ApiError(
                    406,
                    "too_many_for_json",
                    f"JSON answers hold at most {JSON_ENCODE_MAX} texts, got "
                    f"{len(texts)}; ask for {wire.MEDIA_TYPE} instead",
                )
            outputs = await run(who, service.encode_texts, who, texts)
            return JSONResponse({"outputs": outputs.tolist()})
        return tensors(await run(who, service.encode, who, body))

    @app.get("/v1/openapi.json", include_in_schema=False)
    def openapi(who: Caller) -> dict:
        return app.openapi()  # to holders of a token only: the routes are the owner's business

    async def read(request: Request) -> dict:
        return await read_json(request, limit)

    if service.spec.modality == "text":
        app.state.model_name = model_name or f"exotune-{service.spec.model_digest[:12]}"
        install_openai_routes(app, service, Caller, read, app.state.model_name, run)

    @app.post("/v1/scores", openapi_extra=_json_body({**_TEXTS, "labels": _TEXTS["texts"]}))
    async def scores(request: Request, who: Caller) -> Response:
        body = await read_json(request, limit)
        return tensors(await run(who, service.scores, who, body))

    app.state.prompt_routes = []  # what `exotune serve` lists at start
    if prompts and hasattr(box, "prompted"):
        for name in box.spec.prompts:
            if PROMPT_NAME.fullmatch(name):  # a name a URL path carries as it is
                sub = create_app(box.prompted(name), tokens, config, model_name, gate=gate, prompts=False)
                app.mount(f"/prompt/{name}", sub)
                app.state.prompt_routes.append(f"/prompt/{name}")
    return app

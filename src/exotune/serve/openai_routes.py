"""OpenAI-compatible routes beside the native ones: ``POST /v1/embeddings`` and ``GET /v1/models``.

Any OpenAI-style client (the openai SDK, LangChain, LlamaIndex) uses a served box with a base
URL (``http://host:port/v1``) and a key (a serve token). Same tokens, quotas and limits as the
native routes; errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.
Encoding is the box's own: the answers equal ``POST /v1/encode``'s. Token counts are not
reported (``usage`` is zero): the box's tokenizer is the owner's, not part of the contract.
"""

import base64  # no "from __future__ import annotations": FastAPI reads the route annotations
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from exotune.serve.errors import ApiError

OPENAI_PATHS = ("/v1/embeddings", "/v1/models")
MAX_INPUTS = 2048  # OpenAI's own limit per request; split here into the box's batches
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def is_openai_path(path: str) -> bool:
    return path.rstrip("/") in OPENAI_PATHS or path.startswith("/v1/models/")


def openai_error(status: int, code: str, message: str, headers: dict | None = None, param: str | None = None):
    body = {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers or {})


def _inputs(body: dict) -> list[str]:
    given = body.get("input")
    if isinstance(given, str):
        given = [given]
    if isinstance(given, list) and given and all(isinstance(t, (int, list)) for t in given):
        raise ApiError(
            400, "token_ids", "'input' holds token ids; this box takes text only: send a string or a list of strings"
        )
    if not isinstance(given, list) or not given or not all(isinstance(t, str) for t in given):
        raise ApiError(400, "invalid_input", "'input' must be a non-empty string or a list of non-empty strings")
    if any(not t.strip() for t in given):
        raise ApiError(400, "invalid_input", "'input' holds an empty string; every input must have text")
    if len(given) > MAX_INPUTS:
        raise ApiError(400, "too_many_inputs", f"'input' holds {len(given)} texts; at most {MAX_INPUTS} per request")
    return given


def install_openai_routes(app: FastAPI, service, Caller, read_json, model_name: str, run) -> None:
    """Add the OpenAI-compatible routes to ``app``; ``Caller`` is the native routes' auth and
    quota dependency, ``read_json(request)`` their bounded JSON reader, ``run(caller, fn, *args)``
    their per-token share of the worker threads."""
    created = int(time.time())
    dim = service.spec.output_dim

    def check_model(body: dict) -> None:
        model = body.get("model")
        if model != model_name:
            raise ApiError(
                404,
                "model_not_found",
                f"model {model!r} is not served here; this server serves {model_name!r} (GET /v1/models)",
            )

    def encode(who: str, texts: list[str]) -> np.ndarray:
        step = service.spec.limits.max_batch
        parts = [service.encode_texts(who, texts[i : i + step]).numpy() for i in range(0, len(texts), step)]
        return np.concatenate(parts).astype("<f4", copy=False)  # (N, D) little-endian float32

    @app.post(
        "/v1/embeddings",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["model", "input"],
                            "properties": {
                                "model": {"type": "string"},
                                "input": {
                                    "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
                                },
                                "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                                "dimensions": {"type": "integer"},
                                "user": {"type": "string"},
                            },
                        }
                    }
                },
            }
        },
    )
    async def embeddings(request: Request, who: Caller) -> JSONResponse:
        body = await read_json(request)
        check_model(body)
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ApiError(400, "invalid_encoding_format", f"encoding_format must be 'float' or 'base64', got {fmt!r}")
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != dim:
            raise ApiError(
                400,
                "dimensions_not_supported",
                f"this box's embeddings have {dim} dimensions and cannot be shortened; leave 'dimensions' out",
            )
        texts = _inputs(body)
        vectors = await run(who, encode, who, texts)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.tobytes()).decode("ascii") if fmt == "base64" else v.tolist(),
            }
            for i, v in enumerate(vectors)
        ]
        return JSONResponse(
            {"object": "list", "data": data, "model": model_name, "usage": {"prompt_tokens": 0, "total_tokens": 0}}
        )

    @app.get("/v1/models")
    def models(who: Caller) -> dict:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "exotune"}],
        }

    @app.get("/v1/models/{model}")
    def model(model: str, who: Caller) -> dict:
        check_model({"model": model})
        return {"id": model_name, "object": "model", "created": created, "owned_by": "exotune"}

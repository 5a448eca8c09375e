"""Pixels: a served image box (a tiny random vision transformer, light-gray, in-process) under
the access checks and bad input. Every route refuses missing or wrong credentials with 401; a
handle belongs to its token; random pixel payloads (shapes, dtypes, NaN and infinities, huge
values, stray and entry tensors, truncated and flipped bytes) never get a 5xx, and no answer
names the backbone; afterwards the box still answers and its gradients equal the local box's."""

from __future__ import annotations

import numpy as np
import torch

from exotune.bench.reliability.common import answer_problems, relative_error
from exotune.boxes import wire

TOKENS = ("token-pixels-0001", "token-pixels-0002")
BAD_AUTH = {"no token": None, "wrong token": "Bearer " + "w" * 17, "wrong scheme": f"Basic {TOKENS[0]}"}


def tiny_image_box():
    """A random ViT (hidden 32, 2 layers, 32x32 pixels, patch 8), light-gray at every layer."""
    from transformers import ViTConfig, ViTModel

    from exotune.boxes.image import VisionEncoderBox

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    return VisionEncoderBox(ViTModel(config, add_pooling_layer=False).eval(), entry_points="all", entry_tokens_max=2)


def _payload(rng: np.random.Generator, box, valid: bytes) -> bytes:
    """One random, mostly wrong, forward or backward body."""
    kind = rng.integers(6)
    if kind == 0:  # bytes of a valid body, flipped or cut
        data = bytearray(valid)
        for i in rng.integers(0, len(data), size=rng.integers(1, 8)):
            data[i] ^= int(rng.integers(1, 256))
        return bytes(data[: rng.integers(0, len(data) + 1)] if rng.random() < 0.3 else data)
    ndim = int(rng.integers(0, 6))
    shape = tuple(int(rng.integers(0, 40)) for _ in range(ndim))
    if kind == 1:  # the right shape with a bad batch
        shape = (int(rng.choice([0, 1, 2, 300])), *box.spec.input_shape)
    if rng.random() < 0.2:
        t = torch.from_numpy(rng.integers(-5, 5, size=shape)).long()
    else:
        t = torch.from_numpy(rng.normal(size=shape).astype(np.float32))
        if t.numel() and kind in (2, 3):
            t.view(-1)[0] = float(rng.choice([np.nan, np.inf, -np.inf, 1e30]))
    name = str(rng.choice(["pixels", "embeds", "grad_outputs", "entry.layer.0", "entry.nowhere", "x"]))
    tensors = {name: t}
    if kind == 4:
        tensors["entry." + str(rng.choice(["layer.0", "layer.1", "layer.9"]))] = torch.randn(
            int(rng.integers(0, 4)), int(rng.choice([box.spec.entry_dim, 3]))
        )
    meta = {"handle": str(rng.choice(["", "A" * 24, "../etc"]))} if kind == 5 else None
    return wire.encode(tensors, meta)


def run(budget) -> dict:
    from fastapi.testclient import TestClient

    from exotune.serve import ServeConfig, create_app

    box = tiny_image_box()
    app = create_app(box, list(TOKENS), ServeConfig(max_body_bytes=2**20))
    mine, theirs = (TestClient(app, headers={"Authorization": f"Bearer {t}"}) for t in TOKENS)
    anyone = TestClient(app)
    ctype = {"Content-Type": wire.MEDIA_TYPE}
    pixels = torch.randn(2, *box.spec.input_shape)
    valid = wire.encode({"pixels": pixels})
    checks: list[tuple[str, bool, str]] = []
    routes = sorted((m.upper(), p) for p, item in app.openapi()["paths"].items() for m in item)
    for method, path in routes:
        for label, value in BAD_AUTH.items():
            headers = dict(ctype) if value is None else {**ctype, "Authorization": value}
            r = anyone.request(method, path, content=valid, headers=headers)
            want = 200 if path == "/v1/health" else 401
            checks.append((f"{method} {path}, {label}", r.status_code == want, f"HTTP {r.status_code}"))
    handle = wire.decode(mine.post("/v1/forward?train=true", content=valid, headers=ctype).content).meta["handle"]
    grad = wire.encode({"grad_outputs": torch.ones(2, box.spec.output_dim)}, {"handle": handle})
    for name, client, want in (
        ("another token's handle", theirs, 404),
        ("the handle's owner", mine, 200),
        ("the same handle again", mine, 410),
    ):
        r = client.post("/v1/backward", content=grad, headers=ctype)
        checks.append((f"backward with {name}", r.status_code == want, f"HTTP {r.status_code}"))

    rng = np.random.default_rng(0)
    classes: dict[str, int] = {}
    problems: list[str] = []
    for i in range(budget.wire_examples):
        body = _payload(rng, box, valid)
        route = ("/v1/forward?train=true", "/v1/forward", "/v1/backward")[i % 3]
        r = mine.post(route, content=body, headers=ctype)
        classes[f"{r.status_code // 100}xx"] = classes.get(f"{r.status_code // 100}xx", 0) + 1
        problems += [
            f"{route}: {p}" for p in answer_problems(r.status_code, r.headers.get("content-type", ""), r.content, body)
        ]
    error = _gradient_error(box, mine)
    health = anyone.get("/v1/health").status_code
    failed = [f"{name}: {detail}" for name, ok, detail in checks if not ok]
    ok = not failed and not problems and classes.get("5xx", 0) == 0 and health == 200 and error < 1e-4
    return {
        "ok": ok,
        "checks": len(checks),
        "failed": failed[:20],
        "cases": budget.wire_examples,
        "status_classes": classes,
        "problems": problems[:20],
        "health_after": health,
        "relative_gradient_error_after": error,
        "routes": [f"{m} {p}" for m, p in routes],
    }


def _gradient_error(box, client) -> float:
    """Pixel gradients through the served box against the local one, after the fuzzing."""
    from exotune.boxes.remote import connect

    far = connect("http://testserver", token=TOKENS[0], client=client)
    x = torch.randn(2, *box.spec.input_shape)
    grads = []
    for b in (box, far):
        leaf = x.clone().requires_grad_(True)
        b.forward(leaf).pow(2).sum().backward()
        grads.append(leaf.grad)
    return relative_error(grads[1], grads[0])

"""The served box's batching engine: concurrent requests of a route gathered into one box call,
each answered exactly as alone (outputs and input gradients), a bad request failing alone,
and a batch bounded per token and in rows."""

from __future__ import annotations

import threading
import time
from functools import partial

import pytest
import torch

from exotune.boxes import Box, wire
from exotune.errors import ConfigError
from exotune.serve import ServeConfig
from exotune.serve.batcher import Batcher, Job
from exotune.serve.fair import FairScheduler

from .serve_helpers import OTHER, TOKEN, input_grads, make_app, make_client, remote

pytest.importorskip("fastapi")

THIRD = "token-charlie-789"
TOKENS = (TOKEN, OTHER, THIRD)
TEXTS = [["red"], ["the red car is very fast today", "a blue sky"], ["big green leaf on a tree"]]  # unlike lengths
WAIT_MS = 1000  # long enough that the requests started together always meet


class CountingBox(Box):
    """A box recording each call: ("embed", texts) and ("forward", rows, length)."""

    def __init__(self, inner: Box) -> None:
        self.inner, self.spec = inner, inner.spec
        self.calls: list[tuple] = []

    def embed(self, texts, max_length=None):
        self.calls.append(("embed", len(texts)))
        return self.inner.embed(texts, max_length)

    def forward(self, embeds, mask, entry_tokens=None):
        self.calls.append(("forward", *embeds.shape[:2]))
        return self.inner.forward(embeds, mask, entry_tokens)

    def forwards(self) -> list[tuple]:
        return [c for c in self.calls if c[0] == "forward"]


def _together(fns) -> list:
    """Call ``fns`` at once, each in its own thread; their answers in order."""
    barrier, out = threading.Barrier(len(fns)), [None] * len(fns)

    def go(i, fn):
        barrier.wait()
        out[i] = fn()

    threads = [threading.Thread(target=go, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def _post_tensors(client, path: str, tensors: dict):
    return client.post(path, content=wire.encode(tensors), headers={"Content-Type": wire.MEDIA_TYPE})


def test_encode_scores_and_embed_gathered_answer_each_request_as_alone(tiny_box):
    box = CountingBox(tiny_box)
    app = make_app(box, tokens=TOKENS, batch_wait_ms=WAIT_MS)
    clients = [make_client(app, t) for t in TOKENS]
    answers = _together([partial(c.post, "/v1/encode", json={"texts": t}) for c, t in zip(clients, TEXTS, strict=True)])
    assert box.forwards() == [("forward", 4, box.forwards()[0][2])]  # one call for the three requests
    for r, texts in zip(answers, TEXTS, strict=True):
        assert r.status_code == 200, r.text
        assert torch.allclose(wire.decode(r.content).tensors["outputs"], tiny_box.encode(texts), atol=1e-5)

    box.calls.clear()
    body = [{"texts": t, "labels": ["car", "a colour of the sky"]} for t in TEXTS]
    answers = _together([partial(c.post, "/v1/scores", json=b) for c, b in zip(clients, body, strict=True)])
    labels = torch.nn.functional.normalize(tiny_box.encode(body[0]["labels"]), dim=-1)
    for r, texts in zip(answers, TEXTS, strict=True):
        want = torch.nn.functional.normalize(tiny_box.encode(texts), dim=-1) @ labels.T
        assert torch.allclose(wire.decode(r.content).tensors["scores"], want, atol=1e-5)
    assert len(box.forwards()) <= 3  # the texts gathered (the label set may be encoded once per token)

    box.calls.clear()
    answers = _together([partial(c.post, "/v1/embed", json={"texts": t}) for c, t in zip(clients, TEXTS, strict=True)])
    assert box.calls == [("embed", 4)]
    for r, texts in zip(answers, TEXTS, strict=True):
        got, want = wire.decode(r.content).tensors, tiny_box.embed(texts)
        assert got["mask"].shape == want.mask.shape and torch.equal(got["mask"], want.mask)  # cut to its own length
        assert torch.allclose(got["embeds"], want.embeds)


def test_stateless_forward_and_backward_gathered_give_the_outputs_and_gradients_of_alone(tiny_box):
    box = CountingBox(tiny_box)
    app = make_app(box, tokens=TOKENS, batch_wait_ms=WAIT_MS, stateless=True)

    def train_step(token, texts):
        with remote(app, token) as rb:
            return input_grads(rb, tiny_box, texts)

    got = _together([partial(train_step, tok, texts) for tok, texts in zip(TOKENS, TEXTS, strict=True)])
    calls = box.forwards()
    assert len(calls) == 2 and all(rows == 4 for _, rows, _ in calls), calls  # forwards, then backwards
    for (out, grad, _), texts in zip(got, TEXTS, strict=True):
        want_out, want_grad, _ = input_grads(tiny_box, tiny_box, texts)
        assert grad.shape == want_grad.shape
        assert torch.allclose(out, want_out, atol=1e-5) and torch.allclose(grad, want_grad, atol=1e-5)


@pytest.mark.parametrize("device", [None, "cuda"])
def test_a_box_on_a_gpu_gets_larger_calls_and_fair_units(tiny_box, device):
    """On a CPU a call's rows go through the box 16 at a time and a fair unit is 512 tokens; a
    box on a GPU (where a small forward costs about what a large one does) takes a call's rows
    at once and 8192-token units. Answers are the same either way."""
    box = CountingBox(tiny_box)
    if device:
        box.device = torch.device(device)  # only the sizes read it: the inner box stays on the CPU
    app = make_app(box, stateless=True)
    texts = [" ".join(["red", "car"] * (1 + i % 5)) for i in range(20)]
    spec = make_client(app).get("/v1/spec").json()
    assert spec["server"]["fair_unit_tokens"] == (8192 if device else 512), spec
    with remote(app) as rb:
        out, grad, _ = input_grads(rb, tiny_box, texts)
    rows = [r for _, r, _ in box.forwards()]
    assert rows == ([20, 20] if device else [16, 4, 16, 4]), rows  # forward, then backward's forward
    want_out, want_grad, _ = input_grads(tiny_box, tiny_box, texts)
    assert torch.allclose(out, want_out, atol=1e-5) and torch.allclose(grad, want_grad, atol=1e-5)


def test_a_bad_request_in_a_batch_fails_alone(tiny_box):
    box = CountingBox(tiny_box)
    app = make_app(box, tokens=TOKENS, batch_wait_ms=WAIT_MS, stateless=True)
    clients = [make_client(app, t) for t in TOKENS]
    inputs = [tiny_box.embed(t) for t in TEXTS]
    tensors = [{"embeds": b.embeds, "mask": b.mask} for b in inputs]
    bad = {**tensors[1], "embeds": torch.full_like(tensors[1]["embeds"], 3e38)}  # finite, overflows in the box
    answers = _together(
        [
            partial(_post_tensors, c, "/v1/forward", t)
            for c, t in zip(clients, [tensors[0], bad, tensors[2]], strict=True)
        ]
    )
    assert answers[1].status_code == 422 and "infinite outputs" in answers[1].json()["message"]
    for i in (0, 2):
        assert answers[i].status_code == 200, answers[i].text
        want = tiny_box.forward(inputs[i].embeds, inputs[i].mask)
        assert torch.allclose(wire.decode(answers[i].content).tensors["outputs"], want, atol=1e-5)
    assert box.forwards()[0][1] == 4  # they were gathered: then each ran again alone

    grads = [{**t, "grad_outputs": torch.ones(t["embeds"].shape[0], tiny_box.spec.output_dim)} for t in tensors]
    grads[1]["grad_outputs"] = torch.full_like(grads[1]["grad_outputs"], 3e38)  # the gradients overflow
    answers = _together([partial(_post_tensors, c, "/v1/backward", g) for c, g in zip(clients, grads, strict=True)])
    assert answers[1].status_code == 422 and "overflowed" in answers[1].json()["message"]
    for i in (0, 2):
        assert answers[i].status_code == 200, answers[i].text
        e = inputs[i].embeds.clone().requires_grad_(True)
        tiny_box.forward(e, inputs[i].mask).sum().backward()
        assert torch.allclose(wire.decode(answers[i].content).tensors["embeds"], e.grad, atol=1e-5)


def _gather(jobs: list[tuple[str, int, int]], max_rows: int = 8, unit_work: int = 10) -> list[list[str]]:
    """Jobs (name, rows, work) of callers named by their first letter, arriving in order;
    the payloads of each box call."""
    calls, lock = [], threading.Lock()
    batcher = Batcher(FairScheduler(1), 0.5, max_rows, unit_work)

    def call(payloads):
        with lock:
            calls.append(list(payloads))
        return list(payloads)

    threads = []
    for name, rows, work in jobs:
        t = threading.Thread(target=batcher.run, args=("route", Job(name[0], name, rows, work), call))
        t.start()
        threads.append(t)
        time.sleep(0.02)  # in this order
    for t in threads:
        t.join(30)
    return calls


def test_a_batch_holds_one_fair_unit_per_token_and_at_most_max_rows():
    assert _gather([("a1", 1, 6), ("b1", 1, 6), ("a2", 1, 6), ("c1", 1, 9)]) == [["a1", "b1", "c1"], ["a2"]]
    assert _gather([("a1", 5, 1), ("b1", 4, 1), ("c1", 3, 1)]) == [["a1", "c1"], ["b1"]]


def test_batching_is_off_at_zero_and_the_wait_is_checked(tiny_box):
    box = CountingBox(tiny_box)
    app = make_app(box, tokens=TOKENS, batch_wait_ms=0)
    clients = [make_client(app, t) for t in TOKENS]
    _together([partial(c.post, "/v1/encode", json={"texts": t}) for c, t in zip(clients, TEXTS, strict=True)])
    assert len(box.forwards()) == 3
    for bad in (-1, 5000, float("nan"), True, "2"):
        with pytest.raises(ConfigError, match="batch_wait_ms"):
            ServeConfig(batch_wait_ms=bad)
    assert ServeConfig.from_dict(ServeConfig(batch_wait_ms=3.5).to_dict()).batch_wait_ms == 3.5


@pytest.mark.slow
def test_the_serve_suite_measures_batching_on_and_off_side_by_side(tiny_backbone, tmp_path, monkeypatch):
    import json

    from exotune.cli import main

    monkeypatch.setenv("EXOTUNE_DATA", str(tmp_path / "no-datasets"))  # made-up texts: the same run everywhere
    assert main(["bench", "serve", "--quick", "--backbone", str(tiny_backbone), "--out-dir", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "serve.json").read_text())
    assert {(c["route"], c["clients"], c["batching"]) for c in doc["cells"]} == {
        (r, n, m) for r in ("encode", "fwd+bwd") for n in (1, 4) for m in ("on", "off")
    }
    assert all(c["failed"] == 0 and c["calls"] >= c["clients"] for c in doc["cells"]), doc["cells"]
    assert doc["texts"] == "synthetic" and set(doc["summary"]) == {
        "encode off",
        "encode on",
        "fwd+bwd off",
        "fwd+bwd on",
    }
    assert (tmp_path / "serve.md").read_text().startswith("# serve (quick)")

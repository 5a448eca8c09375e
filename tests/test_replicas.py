"""Stateless replicas behind a round-robin load balancer train exactly as one server does."""

from __future__ import annotations

import pytest
import torch

import exotune
from exotune.graybox import DGAConfig
from exotune.tasks.classification import TextClassifier
from exotune.train import TrainConfig, Trainer

from .conftest import colour_data
from .serve_helpers import TOKEN, RoundRobinProxy, make_app, running_server

pytest.importorskip("fastapi")


def _train_through(url: str) -> dict:
    torch.manual_seed(0)
    with exotune.connect(url, token=TOKEN) as box:
        model = TextClassifier(box, ["red", "blue", "green"], DGAConfig())
        cfg = TrainConfig(epochs=1, batch_size=16, lr=2e-2, patience=None, max_steps=3)
        Trainer(cfg, progress=False).fit(model, colour_data(48, seed=0), colour_data(12, seed=1))
        return {k: v.clone() for k, v in model.state_dict().items()}


def test_stateless_replicas_behind_a_round_robin_proxy_match_one_replica(tiny_backbone):
    from exotune.boxes import load_box

    def replica():  # each replica loads its own copy of the backbone, as separate processes would
        return make_app(load_box(str(tiny_backbone), pooling="mean", normalize=False), stateless=True)

    with running_server(replica()) as url:
        single = _train_through(url)
    with running_server(replica()) as first, running_server(replica()) as second:
        proxy = RoundRobinProxy([first, second])
        with running_server(proxy.app()) as url:
            balanced = _train_through(url)
    assert single.keys() == balanced.keys()
    torch.manual_seed(0)
    start = TextClassifier(load_box(str(tiny_backbone)), ["red", "blue", "green"], DGAConfig()).state_dict()
    assert any(not torch.equal(start[k], v) for k, v in single.items())  # it trained
    for key, value in single.items():
        torch.testing.assert_close(balanced[key], value, atol=1e-5, rtol=1e-4, msg=key)
    # both replicas computed gradients (round robin sends a backward to the other replica
    # than its forward: only stateless mode makes that work)
    for upstream in (0, 1):
        assert proxy.hits(upstream, "/v1/forward") + proxy.hits(upstream, "/v1/backward") > 0
    assert proxy.hits(0, "/v1/backward") + proxy.hits(1, "/v1/backward") >= 3

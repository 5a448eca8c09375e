"""Replicas as one service: real `exotune serve` processes behind a real nginx running the
README's configuration, counting quotas in a real redis-server."""

from __future__ import annotations

import signal

import pytest
import torch

import exotune
from exotune.errors import HandleExpiredError, RateLimitError
from exotune.graybox import DGAConfig
from exotune.tasks.classification import TextClassifier
from exotune.train import TrainConfig, Trainer

from .conftest import colour_data
from .replica_helpers import nginx, redis_server, start_replica, stop, wait_replicas

pytest.importorskip("fastapi")
pytest.importorskip("redis")

TRAIN, BUDGET, RATE, KILL = (f"token-{name}-0123" for name in ("train", "budget", "rate", "kill"))
B, RATE_PER_S, BURST = 12, 2.0, 60  # every token's budget, rate and burst on every replica


@pytest.fixture(scope="module")
def service(tiny_backbone, tmp_path_factory):
    """Three stateless replicas sharing one redis-server, behind nginx."""
    tmp = tmp_path_factory.mktemp("replicas")
    with redis_server(tmp / "redis") as store:
        procs = [
            start_replica(
                tiny_backbone,
                tmp,
                [TRAIN, BUDGET, RATE, KILL],
                "--stateless",
                "--quota-store",
                store,
                "--grad-budget",
                str(B),
                "--rate",
                str(RATE_PER_S),
                "--burst",
                str(BURST),
            )
            for _ in range(3)
        ]
        try:
            wait_replicas(procs)
            with nginx(tmp / "nginx", [port for _, port in procs]) as url:
                yield {"url": url, "procs": procs, "nginx": tmp / "nginx"}
        finally:
            for proc, _ in procs:
                stop(proc)


def _train_through(url: str, token: str, stats: dict | None = None) -> dict:
    torch.manual_seed(0)
    with exotune.connect(url, token=token) as box:
        model = TextClassifier(box, ["red", "blue", "green"], DGAConfig())
        cfg = TrainConfig(epochs=1, batch_size=16, lr=2e-2, patience=None, max_steps=3)
        Trainer(cfg, progress=False).fit(model, colour_data(48, seed=0), colour_data(12, seed=1))
        if stats is not None:
            stats.update(box.stats)
        return {k: v.clone() for k, v in model.state_dict().items()}


def _backward(box) -> None:
    batch = box.embed(["a red apple"])
    embeds = batch.embeds.clone().requires_grad_(True)
    box.forward(embeds, batch.mask).sum().backward()


def _spend_all(box, calls: int, kill=None) -> tuple[int, list[str]]:
    ok, refused = 0, []
    for i in range(calls):
        if kill is not None and i == kill[0]:
            kill[1]()
        try:
            _backward(box)
            ok += 1
        except RateLimitError as err:
            refused.append(err.code)
    return ok, refused


def test_replicas_behind_nginx_train_as_one_replica(service):
    _, first = service["procs"][0]
    single = _train_through(f"http://127.0.0.1:{first}", TRAIN)
    balanced = _train_through(service["url"], TRAIN)
    assert single.keys() == balanced.keys()
    for key, value in single.items():
        torch.testing.assert_close(balanced[key], value, atol=1e-5, rtol=1e-4, msg=key)


def test_a_budget_is_spent_exactly_once_across_replicas(service):
    with exotune.connect(service["url"], token=BUDGET) as box:
        ok, refused = _spend_all(box, B + 6)
    assert ok == B and refused == ["budget_exhausted"] * 6
    for _, port in service["procs"]:  # every replica refuses, asked directly
        with exotune.connect(f"http://127.0.0.1:{port}", token=BUDGET) as box:
            with pytest.raises(RateLimitError, match="budget") as err:
                _backward(box)
            assert err.value.code == "budget_exhausted"


def test_the_rate_limit_holds_across_replicas_within_one_burst(service):
    import httpx

    headers = {"Authorization": f"Bearer {RATE}"}
    with httpx.Client(base_url=service["url"], headers=headers, timeout=30) as client:
        codes = [client.get("/v1/spec").status_code for _ in range(2 * BURST)]
    # one bucket for the whole service: two bursts spread over three replicas would all pass
    # per-replica buckets (40 calls each, burst 60), so a refusal shows the buckets are shared;
    # a burst passes before the first refusal
    assert set(codes) <= {200, 429} and codes.count(429) > 0
    assert codes[:BURST] == [200] * BURST, codes


def test_a_replica_killed_mid_run_loses_no_accounting(service):
    victim, port = service["procs"][2]
    with exotune.connect(service["url"], token=KILL) as box:
        ok, refused = _spend_all(box, B + 3, kill=(4, lambda: victim.send_signal(signal.SIGKILL)))
        stats = dict(box.stats)
    victim.wait(timeout=10)
    assert ok == B and refused == ["budget_exhausted"] * 3
    assert stats["retries"] == 0  # the balancer resent to a live replica: the client saw no failure
    # nginx did send calls to the dying replica (refused, or reset mid-request) and passed them on
    assert f"127.0.0.1:{port}" in (service["nginx"] / "error.log").read_text()


def test_sticky_sessions_keep_a_stateful_backward_on_its_replica(tiny_backbone, tmp_path):
    procs = [start_replica(tiny_backbone, tmp_path, [TRAIN]) for _ in range(2)]
    try:
        wait_replicas(procs)
        ports = [port for _, port in procs]
        sticky = {}
        with nginx(tmp_path / "sticky", ports, sticky=True) as url:
            trained = _train_through(url, TRAIN, sticky)
        # round robin: a backward reaches the other replica, whose handles are not its forward's
        with nginx(tmp_path / "loose", ports) as url, pytest.raises(HandleExpiredError):
            _train_through(url, TRAIN)
    finally:
        for proc, _ in procs:
            stop(proc)
    assert trained and sticky["replays"] == 0  # every backward found its handle

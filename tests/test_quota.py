"""Quota stores behind the token gate: in-process, and Redis (a real redis-server) shared by
replicas, with its policy when Redis cannot be reached."""

from __future__ import annotations

import pytest

from exotune.errors import ConfigError
from exotune.serve import ServeConfig
from exotune.serve.auth import TokenGate
from exotune.serve.errors import ApiError
from exotune.serve.quota import RETRY_S, LocalQuota, RedisQuota, quota_key

from .replica_helpers import free_port, redis_server
from .serve_helpers import TOKEN, make_app, make_client

pytest.importorskip("redis")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _gate(store, budget=3, rate=1e-3, burst=5):
    return TokenGate([TOKEN], rate, burst, budget, store=store)


def _spend(gate, n: int) -> list[str]:
    out = []
    for _ in range(n):
        try:
            gate.spend_gradient("t0")
            out.append("ok")
        except ApiError as err:
            out.append(f"{err.status} {err.code}")
    return out


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def fresh(redis_url):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


def test_local_quota_counts_a_bucket_and_a_budget():
    clock = Clock()
    gate = TokenGate([TOKEN], 1.0, 2, 2, clock=clock)
    gate.admit("t0"), gate.admit("t0")
    with pytest.raises(ApiError, match="rate limit"):
        gate.admit("t0")
    clock.t = 1.0
    gate.admit("t0")
    assert _spend(gate, 3) == ["ok", "ok", "429 budget_exhausted"]
    gate.refund_gradient("t0")
    assert _spend(gate, 2) == ["ok", "429 budget_exhausted"]


def test_replicas_sharing_redis_spend_one_budget_once(fresh):
    gates = [_gate(RedisQuota(fresh)) for _ in range(3)]
    spent = [_spend(gates[i % 3], 1)[0] for i in range(7)]
    assert spent == ["ok"] * 3 + ["429 budget_exhausted"] * 4
    gates[1].refund_gradient("t0")  # a refused call gives its unit back, on any replica
    assert _spend(gates[2], 2) == ["ok", "429 budget_exhausted"]
    with pytest.raises(ApiError, match="budget"):
        gates[0].check_budget("t0")


def test_a_per_replica_store_would_give_n_budgets():  # what the shared store is for
    gates = [_gate(LocalQuota()) for _ in range(3)]
    assert [_spend(g, 3) for g in gates] == [["ok"] * 3] * 3


def test_replicas_sharing_redis_draw_on_one_bucket(fresh):
    gates = [_gate(RedisQuota(fresh), burst=5) for _ in range(3)]
    taken = 0
    for i in range(15):
        try:
            gates[i % 3].admit("t0")
            taken += 1
        except ApiError as err:
            assert err.status == 429 and err.code == "rate_limited" and err.retry_after > 0
    assert taken == 5


def test_a_budget_survives_a_replica_restart(fresh):
    assert _spend(_gate(RedisQuota(fresh)), 2) == ["ok", "ok"]
    assert _spend(_gate(RedisQuota(fresh)), 2) == ["ok", "429 budget_exhausted"]  # a new process, same counts


def test_redis_keys_hash_the_token_and_never_hold_it(fresh):
    import redis

    gate = _gate(RedisQuota(fresh))
    gate.admit("t0"), gate.spend_gradient("t0")
    keys = [k.decode() for k in redis.Redis.from_url(fresh).keys("*")]
    assert sorted(keys) == sorted(f"exotune:quota:{kind}:{quota_key(TOKEN)}" for kind in ("rate", "spent"))
    assert not any(TOKEN in k for k in keys)
    assert quota_key(TOKEN) != quota_key(TOKEN + "x")


def test_unreachable_redis_refuses_gradient_calls_with_503():
    gate = _gate(RedisQuota(f"redis://127.0.0.1:{free_port()}/0"))
    with pytest.raises(ApiError) as err:
        gate.spend_gradient("t0")
    assert err.value.status == 503 and "quota store" in err.value.message and err.value.retry_after
    with pytest.raises(ApiError) as err:
        gate.check_budget("t0")
    assert err.value.status == 503
    gate.admit("t0")  # requests without a gradient: counted in this replica's bucket, still limited
    for _ in range(4):
        gate.admit("t0")
    with pytest.raises(ApiError, match="rate limit"):
        gate.admit("t0")


def test_local_fallback_counts_in_the_replica_and_settles_when_redis_returns(tmp_path):
    clock, port = Clock(), free_port()
    gate = _gate(RedisQuota(f"redis://127.0.0.1:{port}/0", fallback="local", clock=clock), budget=4)
    assert _spend(gate, 2) == ["ok", "ok"]  # Redis away: counted here, never unlimited
    with redis_server(tmp_path, port):
        clock.t += RETRY_S + 0.1
        assert _spend(gate, 3) == ["ok", "ok", "429 budget_exhausted"]  # the 2 counted here were added
        assert gate.store.spent(quota_key(TOKEN)) == 4


def test_served_box_with_an_unreachable_store_answers_503(tiny_box):
    import torch

    from exotune.boxes import wire

    app = make_app(tiny_box, stateless=True, quota_store=f"redis://127.0.0.1:{free_port()}/0")
    batch = tiny_box.embed(["a red apple"])
    body = wire.encode(
        {"embeds": batch.embeds, "mask": batch.mask, "grad_outputs": torch.ones(1, tiny_box.spec.output_dim)}
    )
    with make_client(app) as client:
        r = client.post("/v1/backward", content=body, headers={"Content-Type": wire.MEDIA_TYPE})
    assert r.status_code == 503 and r.json()["error"] == "quota_store_unreachable"


@pytest.mark.parametrize(
    "bad",
    [{"quota_store": "http://127.0.0.1:6379"}, {"quota_store": "127.0.0.1:6379"}, {"quota_fallback": "unlimited"}],
)
def test_quota_settings_are_checked(bad):
    with pytest.raises(ConfigError, match="quota"):
        ServeConfig(**bad)


def test_serve_help_documents_the_quota_store():
    import argparse

    from exotune.cli.serve import add_serve_args

    p = argparse.ArgumentParser()
    add_serve_args(p)
    text = p.format_help()
    assert "--quota-store" in text and "redis://" in text and "--quota-fallback" in text
    args = p.parse_args(["--quota-store", "redis://127.0.0.1:6379/0", "--quota-fallback", "local"])
    assert (args.quota_store, args.quota_fallback) == ("redis://127.0.0.1:6379/0", "local")


def test_the_reliability_access_section_checks_the_replicated_case(tiny_box):
    from exotune.bench.reliability import access
    from exotune.serve import create_app

    checks = access.replicated_checks(tiny_box, create_app, ServeConfig)
    assert len(checks) == 3 and all(ok for _, ok, _ in checks), checks

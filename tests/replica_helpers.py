"""The replica tests' real parts (exotune.bench.cluster), skipped with a reason where the
programs are not installed."""

from __future__ import annotations

import pytest

from exotune.bench import cluster
from exotune.bench.cluster import free_port, start_replica, stop, wait_replicas

__all__ = ["free_port", "nginx", "redis_server", "start_replica", "stop", "wait_replicas"]


def _installed() -> None:
    for binary, name in ((cluster.REDIS, "redis-server"), (cluster.NGINX, "nginx")):
        if binary is None:
            pytest.skip(
                f"{name} is not installed and could not be (Debian: apt-get install -y redis-server nginx; "
                ".ci/run installs both)"
            )


def redis_server(*args, **kwargs):
    _installed()
    return cluster.redis_server(*args, **kwargs)


def nginx(*args, **kwargs):
    _installed()
    return cluster.nginx(*args, **kwargs)

"""Keyed guards with `shared = true`: a breaker per key in Redis, namespaced by key."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

import policyengine
from policyengine import CircuitOpenError, Engine

redis = pytest.importorskip("redis", reason="redis-py is not installed: pip install '.[redis]'")
from tests.helpers.polling import wait_until  # noqa: E402
from tests.helpers.redis_server import RedisServer  # noqa: E402

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer.start_new(tmp_path_factory.mktemp("redis"))
    if srv is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); CI runs these")
    yield srv
    srv.stop()


def text(url: str, prefix: str) -> str:
    return f"""
[state]
backend = "redis"
url = "{url}"
prefix = "{prefix}"
timeout = "50ms"

[policies.svc.breaker]
shared = true
consecutive_failures = 3
open_duration = "1m"
[policies.svc.partition]
max_open_ratio = 1.0
"""


@pytest.fixture
def engines(server: RedisServer) -> Iterator[Callable[[str], Engine]]:
    made: list[Engine] = []

    def make(prefix: str) -> Engine:
        engine = policyengine.loads(text(server.url, prefix), default=False)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def boom() -> None:
    raise ConnectionError("down")


def admitted(engine: Engine, key: str) -> bool:
    try:
        engine.guard("svc").key(key).call_sync(lambda: None)
    except CircuitOpenError:
        return False
    return True


def test_each_key_has_its_own_shared_state(
    server: RedisServer, engines: Callable[[str], Engine]
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    a, b = engines(prefix), engines(prefix)
    assert admitted(a, "x") and admitted(b, "x") and admitted(b, "y")  # the first key starts I/O
    for engine in (a, b):
        wait_until(lambda e=engine: e._state_backend.status()["connected"], "connected", 5)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            a.guard("svc").key("x").call_sync(boom)
    wait_until(lambda: a.guard("svc").key("x").state == "open", "the store to trip key x", 5)
    wait_until(lambda: not admitted(b, "x"), "the other process to see key x open", 5)
    assert admitted(b, "y") and b.guard("svc").key("y").state == "closed"
    client = redis.Redis.from_url(server.url)
    try:
        names = {k.decode() for k in client.scan_iter(f"{prefix}:breaker:*")}
    finally:
        client.close()
    assert f"{prefix}:breaker:svc%5Bx%5D" in names
    assert f"{prefix}:breaker:svc" not in names  # no breaker for the policy as a whole


def test_events_of_a_keys_shared_breaker_name_the_policy(
    server: RedisServer, engines: Callable[[str], Engine]
) -> None:
    engine = engines(f"t{uuid.uuid4().hex[:10]}")
    seen: list[policyengine.Event] = []
    engine.add_listener(seen.append)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            engine.guard("svc").key("x").call_sync(boom)

    def opened() -> list[policyengine.Event]:
        return [e for e in seen if e.name == "state_change" and e.data.get("to") == "open"]

    wait_until(opened, "key x to open", 5)
    assert all(e.guard == "svc" and e.data["key"] == "x" for e in opened())

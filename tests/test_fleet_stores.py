"""Shared breakers on a Redis Cluster, behind Sentinel, and through ``valkey://`` urls (issue 21).

The servers are real: three cluster masters made with `redis-cli --cluster create`, and a
Sentinel watching a master and its replica (the master is killed mid-run). Valkey speaks the same
protocol; without a valkey-server binary, ``valkey://`` urls are tested against redis-server.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import policyengine
from policyengine import CircuitOpenError, Engine
from policyengine._shared._address import parse_url

pytest.importorskip("redis", reason="redis-py is not installed: pip install '.[redis]'")
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer, free_port, policies
from tests.helpers.redis_topologies import Cluster, SentinelSet, raw

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = Cluster.start_new(tmp_path_factory.mktemp("cluster"))
    if made is None:
        pytest.skip("redis-server / redis-cli are not installed (apt-get install redis-server)")
    yield made
    made.stop()


@pytest.fixture
def engines() -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(url: str, prefix: str, breaker: str) -> Engine:
        # a generous store timeout: these tests count store errors, and a loaded CI machine can
        # take longer than the default 50 ms for a round trip now and then
        engine = policyengine.loads(policies(url, prefix, breaker, timeout="1s"), default=False)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def prefix() -> str:
    return f"f{uuid.uuid4().hex[:10]}"


def status(engine: Engine) -> dict[str, Any]:
    result: dict[str, Any] = engine._state_backend.status()
    return result


def connected(*engines: Engine, timeout: float = 5.0) -> None:
    for engine in engines:
        wait_until(lambda e=engine: status(e)["connected"], "the backend to connect", timeout)


def boom() -> None:
    raise ConnectionError("down")


def fail(engine: Engine, n: int = 1) -> None:
    for _ in range(n):
        with pytest.raises((ConnectionError, CircuitOpenError)):
            engine.guard("svc").call_sync(boom)


def calls_work(engine: Engine, n: int) -> list[str]:
    """`n` calls (half failing); anything but the dependency's error or a rejection is listed."""
    odd = []
    for i in range(n):
        try:
            engine.guard("svc").call_sync(boom if i % 2 else (lambda: None))
        except (ConnectionError, CircuitOpenError):
            pass
        except Exception as exc:
            odd.append(repr(exc))
    return odd


def trip_spreads(a: Engine, b: Engine, within: float = 3.0) -> None:
    fail(a, 2)
    wait_until(lambda: b.guard("svc").state == "open", "b to see a's trip", within)
    with pytest.raises(CircuitOpenError):
        b.guard("svc").call_sync(lambda: None)


RULE = 'consecutive_failures = 2\nopen_duration = "1h"'


# -- urls ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says", "parser_says"),
    [
        ("http://127.0.0.1:1/0", "must start with one of", "unsupported url scheme"),
        ("redis+sentinel://127.0.0.1:26379", "needs the service name", "names no service"),
        ("redis+cluster://127.0.0.1:7000/3", "database 0 only", "only database 0"),
        ("redis://a:1,b:2/0", "is not a host name", "several hosts need"),
        ("redis+cluster://127.0.0.1:x", "must be a number", "bad host:port"),
    ],
)
def test_a_bad_url_is_a_validation_error_at_its_line(
    tmp_path: Path, url: str, says: str, parser_says: str
) -> None:
    """The loader checks a url's shape (`_config.state_url`) before any store client sees it; the
    clients' own parser refuses the same urls, for code that builds a store directly."""
    path = tmp_path / "p.toml"
    good = policies("redis://127.0.0.1:1/0", "p", "")
    path.write_text(good)
    engine = policyengine.load(path, default=False)
    try:
        path.write_text(good.replace("redis://127.0.0.1:1/0", url))
        assert engine.reload() is False
        error = engine.status()["last_error"]
        assert f"{path}:4: state.url: error:" in error and says in error, error
    finally:
        engine.close()
    with pytest.raises(ValueError, match=parser_says):
        parse_url(url)


def test_urls_parse_into_addresses() -> None:
    a = parse_url("redis+sentinel://u:s3cret@h1:26379,h2/mymaster/2")
    assert (a.kind, a.nodes, a.service, a.db) == (
        "sentinel",
        (("h1", 26379), ("h2", 26379)),
        "mymaster",
        2,
    )
    assert (a.username, a.password) == ("u", "s3cret") and "s3cret" not in a.redacted()
    c = parse_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7001")
    assert (c.kind, c.nodes, c.db) == ("cluster", (("10.0.0.1", 7000), ("10.0.0.2", 7001)), 0)
    v = parse_url("valkeys://h:6380/1")
    assert (v.kind, v.tls, v.nodes, v.db) == ("single", True, (("h", 6380),), 1)


def test_valkey_urls_speak_the_same_protocol(tmp_path: Path, engines: Any) -> None:
    binary = shutil.which("valkey-server")
    if binary is not None:  # the real thing, when installed
        server: RedisServer | None = RedisServer(binary, tmp_path, free_port())
        assert server is not None
        server.start()
    else:
        server = RedisServer.start_new(tmp_path)
    if server is None:
        pytest.skip("neither valkey-server nor redis-server is installed")
    try:
        url = server.url.replace("redis://", "valkey://")
        p = prefix()
        a, b = engines(url, p, RULE), engines(url, p, RULE)
        connected(a, b)
        assert status(a)["url"] == url
        trip_spreads(a, b)
    finally:
        server.stop()


# -- Redis Cluster -------------------------------------------------------------------------------


def test_a_cluster_shares_breakers_whichever_node_owns_them(cluster: Cluster, engines: Any) -> None:
    owners = set()
    for _ in range(3):  # keys of other prefixes land on other nodes: messages still reach all
        p = prefix()
        owners.add(cluster.owner(f"{p}:breaker:svc").port)
        a, b = engines(cluster.url, p, RULE), engines(cluster.url, p, RULE)
        connected(a, b)
        trip_spreads(a, b)
        assert status(a)["errors"] == 0
    assert owners  # (which nodes served them, for the failure message)


def test_a_lost_cluster_node_costs_shared_state_only_until_it_is_back(
    cluster: Cluster, engines: Any
) -> None:
    p = prefix()
    owner = cluster.owner(f"{p}:breaker:svc")
    a, b = engines(cluster.url, p, RULE), engines(cluster.url, p, RULE)
    connected(a, b)
    owner.stop()
    try:
        assert calls_work(a, 40) == []  # local state in the gap: no store error reaches a call
        wait_until(lambda: status(a)["degraded"], "a to notice", 3)
    finally:
        owner.start()  # its nodes.conf brings it back with its slots
    cluster.wait_ok()
    connected(a, b, timeout=10)
    a.guard("svc").call_sync(lambda: None)  # a fresh run (a may have tripped locally)
    wait_until(lambda: a.guard("svc").state == "closed", "a to reconverge", 5)
    b.guard("svc").call_sync(lambda: None)
    trip_spreads(a, b)  # shared again


# -- Sentinel ------------------------------------------------------------------------------------


def test_a_sentinel_failover_keeps_calls_working_then_shares_again(
    tmp_path: Path, engines: Any
) -> None:
    sentinels = SentinelSet.start_new(tmp_path)
    if sentinels is None:
        pytest.skip("redis-server / redis-cli are not installed (apt-get install redis-server)")
    try:
        p = prefix()
        a, b = engines(sentinels.url, p, RULE), engines(sentinels.url, p, RULE)
        connected(a, b)
        a.guard("svc").call_sync(lambda: None)
        first = sentinels.master_port()
        sentinels.master.kill()  # mid-run
        t0 = time.monotonic()
        odd: list[str] = []
        while sentinels.master_port() == first:  # failover: the replica is promoted
            odd += calls_work(a, 4)
            assert time.monotonic() - t0 < 20, "no failover"
            time.sleep(0.02)
        assert odd == []  # local state in the gap
        assert sentinels.master_port() == sentinels.replica.port
        connected(a, b, timeout=10)
        for engine in (a, b):  # a fresh run on each (a may have tripped locally)
            engine.guard("svc").call_sync(lambda: None)
            wait_until(lambda e=engine: e.guard("svc").state == "closed", "closed", 5)
        # shared again, through the new master (b's subscription may still be reconnecting)
        trip_spreads(a, b, within=10.0)
        state = raw(sentinels.replica.port, "HGET", f"{p}:breaker:svc", "st")
        assert state == "open"
    finally:
        sentinels.stop()

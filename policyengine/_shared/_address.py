"""Where the store is: a `[state] url` parsed, and the redis-py clients that reach it.

Accepted urls (redis-py's own clients behind each; no protocol is written here):

- ``redis://[user:pass@]host:port/db`` and ``rediss://`` (TLS): one server (`redis.asyncio.Redis`).
- ``valkey://`` / ``valkeys://``: the same, for Valkey (the same protocol and commands).
- ``redis+cluster://h1:p1,h2:p2`` (``rediss+cluster://``): a Redis Cluster, reached through
  `redis.asyncio.cluster.RedisCluster` from these startup nodes. Every script touches one key,
  the breaker's hash, so each runs on the node owning its slot; pub/sub messages are broadcast by
  the cluster bus, so the subscriber listens on any one node (the next one after a failure).
- ``redis+sentinel://h1:p1,h2:p2/service_name[/db]``: a master found through Sentinel
  (`redis.asyncio.sentinel.Sentinel.master_for`); after a failover the clients are rebuilt and
  find the new master.

Every client has explicit timeouts and no retries: a failed command is never re-sent.
`parse_url` imports nothing of redis-py (the config can check a url without it installed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

__all__ = ["Address", "parse_url"]

Kind = Literal["single", "cluster", "sentinel"]
_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "valkey": ("single", False),
    "valkeys": ("single", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "valkey+cluster": ("cluster", False),
    "redis+sentinel": ("sentinel", False),
    "valkey+sentinel": ("sentinel", False),
}
HOW = (
    "use redis://host:port/db, rediss://, valkey://, redis+cluster://h1:p1,h2:p2 or "
    "redis+sentinel://h1:p1,h2:p2/service_name"
)


@dataclass(frozen=True)
class Address:
    """A parsed `[state] url`."""

    url: str
    kind: Kind
    nodes: tuple[tuple[str, int], ...]
    tls: bool = False
    db: int = 0
    service: str = ""
    username: str | None = None
    password: str | None = None

    def redacted(self) -> str:
        if not self.password:
            return self.url
        return self.url.replace(f":{self.password}@", ":***@", 1)

    def _common(self, timeout: float | None, connect_timeout: float) -> dict[str, Any]:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return {
            "socket_timeout": timeout,
            "socket_connect_timeout": connect_timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            "decode_responses": True,
            "username": self.username,
            "password": self.password,
        }

    def client(self, timeout: float | None, connect_timeout: float) -> Any:
        """The client for script calls (or, with `timeout` None, blocking pub/sub reads)."""
        import redis.asyncio as aredis
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.sentinel import Sentinel

        kw = self._common(timeout, connect_timeout)
        if self.kind == "cluster":
            nodes = [ClusterNode(h, p) for h, p in self.nodes]
            return RedisCluster(
                startup_nodes=nodes, ssl=self.tls, require_full_coverage=False, **kw
            )
        if self.kind == "sentinel":
            sentinel = Sentinel(
                list(self.nodes),
                sentinel_kwargs={"socket_timeout": connect_timeout, "retry": kw["retry"]},
            )
            return sentinel.master_for(self.service, db=self.db, **kw)
        url = self.url
        if url[:6].lower() == "valkey":  # the same protocol: redis-py's own url parsing
            url = "redis" + url[6:]
        del kw["username"], kw["password"]  # (in the url, which from_url reads)
        return aredis.Redis.from_url(
            url, retry_on_timeout=False, retry_on_error=[], protocol=2, **kw
        )

    def subscriber(self, connect_timeout: float, attempt: int) -> Any:
        """A client for pub/sub: on a cluster, one node (the next one on each `attempt`)."""
        import redis.asyncio as aredis

        if self.kind != "cluster":
            return self.client(None, connect_timeout)
        host, port = self.nodes[attempt % len(self.nodes)]
        kw = self._common(None, connect_timeout)
        return aredis.Redis(host=host, port=port, ssl=self.tls, protocol=2, **kw)


def _nodes(netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    out = []
    for part in netloc.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep:
            host, port = part.strip(), str(default_port)
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ValueError(f"bad host:port {part!r} in the url; {HOW}")
        out.append((host, int(port)))
    return tuple(out)


def parse_url(url: str) -> Address:
    """The `Address` of `url`, or ValueError saying what is wrong and what is accepted."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(f"unsupported url scheme {scheme + sep!r}; {HOW}")
    kind, tls = _SCHEMES[scheme.lower()]
    netloc, _, path = rest.partition("/")
    path = path.split("?", 1)[0]
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, has_pass, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_pass else None
    default = 26379 if kind == "sentinel" else 6379
    nodes = _nodes(netloc, default)
    segments = [s for s in path.split("/") if s]
    service = ""
    if kind == "sentinel":
        if not segments:
            raise ValueError(f"the sentinel url names no service: {HOW}")
        service = unquote(segments.pop(0))
    if kind == "cluster" and segments and segments != ["0"]:
        raise ValueError("a Redis Cluster has only database 0: drop the /db from the url")
    db = 0
    if segments:
        if len(segments) > 1 or not segments[0].isdigit():
            raise ValueError(f"bad database {path!r} in the url (a number, such as /0)")
        db = int(segments[0])
    if kind == "single" and len(nodes) > 1:
        raise ValueError(f"several hosts need redis+cluster:// or redis+sentinel://; {HOW}")
    return Address(url, kind, nodes, tls, db, service, username, password)

"""The shape of a `[state] url`, checked while the file is validated (no client is built).

A url the Redis client would refuse (a port that is not a number, an unknown scheme, a database
that is not an integer, a query option of the wrong type) is a validation error at ``state.url``
and its line, so `validate` catches it in CI instead of `load()` failing at start-up. The
accepted forms (`SCHEMES`):

- ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS), and ``valkey://`` /
  ``valkeys://`` (the same protocol);
- ``unix:///path/to/redis.sock[?db=N]``;
- ``redis+cluster://h1:p1,h2:p2[,...]`` (startup nodes; a cluster has database 0 only);
- ``redis+sentinel://h1:p1,h2:p2[,...]/service_name[/db]`` (sentinels, then the service).

Query options (``?socket_keepalive=true&db=2``) are checked against `_QUERY` (the options
redis-py reads from a url, with their types); any other is an error with a did-you-mean. Every
message leaves a password out.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from urllib.parse import parse_qsl

__all__ = ["SCHEMES", "URL_PATTERN", "check_state_url"]

SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "redis+sentinel",
    "valkey",
    "valkeys",
)


def _int(text: str) -> bool:
    return text.isdigit()


def _number(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


def _boolean(text: str) -> bool:
    return text.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off")


URL_PATTERN = r"^\s*(?:redis|rediss|unix|redis\+cluster|redis\+sentinel|valkey|valkeys)://"
"""The schemes as a JSON Schema pattern, for editors (the full shape is checked here)."""

_QUERY: dict[str, Callable[[str], bool]] = {
    "db": _int,
    "protocol": lambda t: t in ("2", "3"),
    "health_check_interval": _number,
    "max_connections": _int,
    "socket_connect_timeout": _number,
    "socket_keepalive": _boolean,
    "socket_timeout": _number,
    "timeout": _number,
    "retry_on_timeout": _boolean,
    "ssl_check_hostname": _boolean,
    "ssl_cert_reqs": lambda t: t in ("none", "optional", "required"),
    "ssl_ca_certs": bool,
    "ssl_certfile": bool,
    "ssl_keyfile": bool,
    "client_name": bool,
    "username": bool,
    "password": bool,
    "readonly": _boolean,
}
_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)$")


def _shown(url: str) -> str:
    """`url` without its password (the text before the last ``@`` of the netloc)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    user, at, hosts = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.partition(':')[0]}:***@{hosts}"
    return f"{scheme}://{netloc}{slash}{tail}"


def _host_port(item: str) -> str | None:
    """The problem of one ``host[:port]``, or None."""
    if not item:
        return "a host is missing (write host:port, separated by commas)"
    if item.startswith("["):
        if "]" not in item:
            return f"{item!r} is not a host name or address"
        host, _, rest = item.partition("]")
        host += "]"
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            return f"{item!r} is not host:port"
    else:
        host, colon, port_text = item.rpartition(":")
        if not colon:
            host, port = item, None
        else:
            port = port_text
    if not _HOST.match(host):
        return f"{host!r} is not a host name or address"
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        return f"the port of {item!r} must be a number from 1 to 65535"
    return None


def _check_query(query: str) -> str | None:
    for name, value in parse_qsl(query, keep_blank_values=True):
        check = _QUERY.get(name)
        if check is None:
            close = difflib.get_close_matches(name, list(_QUERY), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"unknown option {name!r} in the query{hint}"
        if name != "password" and not check(value):
            return f"option {name}={value!r} has the wrong type"
    return None


def _db(text: str) -> str | None:
    if text and not text.isdigit():
        return f"the database number must be an integer (as in /0), not {text!r}"
    return None


def _problem(url: str) -> str | None:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        choices = ", ".join(f"{s}://" for s in SCHEMES)
        close = difflib.get_close_matches(scheme, SCHEMES, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}://?)" if sep and close else ""
        return f"the url must start with one of {choices}{hint}"
    location, _, query = rest.partition("?")
    if "#" in query or "#" in location:
        return "a url has no #fragment here"
    problem = _check_query(query)
    if problem is not None:
        return problem
    if scheme == "unix":
        path = location.partition("@")[2] if "@" in location else location
        return None if path.startswith("/") and len(path) > 1 else "unix:// needs a socket path"
    netloc, _, path = location.partition("/")
    hosts = netloc.rpartition("@")[2]
    items = hosts.split(",") if "+" in scheme else [hosts]
    if "+" not in scheme and not hosts:
        return None  # redis:// alone means localhost, as in redis-py
    for item in items:
        problem = _host_port(item)
        if problem is not None:
            return problem
    if scheme == "redis+sentinel":
        service, _, db = path.partition("/")
        if not service:
            return "redis+sentinel:// needs the service name: redis+sentinel://h1:p1,h2:p2/name"
        return _db(db.rstrip("/"))
    if scheme == "redis+cluster":
        return None if path in ("", "0") else "a cluster has database 0 only: leave /db out"
    return _db(path.rstrip("/"))


def check_state_url(url: str) -> str:
    """`url` if its shape is one the state backends accept, else ValueError with the fix."""
    problem = _problem(url.strip())
    if problem is None:
        return url
    raise ValueError(f"{_shown(url)!r} is not a state url: {problem}")

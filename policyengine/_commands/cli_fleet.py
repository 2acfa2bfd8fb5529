"""``policyengine force`` and ``policyengine fleet``: operate a fleet through its state store.

    policyengine force GUARD open|closed|clear --state URL [--prefix P] [--for 10m]
    policyengine fleet --state URL [--prefix P] [--format text|json]

`force` writes an override into the guard's breaker hash with the breaker script's own ``force``
operation, which publishes it: every process whose breaker for GUARD is ``shared`` (``true`` or
``"quorum"``) follows within a round trip (pub/sub; the periodic resync and the heartbeats are
the backstop) and the override lapses by itself after ``--for`` (default 10 minutes), when the
processes go back to the policy of their files. A `force` written in a process's own file wins
in that process (and, since such a process publishes its force on every resync, in the fleet).
`clear` removes an override at once.

`fleet` lists the live processes (from their heartbeats), the policy versions they run (is the
whole fleet on the new file?) and each shared guard's state, in the store and in each process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

__all__ = ["add_parser", "register"]

DEFAULT_FOR = 600.0


def add_parser(sub: Any) -> None:
    """Add the two commands to `policyengine`'s subparsers (see `_commands.cli.COMMAND_MODULES`)."""
    p = sub.add_parser("force", help="force a shared guard open or closed across the fleet")
    p.add_argument("guard", metavar="GUARD")
    p.add_argument("mode", choices=("open", "closed", "clear"), metavar="MODE")
    _store_args(p)
    p.add_argument("--for", dest="duration", default="10m", help="lapses after this (10m)")
    p.set_defaults(run=_force)
    p = sub.add_parser("fleet", help="live processes, their policy versions, guard states")
    _store_args(p)
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(run=_fleet)


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", required=True, metavar="URL", help="the [state] url")
    p.add_argument("--prefix", default="policyengine", help="the [state] prefix")
    p.add_argument("--timeout", type=float, default=2.0, help="per round trip, seconds")


def _address(args: argparse.Namespace) -> Any:
    from .._shared._address import parse_url

    return parse_url(args.state)


def _force(args: argparse.Namespace) -> int:
    from .._config.units import parse_duration

    try:
        address = _address(args)
        ttl = parse_duration(args.duration)
    except ValueError as exc:
        print(f"policyengine force: {exc}", file=sys.stderr)
        return 2
    if ttl <= 0:
        print("policyengine force: --for must be greater than 0s", file=sys.stderr)
        return 2
    mode = "none" if args.mode == "clear" else args.mode
    state = asyncio.run(force(address, args.prefix, args.guard, mode, ttl, args.timeout))
    until = "" if mode == "none" else f" for {args.duration}"
    print(f"{args.guard}: {state} in {address.redacted()} (prefix {args.prefix}){until}")
    return 0


def _fleet(args: argparse.Namespace) -> int:
    try:
        address = _address(args)
    except ValueError as exc:
        print(f"policyengine fleet: {exc}", file=sys.stderr)
        return 2
    view = asyncio.run(fleet_view(address, args.prefix, args.timeout))
    if args.format == "json":
        print(json.dumps(view, indent=2, sort_keys=True))
    else:
        sys.stdout.write(render(view))
    return 0


async def force(
    address: Any, prefix: str, guard: str, mode: str, ttl: float, timeout: float
) -> str:
    """Write (or, with mode "none", remove) an override; returns the state the store now has."""
    from redis.exceptions import NoScriptError

    from .._shared._scripts import LUA, LUA_SHA, NEUTRAL_ARGS, breaker_key, wire_name
    from .._shared._wire import Reply

    client = address.client(timeout, timeout)
    try:
        if address.kind == "cluster":
            await client.initialize()
        argv = ("force", f"{prefix}:events", wire_name(guard), 0, *NEUTRAL_ARGS)
        argv += (mode, max(1, round(ttl * 1000)))
        key = breaker_key(prefix, guard)
        try:
            raw = await client.evalsha(LUA_SHA, 1, key, *argv)
        except NoScriptError:
            raw = await client.eval(LUA, 1, key, *argv)
        return Reply.parse(raw).state
    finally:
        await client.aclose()


async def fleet_view(address: Any, prefix: str, timeout: float) -> dict[str, Any]:
    """The live processes and the guards they share, as the store holds them."""
    from .._shared._scripts import breaker_key

    client = address.client(timeout, timeout)
    try:
        if address.kind == "cluster":
            await client.initialize()
        seconds, micros = await client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        flat = await client.hgetall(f"{prefix}:fleet")
        processes = []
        for pid, value in sorted(flat.items()):
            expiry, _, info = value.partition("\t")
            if expiry.isdigit() and int(expiry) > now_ms:
                processes.append({"id": pid, **json.loads(info)})
        versions: dict[str, int] = {}
        guards: dict[str, dict[str, Any]] = {}
        for proc in processes:
            version = str(proc.get("version"))
            versions[version] = versions.get(version, 0) + 1
            for name, state in proc.get("guards", {}).items():
                entry = guards.setdefault(name, {"store": None, "processes": {}})
                entry["processes"][state] = entry["processes"].get(state, 0) + 1
        for name, entry in guards.items():
            entry["store"] = await client.hget(breaker_key(prefix, name), "st") or "closed"
        return {"processes": processes, "versions": versions, "guards": guards}
    finally:
        await client.aclose()


def render(view: dict[str, Any]) -> str:
    procs = view["processes"]
    lines = [f"{len(procs)} live process(es)"]
    for proc in procs:
        states = ", ".join(f"{g}={s}" for g, s in sorted(proc.get("guards", {}).items()))
        lines.append(f"  {proc['id']}  version {proc.get('version')}  {states}")
    versions = view["versions"]
    one = "one version" if len(versions) <= 1 else f"{len(versions)} versions: not all on one"
    lines.append(f"policy versions ({one}): " + ", ".join(f"{v} x{n}" for v, n in versions.items()))
    lines.append("guards:")
    for name, entry in sorted(view["guards"].items()):
        seen = ", ".join(f"{s} x{n}" for s, n in sorted(entry["processes"].items()))
        lines.append(f"  {name}: store {entry['store']}; processes {seen}")
    return "\n".join(lines) + "\n"


register = add_parser  # the name this module had first

"""Throwaway Redis topologies on loopback ports, for the fleet tests: a 3-master Redis Cluster and
a Sentinel watching a master and its replica. Both are built from `redis-server` (Sentinel is
``redis-server CONF --sentinel``) and `redis-cli --cluster create`; None when a binary is missing.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.helpers.redis_server import RedisServer, free_port

__all__ = ["Cluster", "SentinelSet", "raw"]


def cluster_port() -> int:
    """A free port a cluster node can use (its bus port, +10000, must be a valid port too)."""
    while True:
        port = free_port()
        if port <= 55535:
            return port
        with contextlib.suppress(OSError), socket.socket() as s:
            candidate = random.randint(20000, 55535)
            s.bind(("127.0.0.1", candidate))
            with socket.socket() as bus:
                bus.bind(("127.0.0.1", candidate + 10000))
            return candidate


def raw(port: int, *args: str) -> str:
    """One command through redis-cli (its reply as text), for setup and assertions."""
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
    )
    return out.stdout.strip()


def _wait(predicate: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Node(RedisServer):
    """A redis-server with extra arguments (cluster mode, replication)."""

    def __init__(self, binary: str, directory: Path, port: int, extra: list[str]) -> None:
        super().__init__(binary, directory, port)
        self.extra = extra

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.directory), "--logfile", "", *self.extra]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.directory
        )
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None


class Cluster:
    """Three masters, no replicas; `require-full-coverage no`, so a lost node costs its slots."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)

    @classmethod
    def start_new(cls, directory: Path) -> Cluster | None:
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            return None
        nodes = []
        for i in range(3):
            port = cluster_port()
            d = directory / f"node{i}"
            d.mkdir()
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            extra += ["--cluster-node-timeout", "500", "--cluster-require-full-coverage", "no"]
            node = Node(binary, d, port, extra)
            node.start()
            nodes.append(node)
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        create = ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0"]
        subprocess.run([*create, "--cluster-yes"], capture_output=True, timeout=30, check=True)
        cluster = cls(nodes)
        cluster.wait_ok()
        return cluster

    def wait_ok(self) -> None:
        for node in self.nodes:
            _wait(
                lambda n=node: "cluster_state:ok" in raw(n.port, "CLUSTER", "INFO"),
                f"cluster node {node.port} to be ok",
            )

    def owner(self, key: str) -> Node:
        """The node serving `key`'s slot."""
        slot = int(raw(self.nodes[0].port, "CLUSTER", "KEYSLOT", key))
        for node in self.nodes:
            for line in raw(node.port, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" in fields[2]:
                    for span in fields[8:]:
                        lo, _, hi = span.partition("-")
                        if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                            return node
        raise LookupError(f"no node serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelSet:
    """A master, its replica and one Sentinel (quorum 1, fast failure detection)."""

    SERVICE = "pe-master"

    def __init__(self, master: Node, replica: Node, sentinel: Node) -> None:
        self.master, self.replica, self.sentinel = master, replica, sentinel
        self.url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{self.SERVICE}"

    @classmethod
    def start_new(cls, directory: Path) -> SentinelSet | None:
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            return None
        m_port, r_port, s_port = free_port(), free_port(), free_port()
        (directory / "m").mkdir()
        (directory / "r").mkdir()
        master = Node(binary, directory / "m", m_port, [])
        master.start()
        replica = Node(binary, directory / "r", r_port, ["--replicaof", "127.0.0.1", str(m_port)])
        replica.start()
        conf = directory / "sentinel.conf"
        conf.write_text(
            f"port {s_port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {cls.SERVICE} 127.0.0.1 {m_port} 1\n"
            f"sentinel down-after-milliseconds {cls.SERVICE} 300\n"
            f"sentinel failover-timeout {cls.SERVICE} 2000\n"
        )
        sentinel = Node(binary, directory, s_port, [])
        sentinel.proc = subprocess.Popen(
            [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait(sentinel.ping, "the sentinel to start")
        out = cls(master, replica, sentinel)
        _wait(lambda: str(r_port) in raw(s_port, "SENTINEL", "REPLICAS", cls.SERVICE), "replica")
        _wait(lambda: "master_link_status:up" in raw(r_port, "INFO", "replication"), "sync")
        return out

    def master_port(self) -> int:
        reply = raw(self.sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
        return int(reply.split()[-1])

    def stop(self) -> None:
        for node in (self.sentinel, self.replica, self.master):
            node.stop()

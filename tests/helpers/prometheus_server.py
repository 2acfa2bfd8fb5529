"""A throwaway Prometheus server on a free loopback port, scraping one target of the test's.

    server = PrometheusServer.start_new(tmp_dir, target="127.0.0.1:PORT")  # None: no binary
    server.query("up"), server.scrapes(), server.stop()

The scrape interval is short (0.2 s) so a test waits for a scrape in well under a second; the
data lives in the temporary directory and dies with it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers.redis_server import free_port

__all__ = ["SCRAPE_INTERVAL", "PrometheusServer"]

SCRAPE_INTERVAL = 0.2  # seconds

_CONFIG = """\
global:
  scrape_interval: {interval}ms
  scrape_timeout: {interval}ms
  evaluation_interval: 1s
scrape_configs:
  - job_name: policyengine
    static_configs:
      - targets: ["{target}"]
"""


class PrometheusServer:
    """One `prometheus` process scraping `target` every SCRAPE_INTERVAL."""

    def __init__(self, binary: str, directory: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = directory / "prometheus.yml"
        config.write_text(_CONFIG.format(interval=int(SCRAPE_INTERVAL * 1000), target=target))
        args = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.log = directory / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    @classmethod
    def start_new(cls, directory: Path, target: str) -> PrometheusServer | None:
        binary = shutil.which("prometheus")
        if binary is None:
            return None
        server = cls(binary, directory, target)
        server.wait_ready()
        return server

    def _get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=2) as response:
            return response.read()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._get("/-/ready").startswith(b"Prometheus Server is Ready"):
                    return
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"prometheus did not start on port {self.port}:\n{self.log.read_text()}"
                )
            time.sleep(0.02)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query (``/api/v1/query``)."""
        body = json.loads(self._get("/api/v1/query", query=promql))
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, promql: str) -> float | None:
        """The value of a query that gives one series, None when it gives none."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

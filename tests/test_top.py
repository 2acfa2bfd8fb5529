"""`policyengine top URL` against a real service: uvicorn serving `policyengine.asgi.status_app`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

pytest.importorskip("uvicorn", reason="uvicorn is not installed: pip install '.[dev]'")
pytest.importorskip("starlette", reason="starlette is not installed: pip install '.[dev]'")

from starlette.applications import Starlette
from starlette.routing import Mount

import policyengine
from policyengine import Engine
from policyengine._commands import cli as _cli
from policyengine._commands.top import RemoteSampler
from policyengine.asgi import status_app
from tests.helpers.asgi_servers import Downstream, serve

POLICIES = """
schema_version = 1
[policies.api.retry]
max_attempts = 1
[policies.api.breaker]
consecutive_failures = 2
open_duration = "1h"

[policies.pool.bulkhead]
max_concurrent = 3
max_queue = 0
"""


@pytest.fixture
def service() -> Iterator[tuple[Engine, str]]:
    engine = policyengine.loads(POLICIES, default=False)
    app = Starlette(routes=[Mount("/ops", app=status_app(engine))])
    try:
        with serve(app) as url:
            yield engine, f"{url}/ops"
    finally:
        engine.close()


async def ok() -> str:
    return "ok"


async def refused() -> None:
    raise ConnectionError("refused")


async def trip(engine: Engine) -> None:
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await engine.guard("api").call(refused)


def test_rates_come_from_two_samples(service: tuple[Engine, str]) -> None:
    engine, url = service
    sampler = RemoteSampler(url)
    rows, _ = sampler.poll()
    assert [r.name for r in rows] == ["api", "pool"]
    assert rows[1].bulkhead == (0, 3, 0)
    asyncio.run(_calls(engine, 20))
    rows, _ = sampler.poll()
    pool = rows[1]
    assert pool.calls_per_s > 0 and pool.ok_rate == 1.0
    assert pool.totals["calls"] == 20 and pool.p50 is not None


async def _calls(engine: Engine, n: int) -> None:
    for _ in range(n):
        await engine.guard("pool").call(ok)


def test_once_prints_states_rates_and_recent_events(
    service: tuple[Engine, str], capsys: pytest.CaptureFixture[str]
) -> None:
    engine, url = service
    asyncio.run(trip(engine))
    assert _cli.main(["top", url, "--once", "--interval", "0.1"]) == 0
    out = capsys.readouterr().out
    version = engine.status()["version"]
    assert f"loaded {url} version {version} (guards: api, pool)" in out
    assert "state api: closed -> open (consecutive_failures)" in out
    lines = [line for line in out.splitlines() if "guard api" in line]
    assert len(lines) == 1 and "state=open" in lines[0], out
    assert any("guard pool" in line and "bulkhead=0/3" in line for line in out.splitlines())


def test_a_url_that_is_not_a_status_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    with serve(Downstream()) as url:  # answers JSON, but not a status document
        assert _cli.main(["top", url, "--once"]) == 1
    err = capsys.readouterr().err
    assert "is not a policyengine status endpoint" in err and "status_app" in err


def test_no_tty_prints_plain_lines_until_the_duration_ends(
    service: tuple[Engine, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = service
    code = _cli.main(["top", url, "--no-tty", "--interval", "0.25", "--duration", "1.2"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"watching {url}/status every 0.25s; Ctrl-C to quit"
    rows = [line for line in out if "guard pool" in line]
    assert 1 <= len(rows) <= 3, out  # one row per guard per second of plain output


def test_the_live_view_titles_itself_and_shows_no_story_phase(service: tuple[Engine, str]) -> None:
    rich = pytest.importorskip("rich", reason="rich is not installed: pip install '.[demo]'")
    import io

    from policyengine._commands.top import _frame
    from policyengine._demo._live import LiveView

    engine, url = service
    asyncio.run(trip(engine))
    sampler = RemoteSampler(url)
    rows, notices = sampler.poll()
    out = io.StringIO()
    console = rich.console.Console(file=out, width=160, force_terminal=True, color_system=None)
    view = LiveView(console=console)
    view.show_intro("")
    view.update(rows, notices, _frame(sampler, url))
    view.close([])
    text = out.getvalue()
    assert f"policyengine top  {url}" in text and "phase" not in text
    assert "api" in text and "open" in text and "state api: closed -> open" in text

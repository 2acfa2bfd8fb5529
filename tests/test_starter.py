"""`policyengine init`'s starter fits httpx: a real `httpx.ConnectError` and a 503 response are
retried through `GuardedTransport`, a 404 is not (issue 20)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

import policyengine
from policyengine._commands.cli import main
from policyengine._commands.starter import starter
from policyengine._config.loader import load_path, load_text
from policyengine.httpx import GuardedTransport
from policyengine.testing import FakeClock


def engine_from_starter(clock: FakeClock) -> policyengine.Engine:
    return policyengine.loads(starter("p.toml", None, httpx=True), clock=clock, default=False)


def scripted(*steps: int | type[Exception]) -> tuple[httpx.MockTransport, list[str]]:
    """A transport that answers each request with the next step: a status, or an error."""
    seen: list[str] = []
    queue = list(steps)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        step = queue.pop(0)
        if isinstance(step, int):
            return httpx.Response(step, text=f"status {step}")
        raise step("scripted", request=request)  # type: ignore[call-arg]

    return httpx.MockTransport(handle), seen


@pytest.mark.parametrize(
    "first",
    [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError, 503, 429, 502, 504],
)
async def test_the_starter_retries_what_httpx_raises_and_retryable_statuses(
    first: int | type[Exception],
) -> None:
    clock = FakeClock()
    engine = engine_from_starter(clock)
    transport, seen = scripted(first, 200)
    guarded = GuardedTransport("example", transport, engine=engine)
    async with httpx.AsyncClient(transport=guarded) as client:
        response = await client.get("http://api.test/items")
    assert response.status_code == 200 and seen == ["GET", "GET"]
    assert engine.guard("example").metrics()["retries"] == 1

    plain = policyengine.loads(starter("p.toml", None), clock=clock, default=False)
    transport, seen = scripted(first, 200)  # what the old starter did: one attempt only
    guarded = GuardedTransport("example", transport, engine=plain)
    async with httpx.AsyncClient(transport=guarded) as client:
        if isinstance(first, int):
            assert (await client.get("http://api.test/items")).status_code == first
        else:
            with pytest.raises(first):
                await client.get("http://api.test/items")
    assert seen == ["GET"]


async def test_the_starter_gives_up_after_three_attempts_with_the_last_response() -> None:
    transport, seen = scripted(503, 503, 503)
    guarded = GuardedTransport("example", transport, engine=engine_from_starter(FakeClock()))
    async with httpx.AsyncClient(transport=guarded) as client:
        response = await client.get("http://api.test/items")
    assert response.status_code == 503 and response.text == "status 503" and len(seen) == 3


@pytest.mark.parametrize("status", [400, 404, 409])
async def test_the_starter_does_not_retry_a_client_error(status: int) -> None:
    transport, seen = scripted(status)
    guarded = GuardedTransport("example", transport, engine=engine_from_starter(FakeClock()))
    async with httpx.AsyncClient(transport=guarded) as client:
        response = await client.get("http://api.test/items")
    assert response.status_code == status and seen == ["GET"]


async def test_a_connect_error_that_persists_is_raised_as_it_is() -> None:
    transport, seen = scripted(httpx.ConnectError, httpx.ConnectError, httpx.ConnectError)
    guarded = GuardedTransport("example", transport, engine=engine_from_starter(FakeClock()))
    async with httpx.AsyncClient(transport=guarded) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://api.test/items")
    assert len(seen) == 3


def test_init_writes_the_httpx_starter_when_httpx_is_installed_or_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "auto.toml"]) == 0
    assert '"httpx.NetworkError"' in (tmp_path / "auto.toml").read_text()
    assert load_path(tmp_path / "auto.toml", strict=True).policies.keys() == {"example"}
    assert main(["init", "--for", "plain", "plain.toml"]) == 0
    plain = (tmp_path / "plain.toml").read_text()
    assert 'retry_on = ["ConnectionError", "TimeoutError"]' in plain
    assert '# with httpx, also: "httpx.NetworkError"' in plain
    monkeypatch.setattr("policyengine._commands.cli.has_httpx", lambda: False)
    assert main(["init", "nohttpx.toml"]) == 0
    assert (tmp_path / "nohttpx.toml").read_text() == plain.replace("plain.toml", "nohttpx.toml")
    capsys.readouterr()


def test_both_starters_validate_strictly() -> None:
    for flavour in (True, False):
        ps = load_text(starter("p.toml", "schema/policies.schema.json", httpx=flavour), strict=True)
        assert ps.warnings == () and set(ps.policies) == {"example"}

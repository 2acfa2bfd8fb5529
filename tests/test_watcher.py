"""The file watcher on a real file system, with inotify and with polling: in-place writes, atomic
replaces, delete and re-create, ConfigMap symlink swaps, directories of policies, the backstop.
Each case runs on both paths: the loop watcher (the engine loaded inside a running asyncio loop,
here one running in a thread of its own) and the thread watcher (loaded outside any loop).

No test sleeps a fixed time to let the watcher act: each waits for the reload it expects (an
event, or `status()`), with a deadline, so it is fast when things work and slow only on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import policyengine
from policyengine import Engine, Event
from policyengine._config.loader import load_text
from policyengine._registry.watcher import Watcher
from tests.helpers.polling import LoopThread, run_on, wait_until

TIMEOUT = 5.0


def policy(limit: int, name: str = "db") -> str:
    return f"[policies.{name}.bulkhead]\nmax_concurrent = {limit}\nmax_queue = 10\n"


def limit_of(engine: Engine, name: str = "db") -> int:
    bulkhead = engine.guards[name].bulkhead
    assert bulkhead is not None
    return bulkhead.max_concurrent


def wait_for_version(engine: Engine, text: str) -> None:
    version = load_text(text).version
    wait_until(lambda: engine.status()["version"] == version, f"version {version}")


def wait_for_look(engine: Engine, after: int) -> None:
    """Wait until the watcher has looked at the files more than `after` times."""
    wait_until(lambda: engine._watcher.looks > after, f"look #{after + 1}")


class Events:
    """Reload events, as the watcher thread emits them."""

    def __init__(self, engine: Engine) -> None:
        self.items: list[Event] = []
        self._cond = threading.Condition()
        engine.add_listener(self._on)

    def _on(self, event: Event) -> None:
        if event.name in ("reload", "reload_failed", "policy_removed"):
            with self._cond:
                self.items.append(event)
                self._cond.notify_all()

    def count(self, name: str) -> int:
        return sum(e.name == name for e in self.items)

    def wait(self, name: str, n: int = 1) -> Event:
        """Wait until `n` events called `name` have arrived; return the last."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self.count(name) >= n, TIMEOUT)
        assert ok, f"no {name} #{n} within {TIMEOUT}s; got {[e.name for e in self.items]}"
        return [e for e in self.items if e.name == name][n - 1]


@pytest.fixture(params=[False, True], ids=["inotify", "polling"])
def polling(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture(params=["loop", "thread"])
def on(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def app_loop(on: str) -> Iterator[asyncio.AbstractEventLoop | None]:
    """The application's loop for the loop path (None on the thread path)."""
    with LoopThread() if on == "loop" else contextlib.nullcontext() as loop:
        yield loop


def load_on(loop: asyncio.AbstractEventLoop | None, path: Path, **options: Any) -> Engine:
    """`load(path, watch=True)` inside the running `loop` (so it binds to it), or here."""
    if loop is None:
        return policyengine.load(path, watch=True, default=False, **options)
    return run_on(loop, lambda: policyengine.load(path, watch=True, default=False, **options))


@pytest.fixture
def watch(
    polling: bool, on: str, app_loop: asyncio.AbstractEventLoop | None
) -> Iterator[Callable[..., tuple[Engine, Events]]]:
    """Load a path with watching on (fast polling in polling mode), on the loop or a thread;
    closed after the test."""
    engines: list[Engine] = []

    def make(path: Path, **options: Any) -> tuple[Engine, Events]:
        options.setdefault("force_polling", polling)
        options.setdefault("poll_interval", 0.05)
        engine = load_on(app_loop, path, **options)
        engines.append(engine)
        assert engine.status()["watch"]["on"] == on
        events = Events(engine)
        watcher = engine._watcher
        wait_until(lambda: watcher.looks >= 1, "the start-up look")
        return engine, events

    yield make
    for engine in engines:
        engine.close()


def atomic_write(path: Path, text: str) -> None:
    """Save as editors do: a temporary file in the same directory, renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- change kinds
def test_in_place_writes_apply(tmp_path: Path, watch: Callable[..., Any]) -> None:
    f = tmp_path / "policies.toml"
    f.write_text(policy(1))
    engine, events = watch(f)
    for n in (2, 3, 4):
        f.write_text(policy(n))
        wait_for_version(engine, policy(n))
        assert limit_of(engine) == n
    assert events.count("reload_failed") == 0
    assert engine.status()["last_error"] is None


def test_atomic_replaces_apply_again_and_again(tmp_path: Path, watch: Callable[..., Any]) -> None:
    f = tmp_path / "policies.toml"
    f.write_text(policy(1))
    engine, events = watch(f)
    for n in range(2, 8):
        atomic_write(f, policy(n))
        event = events.wait("reload", n - 1)
        assert event.data["version"] == load_text(policy(n)).version
        assert limit_of(engine) == n
    assert engine.status()["reloads"] == 6


def test_delete_keeps_the_last_good_policies_reports_once_and_recreate_applies(
    tmp_path: Path, watch: Callable[..., Any]
) -> None:
    f = tmp_path / "policies.toml"
    f.write_text(policy(3))
    engine, events = watch(f, backstop=0.02)  # many periodic looks while the file is gone
    version = engine.status()["version"]
    f.unlink()
    failed = events.wait("reload_failed")
    assert failed.data["issues"][0]["file"] == str(f)
    looks = engine._watcher.looks
    wait_until(lambda: engine._watcher.looks >= looks + 5, "more looks at the missing file")
    status = engine.status()
    assert events.count("reload_failed") == 1 and status["failed_reloads"] == 1  # no error loop
    assert status["version"] == version and limit_of(engine) == 3 and status["last_error"]
    assert engine.guard("db").current().bulkhead is not None
    f.write_text(policy(5))
    events.wait("reload")
    assert limit_of(engine) == 5 and engine.status()["last_error"] is None


def test_touching_a_file_is_looked_at_but_reloads_nothing(
    tmp_path: Path, watch: Callable[..., Any]
) -> None:
    f = tmp_path / "policies.toml"
    f.write_text(policy(1))
    engine, events = watch(f)
    guards = engine.guards
    for _ in range(3):
        looks = engine._watcher.looks
        stamp = time.time() + 1 + looks
        os.utime(f, (stamp, stamp))
        wait_for_look(engine, looks)
    looks = engine._watcher.looks
    f.write_text(policy(1))  # rewritten with the same content
    wait_for_look(engine, looks)
    assert engine.guards is guards and events.items == [] and engine.status()["reloads"] == 0


def test_a_bad_edit_is_reported_and_the_next_good_edit_applies(
    tmp_path: Path, watch: Callable[..., Any]
) -> None:
    f = tmp_path / "policies.toml"
    f.write_text(policy(2))
    engine, events = watch(f, settle=0.01)
    atomic_write(f, policy(2).replace("max_concurrent = 2", 'max_concurrent = "many"'))
    failed = events.wait("reload_failed")
    issue = failed.data["issues"][0]
    assert (issue["path"], issue["line"]) == ("policies.db.bulkhead.max_concurrent", 2)
    assert limit_of(engine) == 2 and engine.status()["watching"]
    atomic_write(f, policy(4))
    events.wait("reload")
    assert limit_of(engine) == 4 and engine.status()["last_error"] is None


def _configmap(root: Path, stamp: str, text: str) -> None:
    data = root / stamp
    data.mkdir()
    (data / "policies.toml").write_text(text)


def test_a_configmap_symlink_swap_applies(tmp_path: Path, watch: Callable[..., Any]) -> None:
    """The kubelet's layout: `policies.toml -> ..data/policies.toml`, `..data -> ..<stamp>`;
    an update writes a new `..<stamp>` and swaps `..data` atomically. No event names the file."""
    root = tmp_path / "config"
    root.mkdir()
    _configmap(root, "..2026_01_01_00_00_00.000000001", policy(1))
    os.symlink("..2026_01_01_00_00_00.000000001", root / "..data")
    os.symlink("..data/policies.toml", root / "policies.toml")
    engine, events = watch(root / "policies.toml")
    assert limit_of(engine) == 1
    old = "..2026_01_01_00_00_00.000000001"
    for n in (2, 3, 4):
        stamp = f"..2026_01_01_00_00_0{n}.000000001"
        _configmap(root, stamp, policy(n))
        os.symlink(stamp, root / "..data_tmp")
        os.replace(root / "..data_tmp", root / "..data")
        shutil.rmtree(root / old)
        old = stamp
        events.wait("reload", n - 1)
        assert limit_of(engine) == n
    assert events.count("reload_failed") == 0


def test_a_file_symlinked_from_another_directory_follows_saves_there(
    tmp_path: Path, watch: Callable[..., Any]
) -> None:
    real_dir, link_dir = tmp_path / "config-repo", tmp_path / "app"
    real_dir.mkdir()
    link_dir.mkdir()
    real = real_dir / "policies.toml"
    real.write_text(policy(1))
    (link_dir / "policies.toml").symlink_to(real)
    engine, _ = watch(link_dir / "policies.toml", backstop=0)  # events only, no re-read timer
    real.write_text(policy(2))  # an in-place save where the file really lives
    wait_for_version(engine, policy(2))
    atomic_write(real, policy(3))  # and an editor's rename there
    wait_for_version(engine, policy(3))
    assert limit_of(engine) == 3


def test_a_directory_of_policies(tmp_path: Path, watch: Callable[..., Any]) -> None:
    d = tmp_path / "policies"
    d.mkdir()
    (d / "a.toml").write_text(policy(1, "a"))
    engine, events = watch(d)
    (d / "b.toml").write_text(policy(2, "b"))
    events.wait("reload")
    assert engine.names() == ["a", "b"] and engine.status()["policies"]["b"] == "new"
    atomic_write(d / "a.toml", policy(5, "a"))
    events.wait("reload", 2)
    assert limit_of(engine, "a") == 5
    (d / "b.toml").unlink()
    events.wait("policy_removed")
    events.wait("reload", 3)
    assert engine.status()["removed"] == ["b"]
    looks = engine._watcher.looks
    (d / "notes.txt").write_text("not a policy")
    (d / "a.toml").write_text(policy(6, "a"))
    events.wait("reload", 4)
    assert limit_of(engine, "a") == 6
    assert engine._watcher.looks == looks + 1  # notes.txt alone never caused a look


def test_the_backstop_catches_what_events_miss(
    tmp_path: Path, polling: bool, app_loop: asyncio.AbstractEventLoop | None
) -> None:
    """A policy file symlinked from another directory: its edits raise no event where we watch."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "real.toml").write_text(policy(1))
    here = tmp_path / "here"
    here.mkdir()
    os.symlink(elsewhere / "real.toml", here / "policies.toml")
    with load_on(app_loop, here / "policies.toml", force_polling=polling, backstop=0.05) as engine:
        (elsewhere / "real.toml").write_text(policy(7))
        wait_until(lambda: limit_of(engine) == 7, "the backstop re-read")


def test_a_deleted_and_recreated_directory_is_watched_again(
    tmp_path: Path, watch: Callable[..., Any]
) -> None:
    d = tmp_path / "config"
    d.mkdir()
    (d / "policies.toml").write_text(policy(1))
    engine, events = watch(d / "policies.toml")
    shutil.rmtree(d)
    events.wait("reload_failed")
    d.mkdir()
    (d / "policies.toml").write_text(policy(2))
    events.wait("reload")
    assert limit_of(engine) == 2
    (d / "policies.toml").write_text(policy(3))
    events.wait("reload", 2)
    assert limit_of(engine) == 3


# ------------------------------------------------------------------- options and lifecycle
def test_polling_follows_the_watchfiles_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "policies.toml"
    f.write_text(policy(1))
    engine = policyengine.loads(policy(1), default=False)
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "1")
    monkeypatch.setenv("WATCHFILES_POLL_DELAY_MS", "20")
    w = Watcher(engine, f)
    assert w.polling and w.poll_delay_ms == 20
    assert not Watcher(engine, f, force_polling=False).polling  # the option wins
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "false")
    assert not Watcher(engine, f).polling
    monkeypatch.delenv("WATCHFILES_POLL_DELAY_MS")
    assert Watcher(engine, f, force_polling=True, poll_interval=0.5).poll_delay_ms == 500
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "yes")
    with policyengine.load(f, watch=True, default=False) as watched:
        assert watched.status()["watch"]["polling"] is True


def test_close_stops_the_watch_promptly_and_status_still_answers(
    tmp_path: Path, watch: Callable[..., Any], on: str
) -> None:
    f = tmp_path / "policies.toml"
    f.write_text(policy(1))
    engine, events = watch(f)
    watcher = engine._watcher
    thread = getattr(watcher, "_thread", None)
    assert watcher.describe()["alive"]
    if on == "thread":
        assert thread is not None and thread.is_alive() and thread.daemon
    started = time.perf_counter()
    engine.close()
    assert time.perf_counter() - started < 1.0
    wait_until(lambda: not watcher.describe()["alive"], "the watch to end")
    if on == "loop":
        wait_until(lambda: watcher._inotify is None, "the descriptor closed on the loop")
    else:
        assert thread is not None and not thread.is_alive()
    status = engine.status()
    assert status["watching"] is False and status["version"]
    looks = watcher.looks
    f.write_text(policy(2))  # nothing watches any more
    assert engine.reload() is True  # an explicit reload still works
    assert watcher.looks == looks and events.count("reload") == 1
    with pytest.raises(RuntimeError):
        engine.watch()


def test_a_listener_may_close_the_engine_from_the_watch(
    tmp_path: Path, app_loop: asyncio.AbstractEventLoop | None
) -> None:
    """A listener runs where the watch runs (its thread, or the loop): closing from there ends
    the watch once the listener returns."""
    f = tmp_path / "policies.toml"
    f.write_text(policy(1))
    engine = load_on(app_loop, f)
    watcher = engine._watcher
    engine.add_listener(lambda e: engine.close() if e.name == "reload" else None)
    f.write_text(policy(2))
    wait_until(lambda: not watcher.describe()["alive"], "the watcher to end")
    assert engine.status()["watching"] is False and limit_of(engine) == 2


def test_bind_moves_a_thread_watch_onto_the_loop(tmp_path: Path) -> None:
    """An engine loaded at import time (no loop yet) watches from a thread; `bind(loop)` from
    the application's startup moves the watch onto the loop, and edits keep applying."""
    f = tmp_path / "policies.toml"
    f.write_text(policy(1))
    with LoopThread() as loop, policyengine.load(f, watch=True, default=False) as engine:
        thread_watcher = engine._watcher
        assert engine.status()["watch"]["on"] == "thread" and engine.loop is None
        engine.bind(loop)  # from another thread than the loop's
        assert engine.loop is loop and engine.status()["watch"]["on"] == "loop"
        assert not thread_watcher.describe()["alive"]
        atomic_write(f, policy(6))
        wait_for_version(engine, policy(6))
        run_on(loop, lambda: engine.bind())  # binding again to the same loop changes nothing
        assert engine.status()["watch"]["on"] == "loop"


def test_polling_follows_the_watchfiles_environment_on_the_loop_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "policies.toml"
    f.write_text(policy(1))
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "yes")
    monkeypatch.setenv("WATCHFILES_POLL_DELAY_MS", "20")
    with LoopThread() as loop, load_on(loop, f) as engine:
        watch = engine.status()["watch"]
        assert (watch["on"], watch["polling"], watch["poll_interval"]) == ("loop", True, 0.02)
        f.write_text(policy(3))
        wait_for_version(engine, policy(3))


async def test_watching_from_an_asyncio_application(tmp_path: Path) -> None:
    """`load()` inside the application's own loop binds to it: the watch, the read (off the
    loop) and the swap (on it) all happen while the loop keeps calling guards."""
    f = tmp_path / "policies.toml"
    f.write_text(policy(1))
    engine = policyengine.load(f, watch=True, default=False)
    assert engine.loop is asyncio.get_running_loop()
    assert engine.status()["watch"]["on"] == "loop"
    g = engine.guard("db")

    async def work() -> int:
        bulkhead = g.current().bulkhead
        assert bulkhead is not None
        return bulkhead.max_concurrent

    try:
        assert await g.call(work) == 1
        atomic_write(f, policy(9))
        async with asyncio.timeout(TIMEOUT):
            while await g.call(work) != 9:  # the loop never pauses: the reload comes to it
                await asyncio.sleep(0)
    finally:
        engine.close()


async def test_a_thread_watch_serves_an_engine_loaded_outside_the_loop(tmp_path: Path) -> None:
    f = tmp_path / "policies.toml"
    f.write_text(policy(1))
    engine = await asyncio.to_thread(policyengine.load, f, watch=True, default=False)
    try:
        assert engine.loop is None and engine.status()["watch"]["on"] == "thread"
        atomic_write(f, policy(4))
        async with asyncio.timeout(TIMEOUT):
            while limit_of(engine) != 4:
                await asyncio.sleep(0.002)
    finally:
        engine.close()

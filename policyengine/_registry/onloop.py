"""Reloads of an engine bound to an asyncio loop: read and compiled off the loop, swapped on it.

Why not a thread that reloads by itself: a thread needs the GIL to run, and a busy event loop
releases and re-takes it about every microsecond (each `epoll_wait`, each socket call). A thread
woken on the other CPU loses that race again and again, and CPython only forces a hand-over when
the holder kept the GIL a whole switch interval (5 ms) without releasing it, which a busy loop
never does. Each system call of the reload (stat, open, read, close...) is one more such race:
measured, a 0.3 ms reload took up to seconds to land under load.

So the loop itself drives each reload, in three steps, and no step blocks it for long:

1. the runner's worker thread (started at the first look, ended after `IDLE` seconds without
   one) is handed the look: read, validate and compile the set aside (`Engine._look`);
2. the loop *lends* it the GIL: a loop callback waits on the worker's done event for at most
   `SLICE` seconds, which releases the GIL with no other thread of ours racing for it, then
   gives the loop back its turn (`call_soon`) and lends again, until the worker is done. A small
   set is done within the first slice (one hand-off there, one back); a large one gets every
   other loop turn, and a loop step lasts about `SLICE` plus one switch interval (5 ms), the
   time CPython makes the loop thread wait before the worker must hand the GIL back, which is
   why that interval is lowered to `SWITCH` (1 ms) while a look is under way. The
   cyclic collector is paused during the read (`_registry.compile.paused_gc`): a full collection
   holds the GIL throughout (40-60 ms at 1,000 policies), which would stall the loop;
3. on the loop, the staged set is committed: in-place updates and the one swap (`_commit`).

A look that runs long is lent the GIL less and less often (see `_pause`), so a worker blocked in
a read that never returns does not keep taking slices of the loop's time.

`Engine.reload()` from another thread posts a request with `call_soon_threadsafe` and waits on a
`threading.Event`; the loop runs it like a watcher's look, so it lands in milliseconds however
busy the loop is. Requests that arrive while a look is under way are served by one more look
after it (the files may have changed after the first read began).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..exceptions import PolicyValidationError
from .fork import register
from .staging import Staged, read_failure

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["IDLE", "SLICE", "LoopRunner"]

logger = logging.getLogger("policyengine")

SLICE = 0.003  # seconds the loop lends the GIL to the worker at a time
SWITCH = 0.001  # the GIL switch interval while a look is under way (see `_Switching`)
IDLE = 10.0  # seconds the worker thread waits for the next look before it ends

Done = Callable[[bool], None]
Outcome = Staged | PolicyValidationError | None


def _pause(running: float) -> float:
    """Loop time between two slices for a look running `running` seconds: none at first (a set
    of 1,000 policies takes about 0.2 s), then less and less often, so that a worker stuck in
    a read (a network file system that stopped answering) costs the loop little: at most a
    slice every 10 ms after 1 s, every 100 ms after 10 s."""
    if running < 1.0:
        return 0.0
    return 0.01 if running < 10.0 else 0.1


class _Switching:
    """A shorter GIL switch interval while any look is under way (process-wide, counted; the
    application's own interval is back once the last look ends, unless it set another one
    meanwhile). Why: when a slice ends, the loop thread waits one switch interval before the
    worker must hand the GIL back, so the interval is most of a loop step (5 ms by default)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved = 0.0
        register(self)

    def _after_fork(self) -> None:
        """A look under way in the parent never ends here: give the interval back now."""
        self.lock = threading.Lock()
        if self.users:
            self.users = 0
            sys.setswitchinterval(self.saved)

    def enter(self) -> None:
        with self.lock:
            self.users += 1
            if self.users == 1:
                self.saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self.saved, SWITCH))

    def leave(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0 and sys.getswitchinterval() == min(self.saved, SWITCH):
                sys.setswitchinterval(self.saved)


_switching = _Switching()


class _Look:
    """One read-and-compile in a worker thread; `precheck` (None: none) is asked first, in the
    worker too, whether there is anything to read (a poller's `stat` of the files)."""

    __slots__ = ("done", "outcome", "precheck", "settle", "started")

    def __init__(self, settle: float, precheck: Callable[[], bool] | None = None) -> None:
        self.settle = settle
        self.precheck = precheck
        self.done = threading.Event()
        self.outcome: Outcome = None
        self.started = 0.0  # loop time when handed to the worker


class LoopRunner:
    """Runs `engine`'s reloads on `loop` (see the module docstring). Loop-thread methods are
    marked so; the rest may be called from any thread."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop
        self.looks = 0  # reads done by this runner
        self.max_step = 0.0  # the longest time one of our loop steps took (seconds)
        self.steps = 0  # loop steps taken (slices lent, commits)
        self._busy = False
        # requests for the next look: settle, callback, precheck
        self._queued: list[tuple[float, Done | None, Callable[[], bool] | None]] = []
        self._serving: list[Done] = []  # callbacks of the look under way
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self._wake = threading.Event()
        self._job: _Look | None = None

    # -------------------------------------------------------------- any thread
    def on_loop_thread(self) -> bool:
        return asyncio._get_running_loop() is self.loop

    def takes_calls_from_here(self) -> bool:
        """Should a `reload()` from this thread be handed to the loop? (It runs, and this is
        another thread: handing over is both possible and needed.)"""
        return self.loop.is_running() and not self.loop.is_closed() and not self.on_loop_thread()

    def reload_from_thread(self, settle: float) -> bool:
        """`Engine.reload()` from another thread: done on the loop; waits for it."""
        done = threading.Event()
        result = [False]

        def finished(applied: bool) -> None:
            result[0] = applied
            done.set()

        try:
            self.loop.call_soon_threadsafe(self.request, settle, finished)
        except RuntimeError:  # the loop closed meanwhile: reload here
            return self._reload_here(settle)
        while not done.wait(0.05):
            if not self.loop.is_running() or self.loop.is_closed():
                return self._reload_here(settle)  # the loop stopped before serving us
        return result[0]

    def _reload_here(self, settle: float) -> bool:
        engine = self.engine
        with engine._reload_lock:
            outcome = engine._look()
            return engine._conclude(outcome)

    # --------------------------------------------------------------- loop thread
    def request(
        self,
        settle: float = 0.0,
        done: Done | None = None,
        precheck: Callable[[], bool] | None = None,
    ) -> None:
        """(Loop thread.) Look at the files now, or right after the look under way. With
        `precheck`, the worker first asks it whether to look at all (so even a poller's `stat`
        of a network file system happens off the loop)."""
        self._queued.append((settle, done, precheck))
        if not self._busy:
            self._start()

    def _start(self) -> None:
        queued, self._queued = self._queued, []
        if not queued:
            return
        self._busy = True
        _switching.enter()
        self._serving = [done for _, done, _ in queued if done is not None]
        prechecks = [precheck for _, _, precheck in queued]
        precheck = None if None in prechecks else prechecks[0]
        self._begin(_Look(max(settle for settle, _, _ in queued), precheck))

    def _begin(self, look: _Look) -> None:
        """(Loop thread.) Hand `look` to the worker and start lending it the GIL."""
        self.looks += 1
        started = look.started = self.loop.time()
        with self._worker_lock:
            self._job = look
            self._wake.set()
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._serve, name="policyengine-reload", daemon=True
                )
                self._worker.start()
        self._lend(look, started)

    def _serve(self) -> None:
        """(Worker thread.) Do each look handed over; end after `IDLE` seconds without one."""
        while True:
            if not self._wake.wait(IDLE):
                with self._worker_lock:
                    if not self._wake.is_set():
                        self._worker = None
                        return
                continue
            self._wake.clear()
            job, self._job = self._job, None
            if job is not None:
                self._work(job)

    def _work(self, look: _Look) -> None:
        """(Worker thread.) Never raises: `_look` reports every failure as an outcome."""
        try:
            if look.precheck is None or look.precheck():
                look.outcome = self.engine._look()
        except BaseException as exc:  # a worker hands back whatever happened
            look.outcome = read_failure(self.engine.path, exc)
        finally:
            look.done.set()

    def _lend(self, look: _Look, started: float | None = None) -> None:
        """(Loop thread.) Let the worker run for up to one slice; then finish or come back."""
        began = self.loop.time() if started is None else started
        finished = look.done.wait(SLICE)
        self._note_step(began)
        if finished:
            self._finish(look)
            return
        pause = _pause(self.loop.time() - look.started)
        if pause:
            self.loop.call_later(pause, self._lend, look)
        else:
            self.loop.call_soon(self._lend, look)

    def _finish(self, look: _Look) -> None:
        """(Loop thread.) Settle a torn read, or commit / report; then serve what queued."""
        began = self.loop.time()
        engine = self.engine
        applied = False
        try:
            outcome = look.outcome
            if look.settle > 0 and engine._looks_torn(outcome):
                engine._discard(outcome)
                self.loop.call_later(look.settle, self._settled)
                return
            applied = engine._conclude(outcome)
        except Exception:
            logger.exception("policyengine: a reload of %s failed unexpectedly", engine.path)
        self._note_step(began)
        self._served(applied)

    def _settled(self) -> None:
        """(Loop thread.) The second look after a torn read: judged as it is."""
        self._begin(_Look(0.0))

    def _served(self, applied: bool) -> None:
        serving, self._serving = self._serving, []
        self._busy = False
        _switching.leave()
        for done in serving:
            try:
                done(applied)
            except Exception:
                logger.exception("policyengine: a reload callback failed")
        if self._queued:
            self._start()

    def _note_step(self, began: float) -> None:
        self.steps += 1
        self.max_step = max(self.max_step, self.loop.time() - began)

"""A minimal inotify binding (Linux) over `ctypes`, for the loop watcher.

Why our own and not watchfiles' notifier: that one runs its own thread and hands events over
through a blocking call, which is exactly what the loop watcher avoids. An inotify descriptor is
a plain non-blocking file descriptor that becomes readable when events wait, so the event loop
can watch it with `add_reader` and read it in one system call when it is ready.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Iterator

__all__ = ["IN_DIR_GONE", "IN_Q_OVERFLOW", "WATCH_MASK", "Inotify", "available"]

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DIR_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED  # the watched directory went away

WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.inotify_init1  # noqa: B018 - probe: not every libc has inotify
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def available() -> bool:
    return _LIBC is not None


def _raise(path: str = "") -> None:
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code), path) if path else OSError(code, os.strerror(code))


class Inotify:
    """One inotify instance: `add(directory)` watches, `events()` drains what waits."""

    def __init__(self) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "inotify is not available here")
        fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            _raise()
        self.fd: int = fd

    def add(self, directory: str) -> int:
        """Watch `directory` (not recursively); its watch descriptor. FileNotFoundError if it
        does not exist; another OSError (for example the watch limit) if it cannot be watched."""
        assert _LIBC is not None
        wd = int(_LIBC.inotify_add_watch(self.fd, os.fsencode(directory), WATCH_MASK))
        if wd < 0:
            code = ctypes.get_errno()
            if code == errno.ENOENT or code == errno.ENOTDIR:
                raise FileNotFoundError(code, os.strerror(code), directory)
            _raise(directory)
        return wd

    def events(self) -> Iterator[tuple[int, int, str]]:
        """(wd, mask, name) of every event waiting now; nothing if none waits."""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, _, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                name = data[offset : offset + length].rstrip(b"\0")
                offset += length
                yield wd, mask, os.fsdecode(name)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

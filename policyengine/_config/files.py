"""What the loader agrees to read: regular files of bounded size, documents of bounded depth.

A policy file is read by a service at start-up and again on every edit, so nothing in it may hang
or exhaust the process. The bounds (documented in the README, "Validation"):

- Only regular files (or symlinks to one). A named pipe, a device (`/dev/zero`), a socket or a
  directory named ``*.toml`` is refused without reading a byte: the file is opened non-blocking
  (so opening a FIFO with no writer does not hang) and checked with `fstat` on the open
  descriptor (so a file swapped after a `stat` cannot slip through).
- At most `MAX_FILE_BYTES` (4 MiB: some 7,000 policies written out in full; the example is
  5 KiB). A longer file is refused after reading one byte past the limit, whatever its size
  claims.
- Tables and arrays nested at most `MAX_DEPTH` (32) levels deep; the format itself needs 7
  (``policies.p.retry.never_retry[0].status[0]``), the rest is room for `fallback.value`.
  Deeper documents are refused before anything recursive (the line scanner, the merge,
  validation) walks them; one too deep for `tomllib` itself (a `RecursionError`) likewise.
- A directory load reads every ``*.toml`` in it except hidden ones (a leading dot: editors' lock
  and swap files such as Emacs's ``.#payments.toml``). A symlink whose target is missing is an
  error at its file, not skipped: a policy file that silently vanished would drop its guards.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..exceptions import PolicyIssue, PolicyValidationError
from .lines import KeyPath, dotted

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "Unreadable",
    "directory_entries",
    "files_of",
    "read_all",
    "read_policy_bytes",
    "read_text",
    "too_deep",
]

MAX_FILE_BYTES = 4 << 20
MAX_DEPTH = 32

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class Unreadable(Exception):
    """The file is not one the loader reads; the message says why and what to do."""


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _via(path: Path) -> str:
    if not path.is_symlink():
        return ""
    try:
        return f" (the symlink points to {os.readlink(path)})"
    except OSError:
        return ""


def dangling(path: Path) -> str | None:
    """The message for a symlink whose target does not exist, else None."""
    if path.is_symlink() and not path.exists():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"a dangling symlink: its target {target!r} does not exist; fix or remove the link"
    return None


def read_policy_bytes(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES; `Unreadable` or OSError else."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable(
                f"not a regular file: it is {_kind(info.st_mode)}{_via(path)}; "
                "a policy file must be a regular file (or a symlink to one)"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, min(1 << 16, MAX_FILE_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise Unreadable(too_large())
    return b"".join(chunks)


def too_large() -> str:
    return (
        f"the file is larger than {MAX_FILE_BYTES // (1 << 20)} MiB, the most a policy file "
        "may hold: is it really a policy file? (split it into a directory of files)"
    )


def directory_entries(directory: Path) -> Iterator[Path]:
    """The ``*.toml`` paths a directory load reads, sorted, hidden files left out."""
    for path in sorted(directory.glob("*.toml")):
        if not path.name.startswith("."):
            yield path


def too_deep(data: dict[str, Any]) -> KeyPath | None:
    """The path to the first value nested deeper than MAX_DEPTH, else None (iterative; the
    common, shallow case counts depths of containers only and builds no paths)."""
    level: list[Any] = [data]
    for _ in range(MAX_DEPTH):
        below: list[Any] = []
        for container in level:
            values = container.values() if isinstance(container, dict) else container
            below.extend(v for v in values if isinstance(v, dict | list))
        if not below:
            return None
        level = below
    if any(level):  # a non-empty container at MAX_DEPTH holds a value one deeper
        return _path_deeper_than(data, MAX_DEPTH)
    return None


def _path_deeper_than(data: dict[str, Any], limit: int) -> KeyPath:
    stack: list[tuple[KeyPath, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if len(path) > limit:
            return path
        if isinstance(value, dict):
            stack.extend(((*path, k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend(((*path, i), v) for i, v in enumerate(value))
    return ()


def depth_message(path: KeyPath | None) -> str:
    shown = dotted(path[:4]) + ".…" if path else "a value"
    return (
        f"tables or arrays nested more than {MAX_DEPTH} levels deep (under {shown}); "
        "a policy file needs at most 7: flatten the value"
    )


def read_text(path: Path) -> str:
    """The file's text (bounded: see `_config.files`); a UTF-8 byte order mark is dropped (some
    Windows editors write one)."""
    return read_policy_bytes(path).removeprefix(b"\xef\xbb\xbf").decode("utf-8")


def files_of(p: Path) -> list[Path]:
    """The files a load of `p` reads (PolicyValidationError when there are none)."""
    if p.is_dir():
        files = list(directory_entries(p))
        if not files:
            message = "no *.toml files in this directory (hidden files are not read)"
            raise PolicyValidationError([PolicyIssue(str(p), None, "", message)])
        return files
    if p.exists():
        return [p]
    message = dangling(p) or "no such file or directory"
    raise PolicyValidationError([PolicyIssue(str(p), None, "", message)])


def read_all(files: list[Path], issues: list[PolicyIssue]) -> list[tuple[str, str]]:
    texts: list[tuple[str, str]] = []
    for f in files:
        try:
            texts.append((str(f), read_text(f)))
        except Unreadable as exc:
            issues.append(PolicyIssue(str(f), None, "", str(exc)))
        except OSError as exc:
            message = dangling(f) or f"cannot read the file: {exc}"
            issues.append(PolicyIssue(str(f), None, "", message))
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            issues.append(
                PolicyIssue(
                    str(f),
                    line,
                    "",
                    f"the file is not UTF-8 text (byte {exc.object[exc.start]:#04x} on this "
                    "line): TOML files are UTF-8; save it as UTF-8",
                )
            )
    return texts

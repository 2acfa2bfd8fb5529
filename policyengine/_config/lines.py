"""Where each key of a TOML document was written: key path -> 1-based line.

`tomllib` gives values without positions, so this is a small scanner of TOML text. It reads
a document `tomllib` has already accepted, so it can assume valid syntax. It knows table headers
(``[a.b]``, ``[a."quoted key"]``, ``[[array.of.tables]]``), dotted keys, inline tables, arrays
(multi-line, nested, of inline tables: item ``i`` is mapped to the line where it starts),
every string form (multi-line ones included) and comments.

Paths are tuples of keys and array indexes: ``("policies", "payments", "retry", "never_retry", 1)``.
The most common lines (``key = scalar``, ``[header]``, blank, comment) take a fast path; anything
else goes through the tokenizer.
"""

from __future__ import annotations

import functools
import json
import re
import tomllib

__all__ = ["KeyPath", "dotted", "line_of", "scan_lines"]

KeyPath = tuple[str | int, ...]

_BARE = r"[A-Za-z0-9_-]+"
_KEYS = rf"{_BARE}(?:[ \t]*\.[ \t]*{_BARE})*"
_SCALAR = r"\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'|[A-Za-z0-9_+\-:.]+"
_END = r"[ \t]*(?:#[^\n]*)?(?:\r?\n|\Z)"
_FAST_KEY = re.compile(rf"[ \t]*({_KEYS})[ \t]*=[ \t]*(?:{_SCALAR}){_END}")
_FAST_HEADER = re.compile(rf"[ \t]*\[[ \t]*({_KEYS})[ \t]*\]{_END}")
_FAST_BLANK = re.compile(r"[ \t]*(?:#[^\n]*)?\r?\n")
_DOT_SPLIT = re.compile(r"[ \t]*\.[ \t]*")

_TOKEN = re.compile(
    r"""
      (?P<ws>[ \t]+|\#[^\n]*)
    | (?P<nl>\r?\n)
    | (?P<mls>\"\"\"(?:[^"\\]|\\[\s\S]|"(?!""))*\"{3,5}|'''(?:[^']|'(?!''))*'{3,5})
    | (?P<str>"(?:[^"\\\n]|\\.)*"|'[^'\n]*')
    | (?P<punct>[\[\]{}=,.])
    | (?P<bare>[^\s\[\]{}=,.\#"']+)
    """,
    re.VERBOSE,
)

_Token = tuple[str, str, int]  # kind, text, line


def _key(token: _Token) -> str:
    kind, text, _ = token
    if kind != "str":
        return text
    if text.startswith("'") or "\\" not in text:
        return text[1:-1]
    key: str = next(iter(tomllib.loads(f"{text} = 0")))
    return key


class _Scanner:
    """Recursive descent over the tokens of one statement (a header or a key = value)."""

    def __init__(self, text: str, start: int, line: int, out: dict[KeyPath, int]) -> None:
        self.tokens: list[_Token] = []
        self.i = 0
        self.out = out
        self.end = self._tokenize(text, start, line)

    def _tokenize(self, text: str, pos: int, line: int) -> int:
        """Tokens up to the end of the statement's last line (depth 0 at a newline)."""
        depth = 0
        append = self.tokens.append
        match = _TOKEN.match
        while pos < len(text):
            m = match(text, pos)
            if m is None:  # not valid TOML; tomllib would have said so
                break
            kind = m.lastgroup or ""
            value = m.group()
            pos = m.end()
            if kind == "nl":
                line += 1
                if depth == 0:
                    break
                continue
            if kind == "ws":
                continue
            append((kind, value, line))
            if kind == "mls":
                line += value.count("\n")
            elif kind == "punct" and value in "[{":
                depth += 1
            elif kind == "punct" and value in "]}":
                depth -= 1
        self.next_line = line
        return pos

    def _take(self) -> _Token:
        token = self.tokens[self.i] if self.i < len(self.tokens) else ("eof", "", 0)
        self.i += 1
        return token

    def _peek(self) -> str:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else ""

    def _keys(self) -> list[str]:
        keys = [_key(self._take())]
        while self._peek() == ".":
            self.i += 1
            keys.append(_key(self._take()))
        return keys

    def _define(self, base: KeyPath, keys: list[str], line: int, *, first: bool = False) -> KeyPath:
        """Record `keys` under `base`; implicit parents (all, if `first`) keep their first line."""
        path = base
        for key in keys:
            path = (*path, key)
            self.out.setdefault(path, line)
        if not first:
            self.out[path] = line
        return path

    def statement(self, table: KeyPath, arrays: dict[KeyPath, int]) -> KeyPath:
        """Scan one statement; returns the table in force after it."""
        first = self._take()
        if first[1] != "[" or first[0] != "punct":  # key = value
            self.i -= 1
            path = self._define(table, self._keys(), first[2])
            self.i += 1  # "="
            self._value(path)
            return table
        if self._peek() == "[" and self.tokens[self.i][0] == "punct":  # [[array of tables]]
            self.i += 1
            path = self._define((), self._keys(), first[2], first=True)
            index = arrays.get(path, -1) + 1
            arrays[path] = index
            self.out[(*path, index)] = first[2]
            return (*path, index)
        return self._define((), self._keys(), first[2])

    def _value(self, path: KeyPath) -> None:
        kind, text, _ = self._take()
        if kind == "punct" and text == "{":
            while self._peek() not in ("}", ""):
                line = self.tokens[self.i][2]
                inner = self._define(path, self._keys(), line)
                self.i += 1  # "="
                self._value(inner)
                if self._peek() == ",":
                    self.i += 1
            self.i += 1
        elif kind == "punct" and text == "[":
            index = 0
            while self._peek() not in ("]", ""):
                self.out[(*path, index)] = self.tokens[self.i][2]
                self._value((*path, index))
                if self._peek() == ",":
                    self.i += 1
                index += 1
            self.i += 1
        else:  # a scalar may span tokens: 3.14, 1979-05-27 07:32:00
            while self._peek() not in (",", "]", "}", ""):
                self.i += 1


def scan_lines(text: str) -> dict[KeyPath, int]:
    """Map every key path (tables, keys, array items) of a valid TOML text to its line."""
    out: dict[KeyPath, int] = {}
    arrays: dict[KeyPath, int] = {}
    table: KeyPath = ()
    pos, line, size = 0, 1, len(text)
    while pos < size:
        m = _FAST_BLANK.match(text, pos)
        if m is not None:
            pos, line = m.end(), line + 1
            continue
        m = _FAST_KEY.match(text, pos)
        if m is not None:
            keys = _DOT_SPLIT.split(m.group(1))
            path = table
            for key in keys[:-1]:
                path = (*path, key)
                out.setdefault(path, line)
            out[(*path, keys[-1])] = line
            pos, line = m.end(), line + 1
            continue
        m = _FAST_HEADER.match(text, pos)
        if m is not None:
            table = ()
            for key in _DOT_SPLIT.split(m.group(1)):
                table = (*table, key)
                out.setdefault(table, line)
            out[table] = line
            pos, line = m.end(), line + 1
            continue
        scanner = _Scanner(text, pos, line, out)
        if scanner.end == pos:  # not TOML; tomllib rejects such text before we get here
            break
        if not scanner.tokens:
            pos, line = scanner.end, scanner.next_line
            continue
        table = scanner.statement(table, arrays)
        pos, line = scanner.end, scanner.next_line
    return out


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of `path`, else of its nearest ancestor that was written, else None."""
    for end in range(len(path), 0, -1):
        found = lines.get(path[:end])
        if found is not None:
            return found
    return None


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@functools.lru_cache(maxsize=4096)  # a pure function of its argument: safe across reloads
def dotted(path: KeyPath) -> str:
    """A key path as TOML writes it: ``policies."pay.v2".retry.never_retry.1``."""
    return ".".join(
        str(seg)
        if isinstance(seg, int) or _BARE_KEY.fullmatch(seg)
        else json.dumps(seg, ensure_ascii=False)
        for seg in path
    )

"""`extends`: who inherits from whom, and the merge of a chain with where each value came from.

A policy extends a template or another policy; without `extends` it inherits `templates.default`
when that exists. A template extends only templates (and never `default` implicitly). Fields
merge one by one: tables recursively, lists and scalars replace. `fallback.value` is one value
(never merged), and setting `value` or `handler` replaces the other, which was inherited.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ._diagnostics import suggest
from ._lines import KeyPath, dotted, line_of, scan_lines
from .exceptions import PolicyIssue

__all__ = ["Doc", "Node", "leaves", "merge_chain", "resolve_chains"]

_OPAQUE: frozenset[KeyPath] = frozenset({("fallback", "value")})
_EXCLUSIVE: dict[KeyPath, tuple[str, str]] = {("fallback",): ("value", "handler")}


@dataclass(eq=False)
class Doc:
    """One parsed file; its line map is scanned the first time a line is asked for."""

    source: str
    text: str
    data: dict[str, Any]
    _lines: dict[KeyPath, int] | None = field(default=None, repr=False)

    def line(self, path: KeyPath) -> int | None:
        if self._lines is None:
            self._lines = scan_lines(self.text)
        return line_of(self._lines, path)

    def issue(self, path: KeyPath, message: str) -> PolicyIssue:
        """An error on `path` (a full key path) of this file."""
        return PolicyIssue(self.source, self.line(path), dotted(path), message)


@dataclass(eq=False)
class Node:
    """A template or a policy as written in one file."""

    section: str  # "templates" or "policies"
    name: str
    doc: Doc
    raw: dict[str, Any]

    def __post_init__(self) -> None:
        self.prefix: KeyPath = (self.section, self.name)
        self.label = dotted(self.prefix)

    def issue(self, rel: KeyPath, message: str) -> PolicyIssue:
        """An error on `rel`, a key path within this template or policy."""
        return self.doc.issue((*self.prefix, *rel), message)


class _Missing(ValueError):
    """`extends` names nothing (it may be in a file that failed to parse)."""


def _parent(node: Node, templates: dict[str, Node], policies: dict[str, Node]) -> Node | None:
    """The node `node` inherits from, or None; ValueError when its `extends` is wrong."""
    target = node.raw.get("extends")
    if target is None:
        return templates.get("default") if node.section == "policies" else None
    if not isinstance(target, str):
        raise ValueError("`extends` is the name of a template or policy (a string)")
    if node.section == "templates":
        if target in templates:
            return templates[target]
        if target in policies:
            raise ValueError(f"a template extends templates only; {target!r} is a policy")
        names = list(templates)
        what = "template"
    else:
        if target in templates or target in policies:
            return templates.get(target) or policies[target]
        names = [*templates, *policies]
        what = "template or policy"
    close = suggest(target, names)
    hint = f" (did you mean {close!r}?)" if close else ""
    raise _Missing(f"extends {target!r}, but there is no {what} of that name{hint}")


def resolve_chains(
    templates: dict[str, Node],
    policies: dict[str, Node],
    *,
    report_missing: bool = True,
    broken: dict[Node, list[Node]] | None = None,
) -> tuple[dict[Node, list[Node]], list[PolicyIssue]]:
    """Each node's chain (itself first, then what it inherits from), for the nodes whose
    `extends` resolve; an issue for every wrong `extends` and one for every cycle. The partial
    chains of the others go to `broken`, so their own values can still be checked."""
    chains: dict[Node, list[Node]] = {}
    issues: list[PolicyIssue] = []
    cycles: set[frozenset[int]] = set()
    for node in [*templates.values(), *policies.values()]:
        chain = [node]
        while True:
            try:
                parent = _parent(chain[-1], templates, policies)
            except ValueError as exc:  # reported once, by the node that says it
                if chain[-1] is node and (report_missing or not isinstance(exc, _Missing)):
                    issues.append(node.issue(("extends",), str(exc)))
                if broken is not None:
                    broken[node] = chain
                break
            if parent is None:
                chains[node] = chain
                break
            if parent in chain:
                loop = chain[chain.index(parent) :]
                key = frozenset(id(n) for n in loop)
                if node in loop and key not in cycles:
                    cycles.add(key)
                    names = " -> ".join(n.label for n in [*loop, parent])
                    issues.append(node.issue(("extends",), f"extends forms a cycle: {names}"))
                if broken is not None:
                    broken[node] = [node]
                break
            chain.append(parent)
    return chains, issues


def _merge(
    base: dict[str, Any],
    over: dict[str, Any],
    path: KeyPath,
    node: Node,
    owners: dict[KeyPath, Node],
) -> None:
    pair = _EXCLUSIVE.get(path)
    if pair is not None:
        for mine, other in (pair, pair[::-1]):
            if mine in over:
                base.pop(other, None)
    for key, value in over.items():
        sub = (*path, key)
        owners[sub] = node
        if isinstance(value, dict) and sub not in _OPAQUE:
            existing = base.get(key)
            target = dict(existing) if isinstance(existing, dict) else {}
            base[key] = target
            _merge(target, value, sub, node, owners)
        else:
            base[key] = value


def merge_chain(chain: list[Node]) -> tuple[dict[str, Any], dict[KeyPath, Node]]:
    """The effective table of `chain[0]` (without `extends`) and the node that wrote each path."""
    data: dict[str, Any] = {}
    owners: dict[KeyPath, Node] = {}
    for node in reversed(chain):
        _merge(data, {k: v for k, v in node.raw.items() if k != "extends"}, (), node, owners)
    return data, owners


def leaves(data: dict[str, Any], prefix: KeyPath = ()) -> Iterator[KeyPath]:
    """The paths of every value that is not a table (lists and `fallback.value` are values)."""
    for key, value in data.items():
        path = (*prefix, key)
        if isinstance(value, dict) and path not in _OPAQUE:
            yield from leaves(value, path)
        else:
            yield path

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

from ..exceptions import PolicyIssue
from .diagnostics import suggest
from .lines import KeyPath, dotted, line_of, scan_lines

__all__ = ["Chain", "Doc", "Node", "leaves", "merge_chain", "resolve_chains"]

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


class Chain:
    """A node and the chain it inherits (``parent``): chains share their tails, so resolving
    and merging every node of a long `extends` chain costs time linear in its length."""

    __slots__ = ("_merged", "length", "node", "parent")

    def __init__(self, node: Node, parent: Chain | None) -> None:
        self.node = node
        self.parent = parent
        self.length: int = 1 if parent is None else parent.length + 1
        self._merged: tuple[dict[str, Any], dict[KeyPath, Node]] | None = None

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Node]:
        link: Chain | None = self
        while link is not None:
            yield link.node
            link = link.parent


def _cycle_issue(loop: list[Node], order: dict[Node, int]) -> PolicyIssue:
    """One issue for a cycle, said by its member that comes first in the files."""
    first = min(range(len(loop)), key=lambda i: order[loop[i]])
    loop = loop[first:] + loop[:first]
    labels = [n.label for n in [*loop, loop[0]]]
    if len(labels) > 9:
        labels = [*labels[:5], f"... ({len(loop) - 6} more)", *labels[-2:]]
    return loop[0].issue(("extends",), f"extends forms a cycle: {' -> '.join(labels)}")


def resolve_chains(
    templates: dict[str, Node],
    policies: dict[str, Node],
    *,
    report_missing: bool = True,
    broken: dict[Node, Chain] | None = None,
) -> tuple[dict[Node, Chain], list[PolicyIssue]]:
    """Each node's chain (itself first, then what it inherits from), for the nodes whose
    `extends` resolve; an issue for every wrong `extends` and one for every cycle. The partial
    chains of the others go to `broken`, so their own values can still be checked: up to the
    node whose `extends` is wrong, or only the node itself when its chain runs into a cycle.

    Each node is walked once (a walk stops at a node already settled), so this is linear in the
    number of nodes, however long the chains or cycles."""
    order = {node: i for i, node in enumerate([*templates.values(), *policies.values()])}
    chains: dict[Node, Chain] = {}
    failed: dict[Node, tuple[Chain, bool]] = {}  # node -> (partial chain, ran into a cycle)
    issues: list[PolicyIssue] = []
    for start in order:
        path: list[Node] = []
        on_path: dict[Node, int] = {}
        node: Node | None = start
        tail: Chain | None = None
        cycle = error = False
        while node is not None:
            if node in chains:
                tail = chains[node]
                break
            if node in failed:
                tail, cycle = failed[node]
                error = True
                break
            if node in on_path:
                loop = path[on_path[node] :]
                issues.append(_cycle_issue(loop, order))
                cycle = error = True
                break
            on_path[node] = len(path)
            path.append(node)
            try:
                node = _parent(node, templates, policies)
            except ValueError as exc:  # reported once, by the node that says it
                if report_missing or not isinstance(exc, _Missing):
                    issues.append(path[-1].issue(("extends",), str(exc)))
                error = True
                break
        for member in reversed(path):
            tail = Chain(member, None if cycle else tail)
            if error:
                failed[member] = (tail, cycle)
            else:
                chains[member] = tail
    if broken is not None:
        broken.update((node, chain) for node, (chain, _) in failed.items())
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


def merge_chain(chain: Chain) -> tuple[dict[str, Any], dict[KeyPath, Node]]:
    """The effective table of `chain`'s node (without `extends`) and the node that wrote each
    path. Each link's result is kept (do not mutate it), so the chains that share a tail merge
    it once."""
    pending: list[Chain] = []
    link: Chain | None = chain
    while link is not None and link._merged is None:
        pending.append(link)
        link = link.parent
    data, owners = link._merged if link is not None and link._merged is not None else ({}, {})
    for link in reversed(pending):
        data, owners = dict(data), dict(owners)
        raw = {k: v for k, v in link.node.raw.items() if k != "extends"}
        _merge(data, raw, (), link.node, owners)
        link._merged = (data, owners)
    return data, owners


def leaves(data: dict[str, Any], prefix: KeyPath = ()) -> Iterator[KeyPath]:
    """The paths of every value that is not a table (lists and `fallback.value` are values)."""
    for key, value in data.items():
        path = (*prefix, key)
        if isinstance(value, dict) and path not in _OPAQUE:
            yield from leaves(value, path)
        else:
            yield path

"""Where each effective value of a policy was written, for `policyengine explain`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .inherit import Node, leaves
from .lines import KeyPath, dotted

__all__ = ["Origins"]


def _where(node: Node, rel: KeyPath) -> str:
    return f"{node.doc.source}:{node.doc.line((*node.prefix, *rel))} ({node.label})"


class Origins(Mapping[str, Mapping[str, str]]):
    """Policy name -> dotted key -> ``"file:line (templates.x)"``, worked out when first read
    (only `explain` reads it; a reload need not scan every file for lines)."""

    def __init__(self) -> None:
        self.sources: dict[str, tuple[dict[str, Any], dict[KeyPath, Node]]] = {}
        self._done: dict[str, Mapping[str, str]] = {}

    def __getitem__(self, name: str) -> Mapping[str, str]:
        found = self._done.get(name)
        if found is None:
            data, owners = self.sources[name]
            found = self._done[name] = {dotted(p): _where(owners[p], p) for p in leaves(data)}
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __repr__(self) -> str:
        return f"<origins of {', '.join(self.sources) or 'no policies'}>"

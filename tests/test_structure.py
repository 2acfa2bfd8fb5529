"""The package's shape, held by tests: no import circles, no module a reader cannot take in,
a public surface that changes only on purpose.

Why test it: each rule was broken before anyone noticed (four modules of the guarded call
imported each other in a circle; `Guard._run` grew to complexity 38), and each breach makes the
next feature harder to add in one place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import policyengine

PACKAGE = Path(policyengine.__file__).parent
MAX_LINES = 400

PUBLIC = [
    "BulkheadFullError",
    "CircuitOpenError",
    "Clock",
    "Engine",
    "Event",
    "Guard",
    "GuardHandle",
    "GuardSnapshot",
    "GuardTimeoutError",
    "KeyedHandle",
    "MonotonicClock",
    "PolicyEngineError",
    "PolicyIssue",
    "PolicySet",
    "PolicyValidationError",
    "RateLimitedError",
    "RejectedError",
    "ThrottledError",
    "UnknownGuardError",
    "default_engine",
    "guard",
    "load",
    "loads",
    "log_listener",
    "set_default_engine",
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that `name` imports when it is imported (not under
    TYPE_CHECKING, not inside a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in known else base)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m in known and m != name}


def test_no_import_circles_inside_the_package() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _import_time_imports(name, path, known) for name, path in modules.items()}
    # a package's __init__ imports its submodules by design; a submodule importing its own
    # package's __init__ back is the circle that counts
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + ".") and nxt in graph:
                continue  # a submodule's own parent package: imported before it anyway
            if state.get(nxt) == 1:
                circles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)
    assert circles == [], "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_public_api_is_pinned() -> None:
    assert policyengine.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(policyengine, name) is not None

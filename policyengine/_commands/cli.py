"""The `policyengine` command: validate, schema, explain, init, demo, and the commands of
`COMMAND_MODULES`.

Exit codes: 0 success, 1 invalid input (a policy file, an out-of-date schema, an unknown guard),
2 usage errors. Bad input never prints a traceback.

Adding a command: write a module with ``add_parser(sub) -> None`` that calls
``sub.add_parser(NAME, help=...)``, adds its arguments (`add_import_option` for ``-I DIR``) and
``set_defaults(run=fn)`` with ``fn(args) -> int`` (the exit code); then add the module's name to
`COMMAND_MODULES`. Nothing else here changes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .._config.diagnostics import suggest
from .._config.loader import PolicySet, load_path
from ..exceptions import PolicyIssue, PolicyValidationError
from .explain import explain_text, explain_toml
from .schema import SCHEMA_PATH, check_schema, render_schema
from .starter import has_httpx, starter

__all__ = ["COMMAND_MODULES", "add_import_option", "import_paths", "main"]

COMMAND_MODULES: tuple[str, ...] = (
    # one line per command module, e.g. "policyengine._rollout.simulate",
    "policyengine._commands.top",
    "policyengine._commands.cli_rollout",  # simulate, suggest
    "policyengine._commands.cli_fleet",  # force, fleet
)
"""Modules adding a subcommand through their ``add_parser(sub)`` (see the module docstring)."""


@contextlib.contextmanager
def import_paths(dirs: list[str]) -> Iterator[None]:
    """Let policy files name the user's own exception modules: the current directory and each
    ``-I DIR`` go on ``sys.path`` for the duration of the command."""
    saved = list(sys.path)
    sys.path[:0] = [str(Path(d).resolve()) for d in [*dirs, os.getcwd()]]
    try:
        yield
    finally:
        sys.path[:] = saved


def _github(issue: PolicyIssue) -> str:
    def esc(text: str, prop: bool = False) -> str:
        text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return text.replace(":", "%3A").replace(",", "%2C") if prop else text

    props = [f"file={esc(issue.file, True)}"]
    if issue.line is not None:
        props.append(f"line={issue.line}")
    if issue.path:
        props.append(f"title={esc(issue.path, True)}")
    return f"::{issue.severity} {','.join(props)}::{esc(issue.message)}"


def _load(path: str, strict: bool) -> tuple[PolicySet | None, list[PolicyIssue]]:
    try:
        ps = load_path(path, strict=strict, validating=True)
    except PolicyValidationError as exc:
        return None, exc.errors
    return ps, list(ps.warnings)


def _required(names: list[str]) -> list[str]:
    return [n.strip() for arg in names for n in arg.split(",") if n.strip()]


def _missing(path: str, ps: PolicySet, required: list[str]) -> list[PolicyIssue]:
    """An error naming the `--require`d guards that `ps` does not define."""
    missing = [n for n in required if n not in ps.policies]
    if not missing:
        return []
    hints = []
    for name in missing:
        close = suggest(name, ps.policies)
        if close is not None:
            hints.append(f"{name!r}: did you mean {close!r}?")
    defined = ", ".join(list(ps.policies)[:20]) or "none"
    message = (
        f"required guard{'s' * (len(missing) > 1)} not defined: {', '.join(missing)} "
        f"(--require; defined: {defined}{'...' * (len(ps.policies) > 20)})"
        + (f"; {'; '.join(hints)}" if hints else "")
    )
    return [PolicyIssue(path, None, "policies", message)]


def _summary(path: str, ps: PolicySet, found: list[PolicyIssue]) -> str:
    n, files = len(ps.policies), len(ps.sources)
    warned = f", {len(found)} warning{'s' * (len(found) != 1)}" if found else ""
    return (
        f"{path}: valid ({n} polic{'y' if n == 1 else 'ies'}, "
        f"{files} file{'' if files == 1 else 's'}{warned})"
    )


def _validate(args: argparse.Namespace) -> int:
    issues: list[PolicyIssue] = []
    summaries: list[str] = []
    required = _required(args.require)
    with import_paths(args.import_path):
        for path in args.paths:
            ps, found = _load(path, args.strict)
            if ps is not None:
                found += _missing(path, ps, required)
                if not any(i.severity == "error" for i in found):
                    summaries.append(_summary(path, ps, found))
            issues += found
    failed = any(i.severity == "error" for i in issues)
    if args.format == "json":
        print(json.dumps([i.as_dict() for i in issues], indent=2))
    elif args.format == "github":
        print("\n".join(_github(i) for i in issues))
    else:
        for line in [*map(str, issues), *summaries]:
            print(line)
        errors = sum(i.severity == "error" for i in issues)
        if failed:
            print(f"invalid: {errors} error{'s' * (errors != 1)}")
    return 1 if failed else 0


def _explain(args: argparse.Namespace) -> int:
    with import_paths(args.import_path):
        ps, issues = _load(args.path, strict=False)
    for issue in issues:
        print(issue, file=sys.stderr)
    if ps is None:
        return 1
    if args.guard not in ps.policies:
        known = ", ".join(ps.policies) or "(none)"
        print(f"no policy named {args.guard!r} in {args.path}; known: {known}", file=sys.stderr)
        return 1
    render = explain_toml if args.format == "toml" else explain_text
    sys.stdout.write(render(ps, args.guard))
    return 0


def _schema(args: argparse.Namespace) -> int:
    path = Path(args.output)
    if args.check:
        problem = check_schema(path)
        if problem is not None:
            print(problem, file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_schema(), encoding="utf-8")
    print(f"wrote {path}")
    return 0


def _init(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        print(f"{path} already exists; use --force to overwrite it", file=sys.stderr)
        return 1
    schema = Path.cwd() / SCHEMA_PATH
    relative = os.path.relpath(schema, path.resolve().parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    client = args.client if args.client != "auto" else ("httpx" if has_httpx() else "plain")
    text = starter(str(path), Path(relative).as_posix(), httpx=client == "httpx")
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}; check it with `policyengine validate {path}`")
    if client == "httpx" and not has_httpx():
        print("note: httpx is not installed here, so the file will not validate until it is")
    if not schema.exists():
        print(f"for completion in editors, also run `policyengine schema -o {SCHEMA_PATH}`")
    return 0


def _demo(argv: list[str]) -> int:
    try:
        demo = importlib.import_module("policyengine._demo")
    except ModuleNotFoundError as exc:
        if exc.name not in ("policyengine._demo", "policyengine"):
            raise
        print(
            "the demo is not part of this installation (policyengine._demo is missing)",
            file=sys.stderr,
        )
        return 2
    code: int = demo.main(argv)
    return code


def add_import_option(p: argparse.ArgumentParser) -> None:
    """``-I DIR`` (repeatable): where the policy file's own modules are imported from."""
    p.add_argument(
        "-I",
        "--import-path",
        action="append",
        default=[],
        metavar="DIR",
        help="also import exception types and handlers from DIR (repeatable; "
        "the current directory always is)",
    )


def _add_validate(sub: Any) -> None:
    p = sub.add_parser("validate", help="check policy files (exit 1 when invalid)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a .toml file or a directory of them")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument(
        "--format",
        choices=("text", "json", "github"),
        default="text",
        help="json: one document listing every problem; github: GitHub Actions annotations",
    )
    p.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="NAME,...",
        help="these guard names must be defined (comma-separated; repeatable): "
        "the names your code calls guard() with",
    )
    add_import_option(p)
    p.set_defaults(run=_validate)


def _add_schema(sub: Any) -> None:
    p = sub.add_parser("schema", help="write (or --check) the JSON Schema of policy files")
    p.add_argument(
        "-o",
        "--output",
        default=str(SCHEMA_PATH),
        metavar="PATH",
        help=f"where to write it (default: {SCHEMA_PATH})",
    )
    p.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    p.set_defaults(run=_schema)


def _add_explain(sub: Any) -> None:
    p = sub.add_parser("explain", help="show one effective policy, its origins and schedule")
    p.add_argument("path", metavar="PATH", help="a .toml file or a directory of them")
    p.add_argument("guard", metavar="GUARD", help="the policy name")
    p.add_argument("--format", choices=("text", "toml"), default="text")
    add_import_option(p)
    p.set_defaults(run=_explain)


def _add_init(sub: Any) -> None:
    p = sub.add_parser("init", help="write a commented starter policy file")
    p.add_argument("path", nargs="?", default="policies/policies.toml", metavar="PATH")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument(
        "--for",
        dest="client",
        choices=("auto", "httpx", "plain"),
        default="auto",
        help="retry the errors of httpx (the default when httpx is installed) or only the "
        "standard library's network errors",
    )
    p.set_defaults(run=_init)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="the live demo: a flaky service, guards, hot reload")
    p.add_argument("args", nargs="*", help="passed to the demo (see `policyengine demo --help`)")


_BUILTIN: tuple[Callable[[Any], None], ...] = (
    _add_validate,
    _add_schema,
    _add_explain,
    _add_init,
    _add_demo,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="policyengine", description="Declarative resilience policies: check, explain, start."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _BUILTIN:
        add(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:  # everything after `demo` belongs to the demo, options included
        return _demo(argv[1:])
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"policyengine {args.command}: {exc}", file=sys.stderr)
        return 1
    return code

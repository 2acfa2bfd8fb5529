"""Read policy files into a validated `PolicySet`, or a `PolicyValidationError` listing every
problem of every file at once (file, key path, line, message with a hint).

Steps: parse each file (`tomllib`); check its top level (`schema_version`, `[state]`, the shape
of `[templates]` and `[policies]`); gather templates and policies of all files into one namespace
(a name defined twice is an error); resolve `extends`; validate each template and policy after
inheritance, reporting an error where its value was written; check the retry schedule against
`timeout.total` (a warning, an error when `strict`).
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from .._rollout.chaos import ChaosOptions, drill_issue
from .._rollout.record import RecordOptions
from ..exceptions import PolicyIssue, PolicyValidationError
from .diagnostics import clean_loc, describe, without_typo_echoes
from .files import (
    MAX_FILE_BYTES,
    depth_message,
    files_of,
    read_all,
    too_deep,
    too_large,
)
from .inherit import Chain, Doc, Node, merge_chain, resolve_chains
from .latency import schedule_warning
from .lines import KeyPath, dotted
from .models import Policy, PolicyFile, StateOptions
from .origins import Origins as _Origins

__all__ = ["PolicySet", "load_path", "load_text"]


@dataclass(frozen=True)
class PolicySet:
    """Everything one load produced: effective policies (extends resolved), state options,
    the files read, a content hash, warnings, and where each effective value was written."""

    policies: Mapping[str, Policy]
    state: StateOptions
    sources: tuple[str, ...]
    version: str
    warnings: tuple[PolicyIssue, ...] = ()
    origins: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    allow_modules: tuple[str, ...] | None = None
    """The `allow_modules` this set was loaded with: a reload of its files passes it again."""
    record: RecordOptions | None = None  # top-level [record] (_record)
    # the document `[state]` was written in (None: no [state]), to point at its lines later
    state_doc: Doc | None = field(default=None, compare=False, repr=False)


_SECTIONS = ("templates", "policies")
_AT_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _parse(text: str, source: str, issues: list[PolicyIssue]) -> Doc | None:
    if len(text) > MAX_FILE_BYTES:  # (a file's bytes were bounded already; this is `loads`)
        issues.append(PolicyIssue(source, None, "", too_large()))
        return None
    try:
        data = tomllib.loads(text)
    except RecursionError:
        issues.append(PolicyIssue(source, None, "", depth_message(None)))
        return None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = _AT_LINE.search(message)
        if m is not None:
            line: int | None = int(m.group(1))
            detail = f"{_AT_LINE.sub('', message)} (column {m.group(2)})"
        elif message.endswith("(at end of document)"):
            line = max(1, len(text.splitlines()))
            detail = message.replace("(at end of document)", "(at the end of the file)")
        else:
            line, detail = None, message
        issues.append(PolicyIssue(source, line, "", f"TOML syntax error: {detail}"))
        return None
    deep = too_deep(data)
    if deep is not None:
        issues.append(PolicyIssue(source, None, dotted(deep[:2]), depth_message(deep)))
        return None
    return Doc(source, text, data)


class _Build:
    """One load: the documents, the namespace they share, and the problems found."""

    def __init__(
        self, issues: list[PolicyIssue], strict: bool, allow_modules: tuple[str, ...] | None
    ) -> None:
        self.issues = issues
        self.strict = strict
        self.validating = False  # `policyengine validate`: an ended drill is an error
        self.context = {"allow_modules": allow_modules}
        self.warnings: list[PolicyIssue] = []
        self.nodes: dict[str, dict[str, Node]] = {"templates": {}, "policies": {}}
        self.state: tuple[Doc, StateOptions] | None = None
        self.record: RecordOptions | None = None
        self.seen: set[tuple[str, int | None, KeyPath, str]] = set()

    def top_level(self, doc: Doc) -> None:
        rest = {k: v for k, v in doc.data.items() if k not in _SECTIONS}
        try:
            parsed = PolicyFile.model_validate(rest)
        except ValidationError as exc:
            for err in without_typo_echoes(exc.errors()):
                missing = err["type"] == "missing"
                rel, message = describe(
                    err, clean_loc(err["loc"], rest, missing=missing), PolicyFile
                )
                self.issues.append(doc.issue(rel, message))
        else:
            if "state" in rest:
                if self.state is not None:
                    first = self.state[0]
                    self.issues.append(
                        doc.issue(
                            ("state",),
                            f"[state] is also defined in {first.source}:"
                            f"{first.line(('state',))}; keep one",
                        )
                    )
                else:
                    self.state = (doc, parsed.state)
            if parsed.record is not None:  # [record]: one file of a directory should say it
                self.record = parsed.record
        for section in _SECTIONS:
            self.gather(doc, section)

    def gather(self, doc: Doc, section: str) -> None:
        tables = doc.data.get(section, {})
        if not isinstance(tables, dict):
            self.issues.append(doc.issue((section,), f"expected a table of named {section}"))
            return
        for name, raw in tables.items():
            if not isinstance(raw, dict):
                message = f"expected a table such as [{dotted((section, name))}]"
                self.issues.append(doc.issue((section, name), message))
                continue
            other = self.nodes[section].get(name)
            if other is not None:
                where = f"{other.doc.source}:{other.doc.line(other.prefix)}"
                self.issues.append(
                    doc.issue(
                        (section, name),
                        f"{dotted((section, name))} is defined twice: in "
                        f"{other.doc.source} and {doc.source} (first at {where})",
                    )
                )
                continue
            self.nodes[section][name] = Node(section, name, doc, raw)

    def report(
        self,
        node: Node,
        data: dict[str, Any],
        owners: dict[KeyPath, Node],
        exc: ValidationError,
        *,
        partial: bool = False,
    ) -> None:
        for err in without_typo_echoes(exc.errors()):
            missing = err["type"] == "missing"
            loc = err["loc"]
            lenient = node.section == "templates" or partial
            if lenient and missing and not any(isinstance(s, int) for s in loc):
                # a template may leave required keys to the policies that extend it, and a
                # policy whose `extends` is broken may expect them from its parent
                continue
            rel, message = describe(err, clean_loc(loc, data, missing=missing), Policy)
            issue = _issue(node, owners, rel, message)
            key = (issue.file, issue.line, rel, message)
            if key in self.seen:  # already reported by the template that wrote the value
                continue
            if node.section == "templates":
                self.seen.add(key)
            self.issues.append(issue)

    def resolve(self, parse_failed: bool) -> tuple[dict[str, Policy], _Origins]:
        templates, policies = self.nodes["templates"], self.nodes["policies"]
        broken: dict[Node, Chain] = {}
        chains, problems = resolve_chains(
            templates, policies, report_missing=not parse_failed, broken=broken
        )
        self.issues.extend(problems)
        for node, chain in broken.items():  # still check what these nodes say themselves
            data, owners = merge_chain(chain)
            try:
                Policy.model_validate(data, context=self.context)
            except ValidationError as exc:
                self.report(node, data, owners, exc, partial=True)
        effective: dict[str, Policy] = {}
        origins = _Origins()
        ordered = sorted(
            chains.items(), key=lambda item: (item[0].section == "policies", len(item[1]))
        )
        for node, chain in ordered:
            data, owners = merge_chain(chain)
            try:
                policy = Policy.model_validate(data, context=self.context)
            except ValidationError as exc:
                self.report(node, data, owners, exc)
                continue
            if node.section == "policies":
                effective[node.name] = policy
                origins.sources[node.name] = (data, owners)
                self.check_schedule(node, policy, owners)
                if policy.retry is not None:
                    self.warn(node, owners, ("retry", "max_delay"), policy.retry.delay_warning())
                if policy.chaos is not None:
                    self.check_drill(node, policy.chaos, owners)
        return {name: effective[name] for name in policies if name in effective}, origins

    def check_schedule(self, node: Node, policy: Policy, owners: dict[KeyPath, Node]) -> None:
        self.warn(node, owners, ("timeout", "total"), schedule_warning(policy))

    def warn(
        self, node: Node, owners: dict[KeyPath, Node], rel: KeyPath, message: str | None
    ) -> None:
        """A warning on `rel` of `node` (an error when `strict`); nothing for None."""
        if message is None:
            return
        if self.strict:
            self.issues.append(_issue(node, owners, rel, message))
        else:
            self.warnings.append(_issue(node, owners, rel, message, "warning"))

    def check_drill(self, node: Node, chaos: ChaosOptions, owners: dict[KeyPath, Node]) -> None:
        severity, key, message = drill_issue(chaos, self.strict, validating=self.validating)
        issue = _issue(node, owners, ("chaos", key) if key else ("chaos",), message, severity)
        (self.issues if severity == "error" else self.warnings).append(issue)

    def check_not_empty(self, policies: Mapping[str, Policy], sources: list[str]) -> None:
        """A load with no policy at all (an empty or truncated file) is a warning."""
        if policies or self.nodes["policies"] or self.issues or not sources:
            return
        what = "the file defines" if len(sources) == 1 else f"the {len(sources)} files define"
        message = (
            f"no policies: {what} no [policies.NAME] table, so guard(NAME) finds nothing "
            "(is the file truncated?)"
        )
        severity: Literal["error", "warning"] = "error" if self.strict else "warning"
        (self.issues if self.strict else self.warnings).append(
            PolicyIssue(sources[0], None, "policies", message, severity)
        )


def _issue(
    node: Node,
    owners: dict[KeyPath, Node],
    rel: KeyPath,
    message: str,
    severity: Literal["error", "warning"] = "error",
) -> PolicyIssue:
    """An issue on `rel` of `node`'s effective table: the key path is the node's, the file and
    line are where the value (or its nearest table) was written, maybe in a template."""
    owner = node
    for end in range(len(rel), 0, -1):
        found = owners.get(rel[:end])
        if found is not None:
            owner = found
            break
    line = owner.doc.line((*owner.prefix, *rel))
    return PolicyIssue(owner.doc.source, line, dotted((*node.prefix, *rel)), message, severity)


def _build(
    texts: Iterable[tuple[str, str]],
    issues: list[PolicyIssue],
    version: str,
    strict: bool,
    allow_modules: Iterable[str] | None = None,
    validating: bool = False,
) -> PolicySet:
    sources = []
    docs = []
    parse_failed = bool(issues)
    for source, text in texts:
        sources.append(source)
        doc = _parse(text, source, issues)
        if doc is None:
            parse_failed = True
        else:
            docs.append(doc)
    build = _Build(issues, strict, None if allow_modules is None else tuple(allow_modules))
    build.validating = validating
    for doc in docs:
        build.top_level(doc)
    policies, origins = build.resolve(parse_failed)
    build.check_not_empty(policies, sources)
    if issues:
        order = {source: i for i, source in enumerate(sources)}
        problems = [*issues, *build.warnings]
        problems.sort(key=lambda i: (order.get(i.file, -1), i.line or 0))
        raise PolicyValidationError(problems)
    state = build.state[1] if build.state is not None else StateOptions()
    allow = build.context["allow_modules"]
    warnings = tuple(build.warnings)
    state_doc = build.state[0] if build.state is not None else None
    return PolicySet(
        policies, state, tuple(sources), version, warnings, origins, allow, build.record, state_doc
    )


def _hash(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def load_text(
    text: str,
    source: str = "<string>",
    *,
    strict: bool = False,
    allow_modules: Iterable[str] | None = None,
) -> PolicySet:
    """Validate a TOML document; PolicyValidationError lists every problem.

    `allow_modules` (``("myapp.",)``): fallback handlers must live in these modules (or under
    them); None allows any module of the application (never builtins or the standard library).
    """
    texts = [(source, text.removeprefix("\ufeff"))]
    return _build(texts, [], _hash(text), strict, allow_modules)


def load_path(
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    allow_modules: Iterable[str] | None = None,
    validating: bool = False,
) -> PolicySet:
    """Validate a file, or every ``*.toml`` in a directory (merged into one namespace); what is
    read is bounded (see `_config.files`). `allow_modules` as for `load_text`; `validating` for the
    `validate` command (an ended chaos drill is then an error, not a warning)."""
    p = Path(path)
    issues: list[PolicyIssue] = []
    texts = read_all(files_of(p), issues)
    if p.is_dir():
        version = _hash(*(part for name, text in texts for part in (Path(name).name, text)))
    else:
        version = _hash(texts[0][1]) if texts else _hash("")
    return _build(texts, issues, version, strict, allow_modules, validating)

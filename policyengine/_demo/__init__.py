"""`policyengine demo`: a flaky local service, guards from a watched policy file, a live view.

Everything runs in one process on the embedded default (in-memory breaker state): an HTTP-ish
server on 127.0.0.1 whose failures, latency and outages follow a scripted story, a load generator
calling it through the guards of `policies/demo.toml`, and a view refreshed several times a
second (rich, or plain lines with `--no-tty`). Edit the policy file while it runs to see a
reload applied live, or a bad edit rejected while the old policy keeps serving.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..exceptions import PolicyValidationError
from ._run import Options, run
from ._view import make_view

__all__ = ["PACKAGED_POLICIES", "main"]

DEFAULT_POLICIES = Path("policies") / "demo.toml"
PACKAGED_POLICIES = Path(__file__).with_name("demo.toml")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="policyengine demo",
        description="A live demo: a flaky local service called through guards from a policy "
        "file that you can edit while it runs.",
    )
    p.add_argument(
        "--duration",
        type=_positive,
        metavar="SECONDS",
        help="stop after this long (default: run until Ctrl-C; the story loops). A run shorter "
        "than one loop of the story plays the whole story, faster.",
    )
    p.add_argument(
        "--no-tty",
        action="store_true",
        help="plain periodic lines instead of the live view (for logs and CI)",
    )
    p.add_argument(
        "--policies",
        metavar="PATH",
        help=f"the policy file (default: {DEFAULT_POLICIES} if it exists, else a copy of the "
        "one shipped with the package, in a temporary directory)",
    )
    p.add_argument(
        "--speed",
        type=_positive,
        default=1.0,
        help="story time scale: 2 plays the story twice as fast (default: 1)",
    )
    p.add_argument("--seed", type=int, help="seed of the flaky service's randomness")
    return p


@contextmanager
def _policy_file(given: str | None) -> Iterator[tuple[Path, str]]:
    """The file to load and how to name it: the given one, ./policies/demo.toml, or a
    temporary copy of the packaged one (never the installed file itself)."""
    if given is not None:
        yield Path(given), given
        return
    if DEFAULT_POLICIES.is_file():
        yield DEFAULT_POLICIES, str(DEFAULT_POLICIES)
        return
    with tempfile.TemporaryDirectory(prefix="policyengine-demo-") as tmp:
        copy = Path(tmp) / "demo.toml"
        shutil.copyfile(PACKAGED_POLICIES, copy)
        yield copy, str(copy)


def main(argv: list[str]) -> int:
    """Run the demo; returns the exit code (0 on a normal end and on Ctrl-C)."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help, or bad arguments (argparse printed why)
        return exc.code if isinstance(exc.code, int) else 2
    view, note = make_view(args.no_tty)
    if note is not None:
        print(f"policyengine demo: {note}", file=sys.stderr)
    try:
        with _policy_file(args.policies) as (path, shown):
            if not path.exists():
                print(f"policyengine demo: no such file: {shown}", file=sys.stderr)
                return 1
            options = Options(path, shown, args.duration, args.speed, args.seed)
            return asyncio.run(run(options, view))
    except PolicyValidationError as exc:
        print(f"policyengine demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # where the loop could not take over Ctrl-C (e.g. Windows)
        return 0
    except BrokenPipeError:  # `policyengine demo --no-tty | head`: the reader has had enough
        return 0

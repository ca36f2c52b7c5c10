"""`foreshard` command line: one subcommand per module in this package.

Each module exposes `register(subparsers)`, which adds its parser and sets `func`, a callable
taking the parsed arguments and returning the exit code. Adding a command means adding a
module and one line to COMMAND_MODULES, so commands written in parallel never touch each other.
A command whose third-party dependency is not installed (the operator image carries only the
runtime dependencies, not the development kit's) stays listed and says what it lacks, so the
other commands, `foreshard run` above all, keep working.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

COMMAND_MODULES = (
    "foreshard.cli.traces",
    "foreshard.cli.cluster",
    "foreshard.cli.forecast_eval",
    "foreshard.cli.simulate",
    "foreshard.cli.run",
    "foreshard.cli.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foreshard",
        description="Size and place an ordered queue's shards ahead of demand.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is None or error.name.split(".")[0] in ("foreshard", "foreshard_broker"):
                raise
            _register_unavailable(subparsers, name, error.name)
            continue
        module.register(subparsers)
    return parser


def _register_unavailable(subparsers: Any, module: str, missing: str) -> None:
    command = module.rsplit(".", 1)[-1].replace("_", "-")
    parser = subparsers.add_parser(command, help=f"(unavailable: needs the {missing} package)")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    parser.set_defaults(func=lambda _args: _unavailable(command, missing))


def _unavailable(command: str, missing: str) -> int:
    print(
        f"foreshard {command} needs the Python package {missing!r}, which this installation lacks "
        "(a development dependency: pip install 'foreshard[dev]')",
        file=sys.stderr,
    )
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

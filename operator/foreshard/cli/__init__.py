"""`foreshard` command line: one subcommand per module in this package.

Each module exposes `register(subparsers)`, which adds its parser and sets `func`, a callable
taking the parsed arguments and returning the exit code. Adding a command means adding a
module and one line to COMMAND_MODULES, so commands written in parallel never touch each other.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

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
            if error.name != name:
                raise
            continue  # a command still being written; the others keep working
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Command line: `python -m utils {train,recover,load,generate,convert,export} --help`."""

from __future__ import annotations

import argparse
import importlib
import sys

from utils.cli import COMMANDS


class UserError(Exception):
    """Bad input from the command line; printed as one line, exit code 2."""


# Errors a user can cause: reported as one line instead of a traceback.
def _user_error_types() -> tuple[type[BaseException], ...]:
    from utils.config import ConfigError
    from utils.training.engine.errors import CheckpointError

    return (UserError, ConfigError, CheckpointError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils",
        description="Train, recover, load, generate with, convert and export GPT-2 models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"utils.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _user_error_types() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

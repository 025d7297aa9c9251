"""Command line: `python -m utils {train,recover,load,generate,convert,export} --help`.

A user error (see `utils.errors`) prints one line `error: ...` and exits with code 2,
naming the flags the user typed; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from utils import DISTRIBUTION, __version__
from utils.cli import COMMANDS
from utils.cli.common import error_line, path_flags, use_help_formatters
from utils.errors import UserError, user_error_types

__all__ = ["UserError", "build_parser", "main"]  # UserError's home is utils.errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name(),
        description="Train, recover, load, generate with, convert and export GPT-2 models.",
    )
    parser.add_argument("--version", action="version", version=f"{DISTRIBUTION} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"utils.cli.{name}").register(subparsers)
    use_help_formatters(parser)
    return parser


def program_name() -> str:
    """How the user started us, for usage lines: the installed command, or `python -m utils`."""
    return DISTRIBUTION if Path(sys.argv[0]).stem == DISTRIBUTION else "python -m utils"


def _setting_flags(command: str | None) -> dict[str, str]:
    """The command's `SETTING_FLAGS` (library setting name -> its flag), if it has one."""
    module = sys.modules.get(f"utils.cli.{command}")
    return dict(getattr(module, "SETTING_FLAGS", {}))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as interrupt:
        # training's says where it stopped and where it resumes
        print(f"interrupted{': ' if str(interrupt) else ''}{interrupt}", file=sys.stderr)
        return 130
    except user_error_types() as error:
        print(error_line(error, _setting_flags(getattr(args, "command", None)),
                         path_flags(args, parser)), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

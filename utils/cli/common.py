"""What every subcommand shares: flag names in library messages, the one-line error, devices.

Output paths (`--metrics-csv`, `--output`) are checked by `check_output_file` before any
work and written by `write_output`: never over a file without the overwrite flag, never
into a FIFO or device, always atomically (a hard link to the old file keeps the old bytes).

The library names a setting by its field (`learning_rate must be ...`); a command-line user
typed a flag (`--lr`). Each command module may define `SETTING_FLAGS` (field -> flag, or a
field with its value -> the flag that means it: `resume_from=None` -> `--new-run`), and
`error_line` (and `train`'s printed messages) write the flag where the message names the field.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from utils.errors import UserError, describe_os_error

# Fields named by a single common word ("device", "seed") are translated only where the
# message clearly means the setting: `device=...`, `device must ...`, `TrainingConfig.device`.
_SETTING_PREFIX = r"(?:(?:ModelConfig|TrainingConfig)\.)"


def with_flag_names(message: str, flags: Mapping[str, str]) -> str:
    """`message` with each setting it names (e.g. `learning_rate`) written as its flag."""
    for name, flag in sorted(flags.items(), key=lambda item: -len(item[0])):
        if "=" in name:  # a setting with its value, written as it stands in the message
            message = message.replace(name, flag)
        elif "_" in name:
            pattern = rf"{_SETTING_PREFIX}?\b{name}\b(=)?"
        else:
            pattern = rf"{_SETTING_PREFIX}\b{name}\b(=)?|\b{name}(=)|\b{name}(?= must\b)"
        message = re.sub(pattern, lambda match, flag=flag: flag + (" " if any(
            match.groups()) else ""), message)
    return message


class _ShowsDefaults(argparse.HelpFormatter):
    """Each option's help ends with its default, unless the text already says it (a flag
    whose default comes from elsewhere writes "default: ..." itself) or there is nothing to
    show: None (the help then says what leaving the option out does) or a switch's False."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "default" in text
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


class HelpFormatter(_ShowsDefaults):
    """The commands' help: defaults shown, descriptions re-wrapped."""


class RawDescriptionHelpFormatter(_ShowsDefaults, argparse.RawDescriptionHelpFormatter):
    """The same, for a description laid out by hand (kept as written)."""


def use_help_formatters(parser: argparse.ArgumentParser) -> None:
    """Give `parser` and its subcommands the formatters above (set once here, so a command
    added later shows its defaults too)."""
    for each in [parser, *_subcommands(parser)]:
        raw = issubclass(each.formatter_class, argparse.RawDescriptionHelpFormatter)
        each.formatter_class = RawDescriptionHelpFormatter if raw else HelpFormatter


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return [sub for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for sub in action.choices.values()]


def error_line(error: BaseException, flags: Mapping[str, str] | None = None,
               paths: Mapping[str, str] | None = None) -> str:
    """The one line `error: ...` that the command line prints for a user error.

    An OSError (a path or disk the user gave) is worded by `describe_os_error` and starts
    with the flag that named the path, when one of `paths` ({flag: value typed}) holds it.
    """
    if isinstance(error, OSError):
        text = describe_os_error(error)
        flag = flag_of_path(error, paths or {})
        if flag is not None:
            value = paths[flag]
            text = f"{flag} {value}: {text.removeprefix(f'{value}: ')}"
    else:
        text = " ".join(str(error).split()) or type(error).__name__
    return f"error: {with_flag_names(text, flags or {})}"


def flag_of_path(error: OSError, paths: Mapping[str, str]) -> str | None:
    """The flag whose value is the failing path, a folder above it, or a file whose
    temporary twin (`out.bin.part`, `.out.bin.123.tmp`) failed; the longest value wins."""
    import os

    failed = [os.fspath(p) for p in (error.filename, error.filename2)
              if isinstance(p, (str, os.PathLike))]
    def names(path: str, value: str) -> bool:
        folder, name = os.path.split(value.rstrip("/"))
        twin = os.path.dirname(path) == folder and name and name in os.path.basename(path)
        return path == value or path.startswith(value.rstrip("/") + "/") or bool(twin)

    matching = [flag for flag, value in paths.items() if any(names(p, value) for p in failed)]
    return max(matching, key=lambda flag: len(paths[flag]), default=None)


def path_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, str]:
    """{flag as typed (`--checkpoint-dir`, or SOURCE for a positional): value} for every
    option of the subcommand that holds text: the paths an OSError may be about."""
    names: dict[str, str] = {}
    for action in parser._actions:  # the subcommand's parser, once parsed
        if isinstance(action, argparse._SubParsersAction):
            command = action.choices.get(getattr(args, "command", None))
            return path_flags(args, command) if command is not None else {}
        long = [option for option in action.option_strings if option.startswith("--")]
        names[action.dest] = long[0] if long else (action.metavar or action.dest.upper())
    return {names[dest]: value for dest, value in vars(args).items()
            if dest in names and isinstance(value, str) and value}


def _available(device_type: str) -> bool:
    """Whether this machine has a device of this type. Only the type asked about is
    queried: asking CUDA starts its driver, which a CPU run has no reason to pay for."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available()
    if device_type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return bool(mps and mps.is_available())
    return True


def check_device(name: str | None, flag: str = "--device") -> None:
    """Refuse a device torch does not know (`--device foo`) or this machine lacks."""
    if name is None:
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"{flag} {name!r} is not a device; use cpu, cuda, cuda:1 or mps "
                        f"(or leave {flag} out for the best available)") from None
    if not _available(device.type):
        raise UserError(f"{flag} {name}: this machine has no {device.type.upper()} device; "
                        f"use {flag} cpu or leave {flag} out for the best available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA "
                        f"device(s), numbered from 0")


def check_output_file(path: Path, flag: str, overwrite: bool,
                      overwrite_flag: str = "--overwrite") -> None:
    """Refuse, before any work, an output file name that is a folder, not a regular file
    (a FIFO would block, /dev/full fail, a device take the bytes), in a folder that does not
    exist, or an existing file without `overwrite_flag`."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise UserError(f"{flag} {path}: the folder {path.parent} does not exist; create it "
                            "first or choose another path") from None
        return
    except OSError as error:  # a name too long, a loop of links, no permission: say which
        raise UserError(f"{flag} {describe_os_error(error)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{flag} {path} is a folder; give a file name such as "
                        f"{path / ('metrics.csv' if 'csv' in flag else 'model.pt')}")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{flag} {path} is not a regular file (a FIFO, device or socket); "
                        "nothing was written. Choose a new file name")
    if not overwrite:
        raise UserError(f"{flag} {path} exists; choose another name or pass {overwrite_flag} "
                        "to replace it")


def write_output(path: Path, write: Callable[[BinaryIO], object], flag: str, overwrite: bool,
                 overwrite_flag: str = "--overwrite") -> None:
    """Write an output file atomically (`fileio.write_atomically`): a new file, or with
    `overwrite` a replaced one (its name now names the new bytes; another hard link to the
    old file keeps them). A file that appeared since `check_output_file` is not replaced."""
    from utils.fileio import write_atomically

    try:
        written = write_atomically(path, write, replace=overwrite)
    except OSError as error:
        if error.filename is None:  # a write() that failed (disk full) names no file
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    if not written:
        raise UserError(f"{flag} {path} exists; choose another name or pass {overwrite_flag} "
                        "to replace it")

"""`python -m utils`: help is fast (no heavy imports), bad input is one line and exit code 2."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import utils.__main__ as cli_main
from utils.cli import COMMANDS

REPO_ROOT = Path(__file__).resolve().parent.parent
# Only the code that needs them may import these; `--help` and `import utils` must not.
HEAVY_MODULES = ("torch", "transformers", "matplotlib", "pandas", "ipywidgets", "tiktoken")
BUILT_COMMANDS = [name for name in COMMANDS
                  if importlib.util.find_spec(f"utils.cli.{name}") is not None]


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)


def test_import_utils_imports_nothing_heavy():
    result = _run_python(
        "import json, sys, utils\n"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_help_of_every_command_imports_nothing_heavy():
    """Parse `--help` for the top level and every built subcommand in one fresh interpreter."""
    code = (
        "import contextlib, io, json, sys\n"
        "from utils.__main__ import main\n"
        "helps = {}\n"
        f"for argv in [['--help']] + [[name, '--help'] for name in {BUILT_COMMANDS!r}]:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit as exit:\n"
        "            assert exit.code == 0, (argv, exit.code)\n"
        "    helps[' '.join(argv)] = out.getvalue()\n"
        f"heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy, 'helps': helps}))\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["heavy"] == []
    top = report["helps"]["--help"]
    assert top.startswith("usage: python -m utils")
    for name in BUILT_COMMANDS:
        assert name in top
        assert report["helps"][f"{name} --help"].startswith(f"usage: python -m utils {name}")


def test_python_dash_m_utils_help_exits_zero():
    result = subprocess.run([sys.executable, "-m", "utils", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: python -m utils" in result.stdout


def test_missing_or_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli_main.main([])
    assert excinfo.value.code == 2
    with pytest.raises(SystemExit) as excinfo:
        cli_main.main(["no-such-command"])
    assert excinfo.value.code == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err


def _parser_with(func) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fake").set_defaults(func=func)
    return parser


@pytest.mark.parametrize("error", [
    FileNotFoundError("data path 'x.txt' does not exist; pass a file"),
    ValueError("batch_size must be >= 1, got 0"),
    cli_main.UserError("choose --preset or --layers, not both"),
])
def test_user_errors_print_one_line_and_exit_2(monkeypatch, capsys, error):
    def fails(args):
        raise error

    monkeypatch.setattr(cli_main, "build_parser", lambda: _parser_with(fails))
    assert cli_main.main(["fake"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {error}\n"


def test_tokenizer_unavailable_is_a_user_error(monkeypatch, capsys):
    from utils.tokenizer import TokenizerUnavailableError

    def fails(args):
        raise TokenizerUnavailableError("tokenizer 'gpt2' is not available offline; run make install")

    monkeypatch.setattr(cli_main, "build_parser", lambda: _parser_with(fails))
    assert cli_main.main(["fake"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_programming_errors_are_not_swallowed(monkeypatch):
    def buggy(args):
        raise TypeError("bug")

    monkeypatch.setattr(cli_main, "build_parser", lambda: _parser_with(buggy))
    with pytest.raises(TypeError, match="bug"):
        cli_main.main(["fake"])


def test_return_value_is_the_exit_code(monkeypatch):
    monkeypatch.setattr(cli_main, "build_parser", lambda: _parser_with(lambda args: 3))
    assert cli_main.main(["fake"]) == 3
    monkeypatch.setattr(cli_main, "build_parser", lambda: _parser_with(lambda args: None))
    assert cli_main.main(["fake"]) == 0

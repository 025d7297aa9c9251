"""`python -m utils` subcommands: one module each, registered in `COMMANDS`.

Each module defines `register(subparsers)`, which adds its parser and sets `func` to a
function taking the parsed args and returning an exit code. Modules import heavy
libraries inside their run functions, so `python -m utils --help` stays fast.
"""

COMMANDS = ("train", "recover", "load", "generate", "convert", "export")

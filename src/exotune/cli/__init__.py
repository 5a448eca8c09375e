"""Command line: one module per command, each with ``HELP``, ``add_parser(sub)`` and
``run(args) -> int``; arguments become configs in the command, never past it. ``main(argv) -> int``.

Only the command being run has its full parser built (with the choices its registries give,
which may import torch); the others are one help line each, so ``exotune --help`` and a
mistyped command answer without importing anything heavy.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings

from exotune import __version__
from exotune.cards import card_context
from exotune.cli import bench, demo, ea, embed, predict, serve, train
from exotune.cli import eval as eval_cmd
from exotune.errors import ExotuneError
from exotune.progress import setup_logging

MODULES = {
    "demo": demo,
    "train": train,
    "eval": eval_cmd,
    "predict": predict,
    "embed": embed,
    "serve": serve,
    "bench": bench,
    "ea": ea,
}
COMMANDS = {name: module.run for name, module in MODULES.items()}
DEBUG_ENV = "EXOTUNE_DEBUG"  # set: errors from the standard library keep their traceback


class DefaultsHelp(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it already says it or has none."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        quiet = any(action.default is v for v in (None, False, argparse.SUPPRESS)) or not action.option_strings
        if quiet or "default" in text or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help gives the defaults; its subcommands' parsers are the same."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelp)
        super().__init__(*args, **kwargs)


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The parser; ``*``: every command's arguments built; else only ``command``'s (if any)."""
    parser = Parser(prog="exotune", description="Adapt foundation models you cannot open.")
    parser.add_argument("--version", action="version", version=f"exotune {__version__}")
    parser.add_argument(
        "-q",
        "--quiet",
        dest="quiet_all",
        action="store_true",
        help="no progress and no notices, only results, warnings and errors (train also takes "
        "--quiet after the command)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in MODULES.items():
        if command in ("*", name):
            module.add_parser(sub)
        else:
            sub.add_parser(name, help=module.HELP, add_help=False)
    return parser


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split("\n")) or type(err).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)  # the message, not the source line that raised it


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command(argv)).parse_args(argv)  # not a command: help or an error, stubs suffice
    if args.quiet_all:
        args.quiet = True  # what the commands read
    setup_logging(getattr(args, "quiet", False))
    try:
        with warnings.catch_warnings(), card_context(command=shlex.join(["exotune", *argv])):  # for model cards
            warnings.showwarning = _show_warning
            return COMMANDS[args.command](args)
    except ExotuneError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:  # from user input (a file, a value) the library did not name
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"error: {type(err).__name__}: {_one_line(err)} (set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

"""Command line: one module per command, each with ``add_parser(sub)`` and ``run(args) -> int``;
arguments become configs in the command, never past it. ``main(argv) -> int``."""

from __future__ import annotations

import argparse
import sys

from exotune import __version__
from exotune.cli import bench, demo, ea, predict, serve, train
from exotune.cli import eval as eval_cmd
from exotune.errors import ExotuneError

MODULES = {"demo": demo, "train": train, "eval": eval_cmd, "predict": predict, "serve": serve, "bench": bench,
           "ea": ea}
COMMANDS = {name: module.run for name, module in MODULES.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exotune", description="Adapt foundation models you cannot open.")
    parser.add_argument("--version", action="version", version=f"exotune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in MODULES.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ExotuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

"""Argument types shared by the command lines."""

from __future__ import annotations

import argparse


def entry_points_arg(value: str) -> str | list[int]:
    """``all`` or comma-separated layer indices, e.g. ``0,2,5``."""
    if value.strip().lower() == "all":
        return "all"
    try:
        layers = [int(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'all' or comma-separated layer indices, got {value!r}") from None
    if any(i < 0 for i in layers):
        raise argparse.ArgumentTypeError(f"layer indices must be >= 0, got {value!r}")
    return layers


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value!r}")
    return number

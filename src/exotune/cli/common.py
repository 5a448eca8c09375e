"""What every command shares that is neither data, a box nor a config: argument types, and the
end of every train (fit, summary, card) and of every evaluation (metrics printed)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from exotune.cards import card_context, update_run_info
from exotune.cli.boxes import user_device


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


def checked_number(value: str, parse: Callable[[str], float], ok: Callable[[float], bool], expect: str):
    """``value`` parsed (``int`` or ``float``) if ``ok`` holds for it, else an argument error that
    says what was expected (``must be EXPECT, got VALUE``): the shape of every number type below."""
    try:
        number = parse(value)
    except ValueError:
        number = None
    if number is None or not ok(number):
        raise argparse.ArgumentTypeError(f"must be {expect}, got {value!r}")
    return number


def positive_int(value: str) -> int:
    return checked_number(value, int, lambda n: n >= 1, "an integer >= 1")


def port_number(value: str) -> int:
    """A TCP port to listen on: 1 to 65535."""
    return checked_number(value, int, lambda n: 1 <= n <= 65535, "a TCP port, 1 to 65535")


def seed_number(value: str) -> int:
    """A random seed: 0 to 2**32 - 1, what every generator the runs seed takes."""
    return checked_number(value, int, lambda n: 0 <= n < 2**32, "an integer from 0 to 4294967295")


def share(value: str) -> float:
    """A share of a whole in (0, 1), e.g. of the training examples carved for validation."""
    return checked_number(value, float, lambda x: 0 < x < 1, "a number in (0, 1), e.g. 0.1")


def decay(value: str) -> float:
    """A decay per step in (0, 1), e.g. of a moving average."""
    return checked_number(value, float, lambda x: 0 < x < 1, "a number in (0, 1), e.g. 0.995")


def add_averaging_args(p) -> None:
    """How batches are drawn and what is evaluated: ``train`` and ``bench`` share these."""
    p.add_argument(
        "--ema",
        type=decay,
        default=None,
        metavar="DECAY",
        help="evaluate, select and save a moving average of the trained tensors (decay per step, e.g. "
        "0.995; default: the tensors as trained)",
    )
    p.add_argument(
        "--no-group-by-length",
        action="store_true",
        help="draw batches of mixed lengths (default: batches of similar lengths, less padding)",
    )


def fit_and_report(args, model, train, val, train_cfg, test: Callable[[], dict] | None = None) -> int:
    """Train ``model`` into ``--output-dir`` (resuming with ``--resume``); ``test`` gives the
    test split's metrics for the summary. Under torchrun only rank 0 reports and writes."""
    from exotune import distributed
    from exotune.artifacts import rewrite_card
    from exotune.cli.runs import data_info
    from exotune.train import Trainer

    out = Path(args.output_dir)
    with card_context(data=data_info(args, train, val)):
        trainer = Trainer(
            train_cfg,
            out,
            progress=not args.quiet,
            report_to=getattr(args, "report_to", None) or (),
            device=user_device(args),
            precision=args.precision,
        )
        result = trainer.fit(model, train, val, resume=args.resume)
        if not distributed.is_main():
            return 0
        summary = result.summary()
        if test is not None:
            summary["test"] = test()
            if result.best_dir is not None and result.best_dir.is_dir():  # the card again, with the test score
                best = result.history[result.best_epoch - 1]
                validation = {k[len("val_") :]: v for k, v in best.items() if k.startswith("val_")}
                update_run_info(
                    metrics={"validation": validation, "test": summary["test"]}, best_epoch=result.best_epoch
                )
                rewrite_card(result.best_dir)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


def print_metrics(args, metrics: dict, summary: str) -> None:
    """``--json``: the metrics as JSON; else the one-line summary."""
    print(json.dumps(metrics) if args.json else summary)

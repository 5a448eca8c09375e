"""Turning a command's arguments into the library's configs (adapters, entry tokens, training),
in one place: the argparse namespace never crosses into the library."""

from __future__ import annotations

import argparse
from collections.abc import Callable

ENTRY_TOKENS = 2  # tokens per entry point when only --entry-points is given
ENTRY_TOKENS_MAX = 8  # what the CLI's light-gray box accepts per entry point (at least N)


def fill_train_defaults(args) -> None:
    """Training options left unset take the task's defaults (exotune.defaults): the settings
    the committed tables were made with; the learning rate is LGA's with entry tokens."""
    from exotune.defaults import for_task

    d = for_task(args.task)
    given = {
        "epochs": d.epochs,
        "batch_size": d.batch_size,
        "patience": d.patience,
        "val_fraction": d.val_fraction,
        "lr": d.lr_for("lga" if is_lga(args) else "dga"),
    }
    for name, value in given.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def is_lga(args) -> bool:
    return args.entry_points is not None or args.entry_tokens is not None


# Per registered adapter, its config's fields from the CLI's options; an adapter not listed
# gets its config's defaults (its own config class all the same).
ADAPTER_OPTIONS: dict[tuple[str, str], Callable[[argparse.Namespace], dict]] = {
    ("input", "text-shift"): lambda a: {
        "shift": not a.no_shift,
        "gain": a.input_gain,
        "extra_tokens": a.extra_tokens,
        "reparam": a.token_reparam,
        "copies_per": a.copies_per,
    },
    ("input", "token-lowrank"): lambda a: {
        "rank": a.lowrank_rank,
        "activation": a.lowrank_activation,
        "kernel": a.lowrank_kernel,
        **ADAPTER_OPTIONS["input", "text-shift"](a),
    },
    ("input", "token-conditioned"): lambda a: ADAPTER_OPTIONS["input", "token-lowrank"](a),
    ("input", "pixel-conv"): lambda a: {"kernel_size": a.kernel_size},
    ("input", "pixel-residual"): lambda a: {"kernel_size": a.kernel_size, "channels": a.pixel_channels},
    ("output", "mlp"): lambda a: {"hidden": a.mlp_hidden},
}


def adapter_config(kind: str, name: str, args):
    """The config of the registered ``kind`` adapter ``name``, its options from the arguments."""
    from exotune.graybox.registry import get_entry

    options = ADAPTER_OPTIONS.get((kind, name))
    return get_entry(kind, name).config_cls(**(options(args) if options else {}))


def dga_config(args, modality: str = "text"):
    from exotune.graybox import DGAConfig

    inp = adapter_config("input", args.pixel_adapter if modality == "image" else args.text_adapter, args)
    out = adapter_config("output", args.output_adapter, args)
    dropout = args.input_dropout if modality == "text" else 0.0
    return DGAConfig.variant(args.variant, inp, out, entry_tokens_config(args), modality, dropout)


def entry_tokens_config(args):
    from exotune.graybox import EntryTokensConfig

    return (
        EntryTokensConfig(tokens=args.entry_tokens or ENTRY_TOKENS, reparam=args.token_reparam)
        if is_lga(args)
        else None
    )


def train_config(args):
    from exotune.train import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule=args.schedule,
        warmup_ratio=args.warmup_ratio,
        patience=args.patience,
        seed=args.seed,
        lr_input=args.lr_input,
        lr_tokens=args.lr_tokens,
        lr_output=args.lr_output,
        lr_head=args.lr_head,
        ema=args.ema,
        group_by_length=not args.no_group_by_length,
    )

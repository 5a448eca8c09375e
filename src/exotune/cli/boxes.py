"""Opening the box a command names: loaded here (``--backbone``, on ``--device`` at ``--precision``)
or served (``--remote``); a CLIP pair or an image box; the box an adapter was trained against."""

from __future__ import annotations

import argparse

from exotune.cli.configs import ENTRY_TOKENS, ENTRY_TOKENS_MAX, is_lga
from exotune.errors import ConfigError

# exotune.devices' (a test keeps them equal); no torch at parse time
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:<index>"


def add_box_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--backbone",
        default=None,
        help="local folder or model id of a BERT-family encoder (default: the packaged all-MiniLM-L6-v2); "
        "for image tasks a CLIP, ViT or DINOv2 checkpoint (e.g. openai/clip-vit-base-patch16) or "
        "open_clip:MODEL@PRETRAINED",
    )
    g.add_argument(
        "--remote",
        default=None,
        metavar="URL",
        help="a box served by 'exotune serve', e.g. http://127.0.0.1:8000 (token: $EXOTUNE_TOKEN)",
    )
    d = p.add_argument_group("device and precision (recorded in a run's summary, never in an adapter)")
    d.add_argument(
        "--device",
        default="auto",
        help=f"where the adapters, the head and a local box run: {DEVICE_CHOICES} (default: auto, "
        "a CUDA GPU when there is one; under torchrun the rank's own)",
    )
    d.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="fp32, or autocast to bf16 / fp16 (fp16 with a gradient scaler) for training steps and "
        "a local box's no-gradient calls (encode, evaluation, scores); the trained tensors stay "
        "float32 (default: fp32)",
    )


def open_box(args, **load_kwargs):
    """The box the arguments name: served (``--remote``) or loaded here (``--backbone``)."""
    if args.remote:
        from exotune.boxes.remote import connect

        return connect(args.remote)  # the owner chose its device and format; answers land on --device
    from exotune.boxes import load_box

    return load_box(args.backbone, **device_options(args), **load_kwargs)


def device_options(args) -> dict:
    """``--device`` and ``--precision`` as options of a local box (none where a command lacks them)."""
    if vars(args).get("device") is None:
        return {}
    return {"device": args.device, "precision": args.precision}


def user_device(args):
    """``--device`` for the user's side (call it early: a GPU that is not there is refused before
    anything loads)."""
    from exotune.devices import resolve_device

    return resolve_device(vars(args).get("device"))


def on_device(args, model):
    """``model`` (the user's tensors) moved to ``--device``."""
    return model.to(user_device(args))


def served_boxes(args):
    """What ``--remote`` serves, connected once per command: a box, or a CLIP model's two towers
    (a ``BoxPair``, from ``exotune serve --kind clip``)."""
    if vars(args).get("served_boxes") is None:
        from exotune.boxes.remote import connect

        args.served_boxes = connect(args.remote)
    return args.served_boxes


def clip_pair(args, **options):
    """A CLIP model's (text, image) towers: served (``--remote``) or loaded from ``--backbone``
    (``options`` as for ``load_clip_boxes``; a served pair exposes what its owner chose)."""
    if args.remote:
        from exotune.boxes.clip import BoxPair

        boxes = served_boxes(args)
        if not isinstance(boxes, BoxPair):
            raise ConfigError(
                f"--task {args.task} needs a CLIP model's two towers; {args.remote} serves one "
                f"{boxes.spec.modality} box (the owner serves both with exotune serve --kind clip)"
            )
        return boxes
    from exotune.boxes.loading import load_clip_boxes

    return load_clip_boxes(args.backbone, **device_options(args), **options)


def open_image_box(args, name: str | None = None, **options):
    """An image box: served (``--remote``: an image box, or a served CLIP pair's image tower) or
    loaded from ``name`` (default ``--backbone``)."""
    if args.remote and name is None:
        from exotune.boxes.clip import BoxPair

        boxes = served_boxes(args)
        box = boxes.image if isinstance(boxes, BoxPair) else boxes
        if box.spec.modality != "image":
            raise ConfigError(f"--task {args.task} needs an image box; {args.remote} serves a {box.spec.modality} box")
        return box
    from exotune.boxes.loading import load_image_box

    return load_image_box(name or args.backbone, **device_options(args), **options)


def has_text_tower(args) -> bool:
    """Whether the named box comes with a CLIP text tower (class-name prototypes, zero-shot)."""
    if args.remote:
        from exotune.boxes.clip import BoxPair

        return isinstance(served_boxes(args), BoxPair)
    from exotune.boxes.loading import is_clip

    return is_clip(args.backbone)


def lga_box_options(args) -> dict:
    """Box options for training: light-gray with the chosen entry points (and entry mode) for LGA."""
    mode = getattr(args, "entry_mode", None)
    if not is_lga(args):
        if mode:
            raise ConfigError("--entry-mode sets how entry tokens are taken: give --entry-tokens or --entry-points")
        return {}
    n = args.entry_tokens or ENTRY_TOKENS
    options = {"entry_points": args.entry_points or "all", "entry_tokens_max": max(ENTRY_TOKENS_MAX, n)}
    return {**options, "entry_mode": mode} if mode and mode != "replace" else options


def refuse_entry_options_for_served(args) -> None:
    """--entry-points and --entry-mode shape a local box; a served one is its owner's."""
    for flag in ("entry_points", "entry_mode"):
        if args.remote and getattr(args, flag, None):
            raise ConfigError(
                f"--{flag.replace('_', '-')} shapes the entry points of a local box; a served box (--remote) "
                "exposes those its owner chose (see its /v1/spec)"
            )


def train_box(args):
    """The box to train against: for LGA, a local one is loaded light-gray with the chosen
    entry points; a served one exposes what its owner chose."""
    refuse_entry_options_for_served(args)
    return open_box(args, **lga_box_options(args))


def saved_options(args, key: str = "box", served: bool | None = None) -> dict:
    """Options that rebuild the ``key`` box ``--adapter`` was trained against, for a box loaded
    here; none for a served one (``served``, default ``--remote``): it exposes what its owner
    chose, under names that may hide its layers."""
    from exotune.tasks.artifacts import saved_box_options

    return {} if (args.remote if served is None else served) else saved_box_options(args.adapter, key)


def adapter_box(args):
    """The box an adapter was trained against: served (``--remote``), loaded from ``--backbone``
    with the same entry points, or, with neither, the backbone the adapter names."""
    if args.remote:
        return open_box(args)
    if not args.backbone:
        from exotune.tasks.artifacts import open_saved_box

        return open_saved_box(args.adapter)
    return open_box(args, **saved_options(args))

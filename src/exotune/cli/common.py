"""What the commands share: argument types and groups, data loading, opening a box (local or
remote), and turning arguments into the library's configs. Nothing here parses at import."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from exotune.cards import card_context, update_run_info
from exotune.errors import ConfigError, DataError

ENTRY_TOKENS = 2  # tokens per entry point when only --entry-points is given
ENTRY_TOKENS_MAX = 8  # what the CLI's light-gray box accepts per entry point (at least N)
IMAGE_TASKS = ("image-retrieval", "image-classification", "video-retrieval", "sketch-retrieval")
TASKS = ("classification", "retrieval", *IMAGE_TASKS)
TEST_FILE_TASKS = ("classification", "image-retrieval", "image-classification", "video-retrieval")  # --test-file
# the data option of each vision task: --images, --videos, --sketches
VISION_SOURCES = {
    "images": ("image-retrieval", "image-classification"),
    "videos": ("video-retrieval",),
    "sketches": ("sketch-retrieval",),
}


# -- argument types ----------------------------------------------------------------------------


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


# -- argument groups ---------------------------------------------------------------------------


def add_data_args(p: argparse.ArgumentParser, split_default: str | None = None) -> None:
    g = p.add_argument_group("data")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a known dataset: banking77, sst2 (classification); scifact (retrieval)")
    src.add_argument("--file", help="a .csv, .tsv or .jsonl file of labelled texts")
    src.add_argument(
        "--images",
        metavar="DIR",
        help="a folder of images: one sub-folder per class (--task image-classification), or the "
        "images that --captions names (--task image-retrieval)",
    )
    src.add_argument(
        "--videos",
        metavar="DIR",
        help="the videos (files or folders of frames) that --captions names (--task video-retrieval)",
    )
    src.add_argument(
        "--sketches",
        metavar="DIR",
        help="sketches: Sketchy's root (sketch/ and photo/ inside) or a folder of class sub-folders "
        "with --photos (--task sketch-retrieval)",
    )
    g.add_argument("--data-dir", help="folder holding the known datasets (default: $EXOTUNE_DATA, else ./datasets)")
    g.add_argument("--text-column", default="text", help="text column of --file (default: text)")
    g.add_argument("--label-column", default="label", help="label column of --file (default: label)")
    add_label_names_arg(g)
    if split_default:
        g.add_argument(
            "--split",
            default=split_default,
            choices=["train", "test"],
            help=f"split of --dataset (default: {split_default})",
        )


def add_split_files_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("your own validation and test files (with --file: same columns, labels by name)")
    g.add_argument("--val-file", help="validation file: selection happens on it (default: --val-fraction of --file)")
    g.add_argument(
        "--test-file",
        help="test file, scored once at the end (--eval-test); image tasks: the test "
        "captions (image, video retrieval) or test image folder (image classification)",
    )
    g.add_argument("--test", dest="test_file", help=argparse.SUPPRESS)  # the image tasks' former spelling


def add_task_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="classification", choices=TASKS, help="default: classification")


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


def add_texts_args(p: argparse.ArgumentParser):
    """``--text`` (repeatable) or ``--input-file``, one of them required; returns the group."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to label (repeatable)")
    src.add_argument("--input-file", help="a file with one text per line")
    return src


# -- data --------------------------------------------------------------------------------------


def load_data(args, split: str):
    """The labelled texts ``--dataset`` or ``--file`` names."""
    from exotune.data import load_dataset, load_text_file

    if args.dataset:
        return load_dataset(args.dataset, split, args.data_dir)
    return load_text_file(args.file, args.text_column, args.label_column, label_map=label_map(args))


def refuse_images(args) -> None:
    """``--images``, ``--videos`` or ``--sketches`` given to a task that does not read them."""
    for option, tasks in VISION_SOURCES.items():
        if getattr(args, option, None) and args.task not in tasks:
            raise ConfigError(f"--{option} is for --task {' or '.join(tasks)}, not --task {args.task}")
    if getattr(args, "token_init", "random") != "random" and args.task in IMAGE_TASKS:
        raise ConfigError("--token-init starts text tokens from words; image tasks take random tokens")


def train_val(data, args, val=None):
    """``data`` and ``val``, or ``data`` split into train and validation (``--val-fraction``);
    train sampled to ``--max-train``."""
    train = data
    if val is None:
        train, val = data.split(args.val_fraction, seed=args.seed)
    if args.max_train:
        train = train.head(args.max_train, seed=args.seed)
    return train, val


def labelled_splits(args, want_test: bool):
    """(train, validation, test) of ``--dataset`` or ``--file``: validation is ``--val-file``,
    else carved from train; test (``None`` unless ``want_test`` or ``--test-file``) is the
    dataset's test split or ``--test-file``. The files share the training file's label set."""
    from exotune.data import load_dataset, load_text_files

    if args.dataset:
        if args.val_file or args.test_file:
            raise ConfigError("--val-file and --test-file go with --file (a known dataset has its own splits)")
        data, val = load_dataset(args.dataset, "train", args.data_dir).require_classes(args.dataset), None
        test = load_dataset(args.dataset, "test", args.data_dir) if want_test else None
    else:
        data, val, test = load_text_files(
            args.file, args.val_file, args.test_file, args.text_column, args.label_column, label_map=label_map(args)
        )
        data.require_classes(args.file)  # before any model loads
        if want_test and test is None:
            raise ConfigError("--eval-test with --file needs --test-file (the file to score once at the end)")
    return (*train_val(data, args, val), test)


def refuse_split_files(args, task: str) -> None:
    """``--val-file``/``--test-file`` given to a task that does not read them."""
    if args.val_file and task != "classification":
        raise ConfigError(f"--val-file is for --task classification, not --task {task}")
    if args.test_file and task not in TEST_FILE_TASKS:
        raise ConfigError(
            f"--test-file is for --task {', '.join(TEST_FILE_TASKS)}, not --task {task} "
            + ("(--eval-test ranks the --unseen-classes)" if task == "sketch-retrieval" else "")
        )


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


TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def read_texts(args) -> list[str]:
    """The texts of ``--text`` (repeated) or ``--input-file``: one per line, or the
    ``--text-column`` of a .csv, .tsv or .jsonl file; none may be empty."""
    from exotune.data.text import read_column, read_text

    if getattr(args, "text", None):
        texts = args.text
    elif Path(args.input_file).suffix.lower() in TABLE_SUFFIXES:
        texts = read_column(Path(args.input_file), getattr(args, "text_column", "text"))
    else:
        texts = [t for t in read_text(Path(args.input_file)).splitlines() if t.strip()]
    if not texts or any(not t.strip() for t in texts):
        raise DataError(f"{getattr(args, 'command', None) or 'predict'} needs non-empty texts")
    return texts


def add_label_names_arg(g) -> None:
    g.add_argument(
        "--label-names",
        default=None,
        metavar="NAMES|FILE",
        help="for files whose labels are codes: the class names in code order, comma-separated "
        "(code 0 is the first), or a file: a JSON object {code: name}, a JSON list, or one name "
        "a line",
    )


def label_map(args) -> dict[str, str] | None:
    """``--label-names`` as {code: name}, or None when it is not given."""
    from exotune.data.text import read_label_map

    value = getattr(args, "label_names", None)
    return None if value is None else read_label_map(value)


# -- boxes -------------------------------------------------------------------------------------


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


def is_lga(args) -> bool:
    return args.entry_points is not None or args.entry_tokens is not None


def lga_box_options(args) -> dict:
    """Box options for training: light-gray with the chosen entry points for LGA."""
    if not is_lga(args):
        return {}
    n = args.entry_tokens or ENTRY_TOKENS
    return {"entry_points": args.entry_points or "all", "entry_tokens_max": max(ENTRY_TOKENS_MAX, n)}


def train_box(args):
    """The box to train against: for LGA, a local one is loaded light-gray with the chosen
    entry points; a served one exposes what its owner chose."""
    if args.remote and args.entry_points:
        raise ConfigError(
            "--entry-points chooses the entry points of a local box; a served box (--remote) "
            "exposes those its owner chose (see its /v1/spec)"
        )
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
    from exotune.tasks.artifacts import saved_box_options

    if args.remote:
        return open_box(args)
    if not args.backbone:
        from exotune.tasks.artifacts import open_saved_box

        return open_saved_box(args.adapter)
    return open_box(args, **saved_box_options(args.adapter))


# -- configs -----------------------------------------------------------------------------------

# Per registered adapter, its config's fields from the CLI's options; an adapter not listed
# gets its config's defaults (its own config class all the same).
ADAPTER_OPTIONS: dict[tuple[str, str], Callable[[argparse.Namespace], dict]] = {
    ("input", "text-shift"): lambda a: {
        "shift": not a.no_shift,
        "extra_tokens": a.extra_tokens,
        "reparam": a.token_reparam,
    },
    ("input", "token-lowrank"): lambda a: {
        "rank": a.lowrank_rank,
        "activation": a.lowrank_activation,
        "shift": not a.no_shift,
        "extra_tokens": a.extra_tokens,
        "reparam": a.token_reparam,
    },
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
    return DGAConfig.variant(args.variant, inp, out, entry_tokens_config(args), modality)


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
    )


# -- the end of every train --------------------------------------------------------------------


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

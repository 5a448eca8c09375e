"""The commands' data arguments and their loading: labelled texts (``--dataset``, ``--file``
and its split files), texts to label, the vision tasks' sources. Nothing here parses at import."""

from __future__ import annotations

import argparse
from pathlib import Path

from exotune.errors import ConfigError, DataError

IMAGE_TASKS = ("image-retrieval", "image-classification", "video-retrieval", "sketch-retrieval")
TASKS = ("classification", "retrieval", *IMAGE_TASKS)
TEST_FILE_TASKS = ("classification", "image-retrieval", "image-classification", "video-retrieval")  # --test-file
# the data option of each vision task: --images, --videos, --sketches
VISION_SOURCES = {
    "images": ("image-retrieval", "image-classification"),
    "videos": ("video-retrieval",),
    "sketches": ("sketch-retrieval",),
}


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


def add_texts_args(p: argparse.ArgumentParser):
    """``--text`` (repeatable) or ``--input-file``, one of them required; returns the group."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to label (repeatable)")
    src.add_argument("--input-file", help="a file with one text per line")
    return src


def load_data(args, split: str):
    """The labelled texts ``--dataset`` or ``--file`` names."""
    from exotune.data import load_dataset, load_text_file

    if args.dataset:
        return load_dataset(args.dataset, split, args.data_dir)
    return load_text_file(args.file, args.text_column, args.label_column, label_map=label_map(args))


def refuse_images(args) -> None:
    """``--images``, ``--videos``, ``--sketches`` and the other task-bound options given to a
    task that does not read them."""
    for option, tasks in VISION_SOURCES.items():
        if getattr(args, option, None) and args.task not in tasks:
            raise ConfigError(f"--{option} is for --task {' or '.join(tasks)}, not --task {args.task}")
    if getattr(args, "token_init", "random") != "random" and args.task in IMAGE_TASKS:
        raise ConfigError("--token-init starts text tokens from words; image tasks take random tokens")
    if getattr(args, "input_dropout", 0.0) and args.task in ("image-classification", "sketch-retrieval"):
        raise ConfigError(f"--input-dropout acts on a text tower's token embeddings; --task {args.task} trains none")
    classifiers = ("classification", "image-classification")
    if getattr(args, "prototype_start", "names") != "names" and args.task not in classifiers:
        raise ConfigError(f"--prototype-start starts a classifier's head; --task {args.task} has none")


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

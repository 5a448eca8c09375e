"""``exotune eval``: an adapter (or the bare box) on a labelled or retrieval dataset."""

from __future__ import annotations

from exotune.cli import classification, images, retrieval, vision
from exotune.cli.boxes import add_box_args, user_device
from exotune.cli.data import add_data_args, add_task_arg, refuse_images
from exotune.errors import ConfigError

EVALUATORS = {
    "classification": classification.evaluate,
    "retrieval": retrieval.evaluate,
    "image-retrieval": images.evaluate,
    "image-classification": images.evaluate,
    "video-retrieval": vision.evaluate,
    "sketch-retrieval": vision.evaluate,
}  # (args) -> int


HELP = "evaluate an adapter (or zero-shot) on a labelled or retrieval dataset"


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help=HELP)
    add_task_arg(p)
    add_data_args(p, split_default="test")
    add_box_args(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--adapter", help="adapter folder written by train")
    who.add_argument(
        "--zero-shot",
        action="store_true",
        help="the bare box: class-name prototypes, or plain embeddings for retrieval",
    )
    p.add_argument(
        "--label-template",
        default=None,
        help="with --zero-shot: text a class name is encoded as (default: '{}'; images: 'a photo of a {}.')",
    )
    images.add_image_args(p)
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.add_argument(
        "--report-dir",
        default=None,
        metavar="DIR",
        help="classification: write metrics.json, a per-class report (per_class.csv) and the confusion "
        "matrix (confusion_matrix.csv and .png) into DIR",
    )


def run(args) -> int:
    refuse_images(args)
    if args.report_dir and args.task != "classification":
        raise ConfigError(f"--report-dir writes a classification report, not one for --task {args.task}")
    user_device(args)  # refused before anything loads
    return EVALUATORS[args.task](args)

"""``exotune predict``: label texts or images with a trained adapter; for a retrieval adapter,
the nearest captions of images or videos, or the nearest photos of sketches."""

from __future__ import annotations

import sys
from pathlib import Path

from exotune.cli.boxes import adapter_box, add_box_args, on_device, open_image_box, saved_options, user_device
from exotune.cli.data import add_texts_args, read_texts
from exotune.cli.images import pair_retriever
from exotune.errors import ConfigError, DataError

TASKS = ("classification", "image-classification", "image-retrieval", "video-retrieval", "sketch-retrieval")

HELP = (
    "label texts or images with a trained adapter, or find the nearest captions (images, videos) or photos (sketches)"
)


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help=HELP)
    p.add_argument("--task", default="classification", choices=TASKS, help="default: classification (texts)")
    add_box_args(p)
    p.add_argument("--adapter", required=True, help="adapter folder written by train")
    src = add_texts_args(p)
    src.add_argument(
        "--input",
        action="append",
        metavar="PATH",
        help="an image, video or sketch file, or a folder of them (repeatable; image and video tasks)",
    )
    p.add_argument(
        "--candidates", metavar="FILE", help="image-, video-retrieval: the captions to choose from, one per line"
    )
    p.add_argument("--photos", metavar="DIR", help="sketch-retrieval: the photos to choose from (searched recursively)")
    p.add_argument("--photo-backbone", default=None, help="sketch-retrieval: the photo box, if not --backbone")
    p.add_argument("--top-k", type=int, default=1, help="labels, captions or photos to show per input")
    p.add_argument("--text-column", default="text", help="text column of a .csv, .tsv or .jsonl --input-file")
    p.add_argument(
        "--output",
        default=None,
        metavar="FILE",
        help="texts: write label, probability and the top-k labels as .csv or .jsonl (default: print)",
    )


def run(args) -> int:
    user_device(args)  # refused before anything loads
    if args.task == "classification":
        return _texts(args)
    if args.output:
        raise ConfigError("--output writes the labels of texts (--task classification); image tasks print")
    if not args.input:
        raise ConfigError(f"--task {args.task} predicts for --input PATH (a file or a folder), not texts")
    if not args.backbone and not args.remote:
        raise ConfigError(
            f"--task {args.task} needs --backbone (the checkpoint the adapter was trained against) or --remote"
        )
    inputs = _inputs(args.input, video=args.task == "video-retrieval")
    if args.task == "image-classification":
        return _classify(args, inputs)
    scores, indices, names = _nearest(args, inputs)
    for item, row_scores, row in zip(inputs, scores.tolist(), indices.tolist(), strict=True):
        print("\t".join(f"{names[i]} ({v:.3f})" for v, i in zip(row_scores, row, strict=True)) + f"\t{item}")
    return 0


def _texts(args) -> int:
    from exotune.cli.outputs import check_predictions_output, prediction_rows, write_predictions
    from exotune.tasks.classification import TextClassifier

    if args.input:
        raise ConfigError("--input is for image tasks (--task image-classification, ...); texts: --text, --input-file")
    if args.output:
        check_predictions_output(args.output)  # before any model loads
    texts = read_texts(args)
    model = on_device(args, TextClassifier.from_pretrained(args.adapter, adapter_box(args)))
    probs = model.predict_proba(texts)
    if args.output:
        out = write_predictions(args.output, prediction_rows(texts, model.label_names, probs, args.top_k))
        print(f"{len(texts)} predictions written to {out}", file=sys.stderr)
        return 0
    _print_labels(model, texts, probs, args.top_k)
    return 0


def _print_labels(model, inputs, probs, top_k: int) -> None:
    k = max(1, min(top_k, len(model.label_names)))
    for item, p in zip(inputs, probs, strict=True):
        top = p.topk(k)
        labels = ", ".join(
            f"{model.label_names[i]} ({v:.3f})" for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        )
        print(f"{labels}\t{item}")


def _inputs(paths: list[str], video: bool = False) -> list[str]:
    """Files as given; a folder: its image files (its video files and frame folders for videos;
    a folder of frames alone is one video)."""
    from exotune.data.images import IMAGE_EXTENSIONS
    from exotune.data.videos import VIDEO_EXTENSIONS, frame_files

    out = []
    for given in paths:
        path = Path(given)
        if path.is_file():
            out.append(str(path))
        elif not path.is_dir():
            raise DataError(f"{path}: no such file or folder")
        elif video:
            inside = sorted(
                p for p in path.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS or (p.is_dir() and frame_files(p))
            )
            out += [str(p) for p in inside] or [str(path)]
        else:
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)})")
            out += [str(p) for p in found]
    return out


def _classify(args, images: list[str]) -> int:
    from exotune.tasks.image_classification import ImageClassifier

    model = on_device(args, ImageClassifier.from_pretrained(args.adapter, open_image_box(args, **saved_options(args))))
    _print_labels(model, images, model.predict_proba(images), args.top_k)
    return 0


def _nearest(args, inputs: list[str]):
    """Scores and indices (Q, k) of each input's nearest candidates, and the candidates' names."""
    from exotune.data.text import read_text

    if args.task == "sketch-retrieval":
        from exotune.tasks.sketch import SketchPhotoRetriever

        if not args.photos:
            raise ConfigError("--task sketch-retrieval needs --photos DIR: the photos to choose from")
        photos = _inputs([args.photos])
        sketch_box = open_image_box(args, **saved_options(args))
        photo_box = (
            open_image_box(args, args.photo_backbone, **saved_options(args, "photo_box", False))
            if args.photo_backbone
            else sketch_box
        )
        model = on_device(args, SketchPhotoRetriever.from_pretrained(args.adapter, sketch_box, photo_box))
        scores, indices = model.search(inputs, photos, max(1, args.top_k))
        return scores, indices, photos
    if not args.candidates:
        raise ConfigError(f"--task {args.task} needs --candidates FILE: the captions to choose from, one per line")
    captions = [line.strip() for line in read_text(Path(args.candidates)).splitlines() if line.strip()]
    if not captions:
        raise DataError(f"{args.candidates}: no captions")
    if args.task == "video-retrieval":
        from exotune.tasks.video_text import VideoTextRetriever as Retriever
    else:
        from exotune.tasks.image_text import ImageTextRetriever as Retriever
    model = on_device(args, pair_retriever(args, Retriever))
    scores = model.encode_images(inputs) @ model.encode_texts(captions).T  # (Q, C)
    return (*scores.topk(max(1, min(args.top_k, len(captions))), dim=1), captions)

"""``exotune train|eval --task image-retrieval|image-classification``: the command bodies.

Image-text retrieval trains both towers of a CLIP pair on captioned images (``--images DIR
--captions FILE``); image classification trains the image tower on a folder of class
sub-folders (``--images DIR``), with class-name prototypes from the CLIP text tower.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from exotune.cli.boxes import (
    clip_pair,
    has_text_tower,
    lga_box_options,
    on_device,
    open_image_box,
    refuse_entry_options_for_served,
    saved_options,
)
from exotune.cli.common import fit_and_report, positive_int, print_metrics, seed_number
from exotune.cli.configs import dga_config
from exotune.cli.data import train_val
from exotune.errors import ConfigError


def add_image_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "images, videos, sketches (--task image-retrieval, image-classification, video-retrieval, sketch-retrieval)"
    )
    g.add_argument(
        "--captions",
        metavar="FILE",
        help="captions of --images: a .csv/.tsv/.jsonl (image, caption columns), a COCO caption file "
        "or a Karpathy-split .json (COCO, Flickr30K); of --videos: a .csv/.tsv/.jsonl (video, "
        "caption columns), a VATEX .json or MSR-VTT's MSRVTT_data.json",
    )
    g.add_argument(
        "--caption-split",
        default=None,
        help="the split of a Karpathy-split file (train, val, test) or of MSR-VTT (train: 9k, test: 1k-A)",
    )
    g.add_argument("--image-column", default="image", help="image path column of --captions (default: image)")
    g.add_argument("--video-column", default="video", help="video path column of --captions (default: video)")
    g.add_argument("--caption-column", default="caption", help="caption column of --captions (default: caption)")
    g.add_argument(
        "--skip-bad-images",
        "--skip-bad-videos",
        dest="skip_bad_images",
        action="store_true",
        help="leave out missing or unreadable images or videos (counted) instead of stopping at the first",
    )
    g.add_argument("--frames", type=positive_int, default=8, help="video-retrieval: frames sampled per video")
    g.add_argument(
        "--temporal-pooling",
        default="mean",
        choices=("mean", "attention"),
        help="video-retrieval: frames pooled by their mean, or by learnable weights (start: the mean)",
    )
    g.add_argument("--photos", metavar="DIR", help="sketch-retrieval: photos, one sub-folder per class (the gallery)")
    g.add_argument(
        "--photo-backbone",
        default=None,
        help="sketch-retrieval: a second image box for the photos (default: the --backbone)",
    )
    g.add_argument(
        "--unseen-classes",
        type=float,
        default=None,
        metavar="FRACTION",
        help="sketch-retrieval: hold out this share of the classes; --eval-test evaluates on them, and "
        "so does eval given the same share and --class-seed",
    )
    g.add_argument("--class-seed", type=seed_number, default=0, help="sketch-retrieval: which classes are held out")
    g.add_argument(
        "--loss",
        choices=("infonce", "sigmoid"),
        default=None,
        help="image-retrieval: the loss (default: the model's own; sigmoid for SigLIP, with its logit "
        "scale and bias held fixed, InfoNCE for CLIP and BLIP); --loss sigmoid on another pair "
        "learns its own scale and bias (unless --fixed-temperature)",
    )


NEEDS = {
    "image-retrieval": "--images DIR and --captions FILE",
    "image-classification": "--images DIR (one sub-folder per class)",
    "video-retrieval": "--videos DIR and --captions FILE",
    "sketch-retrieval": "--sketches DIR (Sketchy's root, or class sub-folders with --photos DIR)",
}


def check(args) -> None:
    """The vision task's arguments are complete."""
    refuse_entry_options_for_served(args)
    source = {"video-retrieval": args.videos, "sketch-retrieval": args.sketches}.get(args.task, args.images)
    if not source:
        raise ConfigError(f"--task {args.task} needs {NEEDS[args.task]}")
    if not args.backbone and not args.remote:
        raise ConfigError(
            f"--task {args.task} needs --backbone: a CLIP, SigLIP or BLIP checkpoint "
            "(e.g. openai/clip-vit-base-patch16, "
            "a local folder, or open_clip:ViT-B-32@laion2b_s34b_b79k)"
            + (", or a ViT / DINOv2 one with --head linear" if args.task == "image-classification" else "")
            + (", or any image box (ViT, DINOv2)" if args.task == "sketch-retrieval" else "")
        )
    if args.task in ("image-retrieval", "video-retrieval") and not args.captions:
        raise ConfigError(f"--task {args.task} needs --captions FILE (the captions of the {args.task[:5]}s)")


def _load_data(args, test: bool = False):
    """The task's data (``test``: the test data for ``--eval-test``, or None when there is none)."""
    from exotune.data import load_image_captions, load_image_folder
    from exotune.data.images import report_skipped

    source = caption_source(args, test)
    if source is None:
        return None
    captions, split = source
    if args.task == "image-retrieval":
        data = load_image_captions(
            captions,
            args.images,
            image_column=args.image_column,
            caption_column=args.caption_column,
            split=split,
            skip_bad=args.skip_bad_images,
        )
    else:
        data = load_image_folder(captions if test else args.images, skip_bad=args.skip_bad_images)
    report_skipped(data)
    return data


def caption_source(args, test: bool = False) -> tuple[str, str | None] | None:
    """(captions, split) of the training data, or with ``test`` of the test data: ``--test-file``, else
    the test split of a split file (``--caption-split``); None when there is none."""
    if not test:
        return args.captions, args.caption_split
    if args.test_file:
        return args.test_file, None
    return (args.captions, "test") if args.caption_split is not None else None


def test_metrics(args, model, test_data):
    """The ``--eval-test`` callback of ``fit_and_report``, or None (with a warning) without test data."""
    if not args.eval_test:
        return None
    if test_data is None:
        print(
            f"warning: --eval-test for --task {args.task} needs --test-file PATH (or a split file's --caption-split); "
            "skipped",
            file=sys.stderr,
        )
        return None
    return lambda: model.evaluate(test_data, progress=not args.quiet)


def _label_template(args) -> str:
    from exotune.tasks.image_classification import PROMPT

    return args.label_template or PROMPT


def train(args, text_dga, train_cfg) -> int:
    from exotune.tasks.classification import ClassificationConfig
    from exotune.tasks.image_classification import ImageClassifier
    from exotune.tasks.image_text import ImageTextConfig, ImageTextRetriever
    from exotune.train import seed_everything

    check(args)
    image_dga = dga_config(args, "image")
    lga = lga_box_options(args)
    data = _load_data(args)
    train_data, val = train_val(data, args)
    seed_everything(args.seed)  # the adapters' random initial tokens: --seed makes a run repeatable
    if args.task == "image-retrieval":
        text_box, image_box = clip_pair(args, **lga)
        cfg = ImageTextConfig(**temperature_options(args, ImageTextConfig), loss=args.loss or "auto")
        model = ImageTextRetriever(text_box, image_box, text_dga, image_dga, cfg)
        train_cfg = replace(train_cfg, select_metric="mean_recall")
        what = f"text {model.text_dga.description}, image {model.image_dga.description}"
    else:
        cls_cfg = ClassificationConfig(
            head=args.head, label_template=_label_template(args), prototype_start=args.prototype_start
        )
        clip = has_text_tower(args)
        if args.head == "prototype" and not clip:
            raise ConfigError(
                f"--head prototype encodes class names with a CLIP text tower; {args.backbone or args.remote!r} "
                "has none: use a CLIP backbone or --head linear"
            )
        if clip:
            text_box, image_box = clip_pair(args, image_options=lga)
        else:
            text_box, image_box = None, open_image_box(args, **lga)
        model = ImageClassifier(image_box, data.label_names, image_dga, cls_cfg, text_box=text_box)
        model.start_head(train_data, progress=not args.quiet)  # --prototype-start class-means
        what = image_dga.description
    test = test_metrics(args, model, _load_data(args, test=True) if args.eval_test else None)
    return fit_vision(args, model, what, train_data, val, train_cfg, test)


def temperature_options(args, config_cls) -> dict:
    """A contrastive task config's temperature: ``--temperature`` (default: the config's),
    learned unless ``--fixed-temperature``."""
    temperature = args.temperature if args.temperature is not None else config_cls.temperature
    return {"temperature": temperature, "learn_temperature": not args.fixed_temperature}


def fit_vision(args, model, what: str, train_data, val, train_cfg, test) -> int:
    """Say what trains on how much, then train (``fit_and_report``; ``test``: ``test_metrics``'s)."""
    print(
        f"training {what} on {len(train_data)} examples, validating on {len(val)}; "
        f"{model.num_trainable():,} trainable parameters",
        file=sys.stderr,
    )
    return fit_and_report(args, model, train_data, val, train_cfg, test)


def pair_retriever(args, retriever, config=None):
    """An image- or video-text ``retriever`` (the class) over ``clip_pair``: the adapter
    ``--adapter`` trained, or with ``--zero-shot`` the bare towers (``config``: the task's)."""
    if getattr(args, "zero_shot", False):
        from exotune.graybox import DGAConfig

        none = DGAConfig.variant("none")
        return retriever(*clip_pair(args), none, none, *([config] if config is not None else []))
    pair = clip_pair(args, image_options=saved_options(args), text_options=saved_options(args, "text_box"))
    return retriever.from_pretrained(args.adapter, *pair)


def evaluate(args) -> int:
    from exotune.tasks.classification import ClassificationConfig
    from exotune.tasks.image_classification import ImageClassifier
    from exotune.tasks.image_text import ImageTextRetriever

    check(args)
    data = _load_data(args)
    if args.task == "image-retrieval":
        model = pair_retriever(args, ImageTextRetriever)
        metrics = on_device(args, model).evaluate(data, progress=True)
        summary = (
            f"{data.name}: text-to-image R@1 {metrics['t2i_recall@1']:.4f}, R@5 {metrics['t2i_recall@5']:.4f}, "
            f"R@10 {metrics['t2i_recall@10']:.4f}; image-to-text R@1 {metrics['i2t_recall@1']:.4f}, "
            f"R@5 {metrics['i2t_recall@5']:.4f}, R@10 {metrics['i2t_recall@10']:.4f} "
            f"({len(data)} captions, {len(data.images)} images)"
        )
    else:
        if args.zero_shot:
            if not has_text_tower(args):
                raise ConfigError(
                    f"--zero-shot classifies images by class names; {args.backbone or args.remote!r} has "
                    "no text tower (use a CLIP backbone)"
                )
            text_box, image_box = clip_pair(args)
            model = ImageClassifier(
                image_box,
                data.label_names,
                None,
                ClassificationConfig(label_template=_label_template(args)),
                text_box=text_box,
            )
        else:
            model = ImageClassifier.from_pretrained(args.adapter, open_image_box(args, **saved_options(args)))
        metrics = on_device(args, model).evaluate(data, progress=True)
        summary = (
            f"{data.name}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} ({len(data)} images)"
        )
    print_metrics(args, metrics, summary)
    return 0

"""``exotune train|eval --task image-retrieval|image-classification``: the command bodies.

Image-text retrieval trains both towers of a CLIP pair on captioned images (``--images DIR
--captions FILE``); image classification trains the image tower on a folder of class
sub-folders (``--images DIR``), with class-name prototypes from the CLIP text tower.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from exotune.cli.common import dga_config, fit_and_report, lga_box_options, print_metrics, train_val
from exotune.errors import ConfigError


def add_image_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images (--task image-retrieval, image-classification)")
    g.add_argument("--captions", metavar="FILE",
                   help="captions of --images: a .csv/.tsv/.jsonl (image, caption columns), a COCO caption file "
                        "or a Karpathy-split .json (COCO, Flickr30K)")
    g.add_argument("--caption-split", default=None, help="the split of a Karpathy-split file: train, val, test")
    g.add_argument("--image-column", default="image", help="image path column of --captions (default: image)")
    g.add_argument("--caption-column", default="caption", help="caption column of --captions (default: caption)")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="leave out missing or unreadable images (counted) instead of stopping at the first")


def _check(args) -> None:
    if args.remote:
        raise ConfigError(f"--task {args.task} trains against a local image box; image boxes cannot be served yet "
                          "(--remote is for text tasks)")
    if not args.images:
        raise ConfigError(f"--task {args.task} needs --images DIR" +
                          (" and --captions FILE" if args.task == "image-retrieval" else " (one sub-folder per class)"))
    if not args.backbone:
        raise ConfigError(f"--task {args.task} needs --backbone: a CLIP checkpoint (e.g. openai/clip-vit-base-patch16, "
                          "a local folder, or open_clip:ViT-B-32@laion2b_s34b_b79k)"
                          + (", or a ViT / DINOv2 one with --head linear" if args.task == "image-classification" else ""))
    if args.task == "image-retrieval" and not args.captions:
        raise ConfigError("--task image-retrieval needs --captions FILE (the captions of the images in --images)")


def _load_data(args):
    from exotune.data import load_image_captions, load_image_folder

    if args.task == "image-retrieval":
        data = load_image_captions(args.captions, args.images, image_column=args.image_column,
                                   caption_column=args.caption_column, split=args.caption_split,
                                   skip_bad=args.skip_bad_images)
    else:
        data = load_image_folder(args.images, skip_bad=args.skip_bad_images)
    if data.skipped:
        print(f"skipped {data.skipped} missing or unreadable images", file=sys.stderr)
    return data


def _label_template(args) -> str:
    from exotune.tasks.image_classification import PROMPT

    return args.label_template or PROMPT


def train(args, text_dga, train_cfg) -> int:
    from exotune.boxes.loading import is_clip, load_clip_boxes, load_image_box
    from exotune.tasks.classification import ClassificationConfig
    from exotune.tasks.image_classification import ImageClassifier
    from exotune.tasks.image_text import ImageTextConfig, ImageTextRetriever
    from exotune.train import seed_everything

    _check(args)
    image_dga = dga_config(args, "image")
    lga = lga_box_options(args)
    data = _load_data(args)
    train_data, val = train_val(data, args)
    seed_everything(args.seed)  # the adapters' random initial tokens: --seed makes a run repeatable
    if args.task == "image-retrieval":
        text_box, image_box = load_clip_boxes(args.backbone, **lga)
        temperature = args.temperature if args.temperature is not None else ImageTextConfig.temperature
        cfg = ImageTextConfig(temperature=temperature, learn_temperature=not args.fixed_temperature)
        model = ImageTextRetriever(text_box, image_box, text_dga, image_dga, cfg)
        train_cfg = replace(train_cfg, select_metric="mean_recall")
        what = f"text {model.text_dga.description}, image {model.image_dga.description}"
    else:
        cls_cfg = ClassificationConfig(head=args.head, label_template=_label_template(args))
        if args.head == "prototype" and not is_clip(args.backbone):
            raise ConfigError(f"--head prototype encodes class names with a CLIP text tower; {args.backbone!r} has "
                              "none: use a CLIP backbone or --head linear")
        if is_clip(args.backbone):
            text_box, image_box = load_clip_boxes(args.backbone, image_options=lga)
        else:
            text_box, image_box = None, load_image_box(args.backbone, **lga)
        model = ImageClassifier(image_box, data.label_names, image_dga, cls_cfg, text_box=text_box)
        what = image_dga.description
    if args.eval_test:
        print("warning: --eval-test needs --dataset; evaluate an image test set with exotune eval; skipped",
              file=sys.stderr)
    print(f"training {what} on {len(train_data)} examples, validating on {len(val)}; "
          f"{model.num_trainable():,} trainable parameters", file=sys.stderr)
    return fit_and_report(args, model, train_data, val, train_cfg)


def evaluate(args) -> int:
    from exotune.boxes.loading import is_clip, load_clip_boxes, load_image_box
    from exotune.graybox import DGAConfig
    from exotune.tasks.classification import ClassificationConfig, saved_box_options
    from exotune.tasks.image_classification import ImageClassifier
    from exotune.tasks.image_text import ImageTextRetriever

    _check(args)
    data = _load_data(args)
    if args.task == "image-retrieval":
        if args.zero_shot:
            text_box, image_box = load_clip_boxes(args.backbone)
            model = ImageTextRetriever(text_box, image_box, DGAConfig.variant("none"), DGAConfig.variant("none"))
        else:
            text_box, image_box = load_clip_boxes(args.backbone, image_options=saved_box_options(args.adapter),
                                                  text_options=saved_box_options(args.adapter, "text_box"))
            model = ImageTextRetriever.from_pretrained(args.adapter, text_box, image_box)
        metrics = model.evaluate(data, progress=True)
        summary = (f"{data.name}: text-to-image R@1 {metrics['t2i_recall@1']:.4f}, R@5 {metrics['t2i_recall@5']:.4f}, "
                   f"R@10 {metrics['t2i_recall@10']:.4f}; image-to-text R@1 {metrics['i2t_recall@1']:.4f}, "
                   f"R@5 {metrics['i2t_recall@5']:.4f}, R@10 {metrics['i2t_recall@10']:.4f} "
                   f"({len(data)} captions, {len(data.images)} images)")
    else:
        if args.zero_shot:
            if not is_clip(args.backbone):
                raise ConfigError(f"--zero-shot classifies images by class names; {args.backbone!r} has no text tower "
                                  "(use a CLIP backbone)")
            text_box, image_box = load_clip_boxes(args.backbone)
            model = ImageClassifier(image_box, data.label_names, None,
                                    ClassificationConfig(label_template=_label_template(args)), text_box=text_box)
        else:
            model = ImageClassifier.from_pretrained(args.adapter,
                                                    load_image_box(args.backbone, **saved_box_options(args.adapter)))
        metrics = model.evaluate(data, progress=True)
        summary = (f"{data.name}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
                   f"({len(data)} images)")
    print_metrics(args, metrics, summary)
    return 0

"""``exotune train|eval --task video-retrieval|sketch-retrieval``: the command bodies.

Text-video retrieval trains both towers of a CLIP pair on captioned videos (``--videos DIR
--captions FILE``); sketch-to-photo retrieval trains two image towers over one image box (or
``--photo-backbone``) on Sketchy's layout or two class folders (``--sketches DIR [--photos DIR]``).
"""

from __future__ import annotations

from dataclasses import replace

from exotune.cli.boxes import clip_pair, lga_box_options, on_device, open_image_box, saved_options
from exotune.cli.common import print_metrics
from exotune.cli.configs import dga_config
from exotune.cli.data import train_val
from exotune.cli.images import (
    caption_source,
    check,
    fit_vision,
    pair_retriever,
    temperature_options,
    test_metrics,
)


def load_videos(args, test: bool = False):
    """The captioned videos (``test``: those of ``--test-file`` or the test split, None without)."""
    from exotune.data.images import report_skipped
    from exotune.data.videos import load_video_captions

    source = caption_source(args, test)
    if source is None:
        return None
    captions, split = source
    data = load_video_captions(
        captions,
        args.videos,
        video_column=args.video_column,
        caption_column=args.caption_column,
        split=split,
        skip_bad=args.skip_bad_images,
    )
    report_skipped(data, "videos")
    return data


def load_sketches(args):
    """(all, seen, unseen): the sketches and photos, and with ``--unseen-classes`` the class split
    (else seen is all and unseen None)."""
    from exotune.data.images import report_skipped
    from exotune.data.sketches import load_sketch_photos, load_sketchy

    if args.photos:
        data = load_sketch_photos(args.sketches, args.photos, skip_bad=args.skip_bad_images)
    else:
        data = load_sketchy(args.sketches, skip_bad=args.skip_bad_images)
    report_skipped(data)
    if args.unseen_classes is None:
        return data, data, None
    seen, unseen = data.class_split(args.unseen_classes, seed=args.class_seed)
    return data, seen, unseen


def sketch_boxes(args, **options):
    """The sketch box (local or served) and the photo box (the same one without ``--photo-backbone``)."""
    sketch_box = open_image_box(args, **options.get("sketch", {}))
    if not args.photo_backbone:
        return sketch_box, sketch_box
    return sketch_box, open_image_box(args, args.photo_backbone, **options.get("photo", {}))


def train(args, text_dga, train_cfg) -> int:
    from exotune.tasks.sketch import SketchConfig, SketchPhotoRetriever
    from exotune.tasks.video_text import VideoTextConfig, VideoTextRetriever
    from exotune.train import seed_everything

    check(args)
    image_dga = dga_config(args, "image")
    lga = lga_box_options(args)
    if args.task == "video-retrieval":
        data, test_data = load_videos(args), load_videos(args, test=True) if args.eval_test else None
    else:
        _, data, test_data = load_sketches(args)
    train_data, val = train_val(data, args)
    seed_everything(args.seed)  # the adapters' random initial tokens: --seed makes a run repeatable
    if args.task == "video-retrieval":
        text_box, image_box = clip_pair(args, **lga)
        cfg = VideoTextConfig(
            **temperature_options(args, VideoTextConfig), frames=args.frames, temporal_pooling=args.temporal_pooling
        )
        model = VideoTextRetriever(text_box, image_box, text_dga, image_dga, cfg)
        train_cfg = replace(train_cfg, select_metric="mean_recall")
        what = f"text {model.text_dga.description}, video {model.image_dga.description}, {cfg.frames} frames"
    else:
        model = SketchPhotoRetriever(
            *sketch_boxes(args, sketch=lga, photo=lga),
            image_dga,
            image_dga,
            SketchConfig(**temperature_options(args, SketchConfig)),
        )
        train_cfg = replace(train_cfg, select_metric="map@all")
        what = f"sketch and photo towers, each {image_dga.description}"
    return fit_vision(args, model, what, train_data, val, train_cfg, test_metrics(args, model, test_data))


def evaluate(args) -> int:
    from exotune.graybox import DGAConfig
    from exotune.tasks.sketch import SketchPhotoRetriever
    from exotune.tasks.video_text import VideoTextConfig, VideoTextRetriever

    check(args)
    none = DGAConfig.variant("none")
    if args.task == "video-retrieval":
        data = load_videos(args)
        model = pair_retriever(args, VideoTextRetriever, VideoTextConfig(frames=args.frames))
        metrics = on_device(args, model).evaluate(data, progress=True)
        summary = (
            f"{data.name}: text-to-video R@1 {metrics['t2v_recall@1']:.4f}, R@5 {metrics['t2v_recall@5']:.4f}, "
            f"R@10 {metrics['t2v_recall@10']:.4f}, MdR {metrics['t2v_median_rank']:g}, MnR "
            f"{metrics['t2v_mean_rank']:.1f}; video-to-text R@1 {metrics['v2t_recall@1']:.4f}, MdR "
            f"{metrics['v2t_median_rank']:g} ({len(data)} captions, {len(data.videos)} videos)"
        )
    else:
        full, _, unseen = load_sketches(args)
        data = unseen if unseen is not None else full
        if args.zero_shot:
            model = SketchPhotoRetriever(*sketch_boxes(args), none, none)
        else:
            boxes = sketch_boxes(
                args,
                sketch=saved_options(args),
                photo=saved_options(args, "photo_box", args.remote and not args.photo_backbone),
            )
            model = SketchPhotoRetriever.from_pretrained(args.adapter, *boxes)
        metrics = on_device(args, model).evaluate(data, progress=True)
        summary = (
            f"{data.name}: mAP@all {metrics['map@all']:.4f}, P@100 {metrics['precision@100']:.4f}, "
            f"acc@1 {metrics['acc@1']:.4f} ({len(data)} sketches, {len(data.photos)} photos)"
        )
    print_metrics(args, metrics, summary)
    return 0

"""``exotune bench SUITE``: a comparison suite; the arguments become ``BenchOptions``."""

from __future__ import annotations

import argparse
from dataclasses import fields

HELP = "run a comparison suite and write benchmarks/results/"


def add_parser(sub) -> None:
    from exotune.bench import SUITES

    p = sub.add_parser("bench", help=HELP)
    p.add_argument("suite", choices=sorted(SUITES))
    add_bench_args(p)


def add_bench_args(p: argparse.ArgumentParser) -> None:
    from exotune.bench import classification, retrieval
    from exotune.bench.common import RESULTS_DIR
    from exotune.bench.sources import UNSEEN_CLASSES, VISION_TASKS
    from exotune.cli.common import add_averaging_args, positive_int, seed_number, share
    from exotune.defaults import CLASSIFICATION, RETRIEVAL
    from exotune.tasks.heads import PROTOTYPE_STARTS

    p.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        help=f"default: the suite's first (classification: {', '.join(classification.DATASETS)}; "
        f"retrieval: {', '.join(retrieval.DATASETS)})",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help=f"default: all of the suite's (classification: {', '.join(classification.METHODS)}; "
        f"retrieval: {', '.join(retrieval.METHODS)}); classification, retrieval and steps also "
        "take gray-box names such as dga-lowrank16, lga-8-upper, lga-4-lowrank16-rpt64-init-labels "
        "(see exotune.bench.graymethods)",
    )
    p.add_argument("--seeds", nargs="+", type=seed_number, default=[0, 1, 2], help="one run per seed")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"default: the suite's (classification {CLASSIFICATION.epochs}, retrieval {RETRIEVAL.epochs})",
    )
    p.add_argument(
        "--patience",
        type=positive_int,
        default=None,
        help=f"epochs without a validation gain before a run stops (default: the suite's, "
        f"classification {CLASSIFICATION.patience}, retrieval {RETRIEVAL.patience})",
    )
    budget = classification.Budget()  # the suite's per-set samples, said in the help as they are

    def caps(per_set: dict[str, int]) -> str:
        return "".join(f"; {name}: {n}" for name, n in per_set.items())

    p.add_argument(
        "--max-train",
        type=int,
        default=None,
        help=f"train on a sample of this many examples (default: all{caps(budget.dataset_max_train)})",
    )
    p.add_argument(
        "--val-min-words",
        type=positive_int,
        default=None,
        metavar="N",
        help="classification: validate on phrases of at least N words only (carved from train as before; "
        "train unchanged), for sets whose test sentences are longer than most training phrases (sst2)",
    )
    p.add_argument(
        "--val-fraction",
        type=share,
        default=None,
        metavar="F",
        help=f"classification: the share of train carved for validation where a set has no validation "
        f"split (default: {CLASSIFICATION.val_fraction}); the training sample is drawn from the rest",
    )
    p.add_argument(
        "--max-val",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"classification: validate on a sample of at most N examples (default: all"
        f"{caps(budget.dataset_max_val)}); a larger one tells closer runs apart",
    )
    p.add_argument(
        "--prototype-start",
        choices=PROTOTYPE_STARTS,
        default=None,
        help="classification: where every trained method's prototype head starts: the class names "
        "(default; step 0 is zero-shot) or class-means (the training sample's class means through the "
        "model at step 0)",
    )
    p.add_argument(
        "--hard-negatives",
        type=positive_int,
        default=None,
        metavar="N",
        help="retrieval: every trained method also scores each training query against the bare box's "
        "top N non-relevant documents (mined once, from the box's outputs), beside the batch's others",
    )
    p.add_argument(
        "--lr",
        nargs="+",
        default=[],
        metavar="METHOD=LR",
        type=_method_lr,
        help="learning rate of a method, e.g. lora=5e-4 full-ft=5e-5 dga=3e-3 (dga: every gray-box "
        f"method; defaults, those of the committed tables: classification {_rates(CLASSIFICATION)}; "
        f"retrieval {_rates(RETRIEVAL)}); of a parameter group: dga.tokens=5e-2 (every gray-box "
        "method), lga.tokens=5e-2 (LGA only); groups: input, tokens, output, head",
    )
    add_averaging_args(p)
    p.add_argument("--data-dir", help="folder holding the datasets (default: $EXOTUNE_DATA, else ./datasets)")
    p.add_argument(
        "--backbone",
        default=None,
        help="default: the packaged all-MiniLM-L6-v2; vision: a CLIP, SigLIP or BLIP checkpoint (a name, a "
        "local folder, open_clip:MODEL@PRETRAINED), needed unless --quick (a tiny random CLIP)",
    )
    p.add_argument(
        "--out-dir",
        default=None,
        help=f"default: {RESULTS_DIR} ({RESULTS_DIR}/quick with --quick); needed with your own data",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke test: small samples, one seed, one epoch (unless --epochs)"
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="ignore finished runs logged by an earlier, interrupted call with the same settings",
    )
    g = p.add_argument_group("your own data: every method of the suite on it (needs --out-dir)")
    g.add_argument("--file", help="classification, ea: training file (.csv, .tsv or .jsonl of labelled texts)")
    g.add_argument(
        "--val-file", help="validation file: every choice is made on it (default: a share of --file or --data)"
    )
    g.add_argument("--test-file", help="test file, scored once per run")
    g.add_argument("--text-column", default="text", help="text column of the files (default: text)")
    g.add_argument("--label-column", default="label", help="label column of the files (default: label)")
    g.add_argument(
        "--beir-dir",
        help="retrieval: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv, "
        "qrels/test.tsv; qrels/dev.tsv is the validation split when present)",
    )
    g.add_argument(
        "--data",
        metavar="FILE",
        help="vision: captioned images, as exotune train --task image-retrieval --captions reads them "
        "(.csv/.tsv/.jsonl with image and caption columns, a COCO caption file: with --test-file; or a "
        "Karpathy-split .json alone: its train, val and test splits); with --task video-retrieval, "
        "captioned videos as exotune train --task video-retrieval reads them (MSRVTT_data.json alone: "
        "its train and test splits)",
    )
    g.add_argument("--images", metavar="DIR", help="vision: the images' folder (default: each caption file's)")
    g.add_argument(
        "--task",
        choices=VISION_TASKS,
        default=None,
        help="vision: image-text (default), text-video or sketch-to-photo retrieval; --quick draws "
        "images, videos or sketches and photos",
    )
    g.add_argument(
        "--videos",
        metavar="DIR",
        help="vision, video-retrieval: the videos' folder, files or folders of frames (default: as "
        "exotune train --task video-retrieval finds them)",
    )
    g.add_argument(
        "--sketches",
        metavar="DIR",
        help="vision, sketch-retrieval (instead of --data): Sketchy's root (sketch/ and photo/ inside), "
        "or a folder of class sub-folders with --photos",
    )
    g.add_argument("--photos", metavar="DIR", help="vision, sketch-retrieval: photos, one sub-folder per class")
    g.add_argument(
        "--unseen-classes",
        type=float,
        default=None,
        metavar="FRACTION",
        help=f"vision, sketch-retrieval: the share of the classes held out as the test split, sketches and "
        f"photos never trained on (default {UNSEEN_CLASSES})",
    )
    g.add_argument(
        "--class-seed", type=seed_number, default=0, help="vision, sketch-retrieval: which classes are held out"
    )
    g.add_argument(
        "--skip-bad-images",
        "--skip-bad-videos",
        dest="skip_bad_images",
        action="store_true",
        default=None,
        help="vision, your own data: leave out missing or unreadable images, videos or sketches "
        "(counted) instead of stopping at the first",
    )


def _rates(defaults) -> str:
    return ", ".join(f"{m} {lr:g}" for m, lr in defaults.to_dict()["lr"].items() if m != "lga")


def _method_lr(text: str) -> tuple[str, float]:
    method, sep, value = text.partition("=")
    try:
        lr = float(value)
    except ValueError:
        lr = -1.0
    if not sep or not method or not lr > 0:
        raise argparse.ArgumentTypeError(f"expected METHOD=LR with LR > 0 (e.g. lora=5e-4), got {text!r}")
    return method, lr


def run(args) -> int:
    from exotune.bench import run_suite
    from exotune.bench.common import BenchOptions

    return run_suite(BenchOptions(**{f.name: getattr(args, f.name) for f in fields(BenchOptions)}))

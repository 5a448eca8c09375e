"""``exotune train``: DGA/LGA adapters for a task, dispatched by the task table."""

from __future__ import annotations

import argparse

from exotune.boxes.spec import ENTRY_MODES
from exotune.cli import classification, images, retrieval, vision
from exotune.cli.boxes import add_box_args, user_device
from exotune.cli.common import add_averaging_args, entry_points_arg, positive_int, seed_number
from exotune.cli.configs import ENTRY_TOKENS, dga_config, fill_train_defaults, train_config
from exotune.cli.data import add_data_args, add_split_files_args, add_task_arg, refuse_images, refuse_split_files
from exotune.cli.runs import check_output_dir
from exotune.defaults import CLASSIFICATION, RETRIEVAL

TRAINERS = {
    "classification": classification.train,
    "retrieval": retrieval.train,
    "image-retrieval": images.train,
    "image-classification": images.train,
    "video-retrieval": vision.train,
    "sketch-retrieval": vision.train,
}  # (args, dga, train_cfg) -> int


def add_train_args(p: argparse.ArgumentParser) -> None:
    from exotune.graybox import VARIANTS, adapter_names
    from exotune.graybox.input_adapters import TOKEN_ACTIVATIONS
    from exotune.graybox.tokens import TOKEN_INITS
    from exotune.tasks.heads import HEADS, PROTOTYPE_STARTS
    from exotune.train import SCHEDULES

    a = p.add_argument_group("adapters (DGA)")
    a.add_argument("--variant", default="both", choices=VARIANTS, help="which sides are adapted (default: both)")
    a.add_argument("--extra-tokens", type=int, default=1, help="learnable tokens inserted into each input (default: 1)")
    a.add_argument(
        "--copies-per",
        type=int,
        default=0,
        metavar="N",
        help="put the extra tokens after each text, one copy of them per N of its tokens, so that "
        "they keep their share of a mean-pooled output on long texts (default: 0, once after [CLS])",
    )
    a.add_argument("--no-shift", action="store_true", help="no shift token on the input side")
    a.add_argument(
        "--input-gain",
        action="store_true",
        help="a learnt gain of every token embedding besides the shift: e * (1 + g) + shift (g zero at start)",
    )
    a.add_argument(
        "--text-adapter",
        default="text-shift",
        choices=adapter_names("input", "text"),
        help="input adapter of a text box (default: text-shift; token-lowrank adds a per-token "
        "low-rank residual map e + U act(V e) before the shift and extra tokens; token-conditioned "
        "offsets the shift and extra tokens by a low-rank map of the plain box's output for each text)",
    )
    a.add_argument(
        "--lowrank-rank", type=positive_int, default=16, help="rank of token-lowrank / token-conditioned (default: 16)"
    )
    a.add_argument(
        "--lowrank-activation",
        default="none",
        choices=list(TOKEN_ACTIVATIONS),
        help="activation inside token-lowrank / token-conditioned (default: none, a linear map)",
    )
    a.add_argument(
        "--lowrank-kernel",
        type=positive_int,
        default=1,
        metavar="K",
        help="token-lowrank: each token's map reads the K positions around it, an odd K (default: 1, "
        "itself only): e_t + U act(sum_j W_j V e_(t+j))",
    )
    a.add_argument(
        "--token-reparam",
        type=int,
        default=0,
        metavar="H",
        help="train the extra tokens and entry tokens through a residual MLP of width H, folded "
        "into plain tokens when saved (default: 0, plain tokens)",
    )
    a.add_argument(
        "--token-init",
        default="random",
        choices=TOKEN_INITS,
        help="start the tokens from the box's embeddings of the class names (labels) or of the "
        "training texts' frequent words (default: random)",
    )
    a.add_argument(
        "--input-dropout",
        type=float,
        default=0.0,
        metavar="P",
        help="while training, dropout of this rate on the token embeddings a text box is given "
        "(the box runs its model without dropout; default: 0, none)",
    )
    a.add_argument("--output-adapter", default="linear", choices=adapter_names("output"), help="default: linear")
    a.add_argument("--mlp-hidden", type=int, default=128, help="hidden width of the mlp output adapter")
    a.add_argument(
        "--pixel-adapter",
        default="pixel-conv",
        choices=adapter_names("input", "image"),
        help="input adapter of an image box (default: pixel-conv, an identity-initialised convolution)",
    )
    a.add_argument("--kernel-size", type=int, default=3, help="kernel of the pixel adapter's convolution (odd)")
    a.add_argument("--pixel-channels", type=int, default=8, help="hidden channels of the pixel-residual adapter")
    a.add_argument("--head", default="prototype", choices=HEADS, help="default: prototype (zero-shot at step 0)")
    a.add_argument(
        "--prototype-start",
        default="names",
        choices=PROTOTYPE_STARTS,
        help="classification, prototype head: start at the class names (default) or at the class means of "
        "the training examples' outputs (one gradient-free pass before training)",
    )
    a.add_argument(
        "--label-template",
        default=None,
        help="text a class name is encoded as, e.g. 'a review that is {}' (default: '{}'; for "
        "image classification 'a photo of a {}.')",
    )
    g = p.add_argument_group("entry tokens (LGA: the box is loaded light-gray)")
    g.add_argument(
        "--entry-points",
        type=entry_points_arg,
        default=None,
        help="layers that accept tokens: 'all' or comma-separated indices, e.g. 0,2,5 (default with "
        "--entry-tokens: all)",
    )
    g.add_argument(
        "--entry-tokens",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"learnable tokens per entry point (default with --entry-points: {ENTRY_TOKENS})",
    )
    g.add_argument(
        "--entry-mode",
        choices=ENTRY_MODES,
        default=None,
        help="how the local box's entry points take the tokens: 'replace' overwrites the hidden states "
        "at their positions at each layer (VPT-deep), 'add' adds to them, so the positions carry what "
        "earlier layers read from the text, 'shift' adds their sum to every position, 'affine' scales "
        "every position by 1 + the first and adds the others (default: replace)",
    )
    t = p.add_argument_group("training (defaults: those the committed tables were made with, exotune.defaults)")
    cls, ret = CLASSIFICATION, RETRIEVAL
    t.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"passes over the training data (default: {cls.epochs}, {ret.epochs} for --task retrieval)",
    )
    t.add_argument(
        "--batch-size", type=int, default=None, help=f"examples per optimisation step (default: {cls.batch_size})"
    )
    t.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"peak learning rate (default: {cls.gray_lr:g}, {ret.gray_lr:g} for --task retrieval; "
        "chosen on validation: benchmarks/lr-sweep)",
    )
    for group, what in (
        ("input", "the input adapter's maps"),
        ("tokens", "extra tokens and entry tokens"),
        ("output", "the output adapter"),
        ("head", "the head and temperature"),
    ):
        t.add_argument(
            f"--lr-{group}",
            type=float,
            default=None,
            metavar="LR",
            help=f"peak learning rate of {what} (default: --lr)",
        )
    add_averaging_args(t)
    t.add_argument("--schedule", default="cosine", choices=SCHEDULES, help="learning-rate schedule after warm-up")
    t.add_argument("--warmup-ratio", type=float, default=0.06, help="share of the steps spent warming up the lr")
    t.add_argument(
        "--patience",
        type=int,
        default=None,
        help=f"epochs without validation gain before stopping (default: {cls.patience})",
    )
    t.add_argument(
        "--seed", type=seed_number, default=0, help="seed of the split, the sampling and the adapters' start"
    )
    t.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help=f"validation share carved from train when no --val-file is given (default: {cls.val_fraction})",
    )
    t.add_argument("--max-train", type=int, default=None, help="train on a random sample of this many examples")
    t.add_argument("--quiet", action="store_true", help="no progress bars")


HELP = "train DGA/LGA adapters: a classifier, or a retriever (--task retrieval)"


def add_parser(sub) -> None:
    p = sub.add_parser("train", help=HELP)
    add_task_arg(p)
    add_data_args(p)
    add_split_files_args(p)
    add_box_args(p)
    add_train_args(p)
    retrieval.add_retrieval_args(p)
    images.add_image_args(p)
    p.add_argument("--output-dir", required=True, help="run folder: best/ (the adapter), last/ (checkpoint)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/last after a crash; with a larger --epochs, extend a finished run",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an OUTPUT_DIR that holds a run (its best/, last/, logs and summary are replaced)",
    )
    p.add_argument(
        "--report-to",
        nargs="+",
        default=None,
        choices=["tensorboard"],
        help="also log to TensorBoard, in OUTPUT_DIR/tensorboard (pip install 'exotune[tensorboard]'; "
        "default: only the CSV logs in OUTPUT_DIR/logs)",
    )
    p.add_argument(
        "--eval-test",
        action="store_true",
        help="after training, evaluate once on the test split of --dataset (or --test-file; image "
        "tasks: --test-file, a split file's test split, or the unseen classes of --unseen-classes)",
    )


def run(args) -> int:
    from exotune import distributed

    distributed.setup()  # under torchrun: join the group (and pick this rank's GPU) before loading the box
    check_output_dir(args)
    fill_train_defaults(args)
    user_device(args)  # a GPU that is not there, or not yet for this task, is refused before anything loads
    dga, train_cfg = dga_config(args), train_config(args)
    refuse_images(args)
    refuse_split_files(args, args.task)
    return TRAINERS[args.task](args, dga, train_cfg)

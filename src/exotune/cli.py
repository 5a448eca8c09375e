"""Command line: parses arguments into configs and calls the library. ``main(argv) -> int``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from exotune import __version__, cli_images
from exotune.argtypes import entry_points_arg, positive_int
from exotune.cli_retrieval import add_retrieval_args
from exotune.cli_run import fit_and_report
from exotune.errors import ConfigError, ExotuneError
from exotune.serve.cli import TOKENS_ENV, add_serve_args

DEMO_DIR = "runs/demo"
DGA_LR = 5e-3  # best validation accuracy of the sweep in benchmarks/lr-sweep
ENTRY_TOKENS = 2  # tokens per entry point when only --entry-points is given
ENTRY_TOKENS_MAX = 8  # what the CLI's light-gray box accepts per entry point (at least N)
TASKS = ("classification", "retrieval", "image-retrieval", "image-classification")


def _add_data_args(p: argparse.ArgumentParser, split_default: str | None = None) -> None:
    g = p.add_argument_group("data")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a known dataset: banking77, sst2 (classification); scifact (retrieval)")
    src.add_argument("--file", help="a .csv, .tsv or .jsonl file of labelled texts")
    src.add_argument("--images", metavar="DIR",
                     help="a folder of images: one sub-folder per class (--task image-classification), or the "
                          "images that --captions names (--task image-retrieval)")
    g.add_argument("--data-dir", help="folder holding the known datasets (default: $EXOTUNE_DATA, else ./datasets)")
    g.add_argument("--text-column", default="text", help="text column of --file (default: text)")
    g.add_argument("--label-column", default="label", help="label column of --file (default: label)")
    if split_default:
        g.add_argument("--split", default=split_default, choices=["train", "test"], help=f"split of --dataset (default: {split_default})")


def _add_task_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="classification", choices=TASKS, help="default: classification")


def _add_box_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--backbone", default=None,
                   help="local folder or model id of a BERT-family encoder (default: the packaged all-MiniLM-L6-v2); "
                        "for image tasks a CLIP, ViT or DINOv2 checkpoint (e.g. openai/clip-vit-base-patch16) or "
                        "open_clip:MODEL@PRETRAINED")
    g.add_argument("--remote", default=None, metavar="URL",
                   help="a box served by 'exotune serve', e.g. http://127.0.0.1:8000 (token: $EXOTUNE_TOKEN)")


def open_box(args, **load_kwargs):
    """The box the arguments name: served (``--remote``) or loaded here (``--backbone``)."""
    if args.remote:
        from exotune.boxes.remote import connect

        return connect(args.remote)
    from exotune.boxes import load_box

    return load_box(args.backbone, **load_kwargs)


def _add_train_args(p: argparse.ArgumentParser, epochs: int = 5) -> None:
    from exotune.graybox import VARIANTS, adapter_names
    from exotune.graybox.input_adapters import TOKEN_ACTIVATIONS
    from exotune.graybox.tokens import TOKEN_INITS
    from exotune.tasks.heads import HEADS
    from exotune.train import SCHEDULES

    a = p.add_argument_group("adapters (DGA)")
    a.add_argument("--variant", default="both", choices=VARIANTS, help="which sides are adapted (default: both)")
    a.add_argument("--extra-tokens", type=int, default=1, help="learnable tokens inserted into each input (default: 1)")
    a.add_argument("--no-shift", action="store_true", help="no shift token on the input side")
    a.add_argument("--text-adapter", default="text-shift", choices=adapter_names("input", "text"),
                   help="input adapter of a text box (default: text-shift; token-lowrank adds a per-token "
                        "low-rank residual map e + U act(V e) before the shift and extra tokens)")
    a.add_argument("--lowrank-rank", type=positive_int, default=16, help="rank of token-lowrank (default: 16)")
    a.add_argument("--lowrank-activation", default="none", choices=list(TOKEN_ACTIVATIONS),
                   help="activation inside token-lowrank (default: none, a linear map)")
    a.add_argument("--token-reparam", type=int, default=0, metavar="H",
                   help="train the extra tokens and entry tokens through a residual MLP of width H, folded "
                        "into plain tokens when saved (default: 0, plain tokens)")
    a.add_argument("--token-init", default="random", choices=TOKEN_INITS,
                   help="start the tokens from the box's embeddings of the class names (labels) or of the "
                        "training texts' frequent words (default: random)")
    a.add_argument("--output-adapter", default="linear", choices=adapter_names("output"), help="default: linear")
    a.add_argument("--mlp-hidden", type=int, default=128, help="hidden width of the mlp output adapter")
    a.add_argument("--pixel-adapter", default="pixel-conv", choices=adapter_names("input", "image"),
                   help="input adapter of an image box (default: pixel-conv, an identity-initialised convolution)")
    a.add_argument("--kernel-size", type=int, default=3, help="kernel of the pixel adapter's convolution (odd)")
    a.add_argument("--pixel-channels", type=int, default=8, help="hidden channels of the pixel-residual adapter")
    a.add_argument("--head", default="prototype", choices=HEADS, help="default: prototype (zero-shot at step 0)")
    a.add_argument("--label-template", default=None,
                   help="text a class name is encoded as, e.g. 'a review that is {}' (default: '{}'; for "
                        "image classification 'a photo of a {}.')")
    g = p.add_argument_group("entry tokens (LGA: the box is loaded light-gray)")
    g.add_argument("--entry-points", type=entry_points_arg, default=None,
                   help="layers that accept tokens: 'all' or comma-separated indices, e.g. 0,2,5 (default with "
                        "--entry-tokens: all)")
    g.add_argument("--entry-tokens", type=positive_int, default=None, metavar="N",
                   help=f"learnable tokens per entry point (default with --entry-points: {ENTRY_TOKENS})")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=epochs)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=DGA_LR,
                   help=f"peak learning rate (default: {DGA_LR}, chosen on Banking77 validation: benchmarks/lr-sweep)")
    for group, what in (("input", "the input adapter's maps"), ("tokens", "extra tokens and entry tokens"),
                        ("output", "the output adapter"), ("head", "the head and temperature")):
        t.add_argument(f"--lr-{group}", type=float, default=None, metavar="LR",
                       help=f"peak learning rate of {what} (default: --lr)")
    t.add_argument("--schedule", default="cosine", choices=SCHEDULES)
    t.add_argument("--warmup-ratio", type=float, default=0.06)
    t.add_argument("--patience", type=int, default=3, help="epochs without validation gain before stopping")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val-fraction", type=float, default=0.1, help="validation share carved from train")
    t.add_argument("--max-train", type=int, default=None, help="train on a random sample of this many examples")
    t.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exotune", description="Adapt foundation models you cannot open.")
    parser.add_argument("--version", action="version", version=f"exotune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="DGA on Banking77 with MiniLM: zero-shot vs adapted, in a few minutes",
                       description="Train DGA adapters (both sides) on Banking77 through the packaged MiniLM "
                                   "box and compare with zero-shot on the test split.")
    p.add_argument("--data-dir", help="folder holding banking77/ (default: $EXOTUNE_DATA, else ./datasets)")
    p.add_argument("--output-dir", default=DEMO_DIR, help=f"where the adapter goes (default: {DEMO_DIR})")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-train", type=int, default=None, help="train on a sample of this many examples")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train DGA/LGA adapters: a classifier, or a retriever (--task retrieval)")
    _add_task_arg(p)
    _add_data_args(p)
    _add_box_args(p)
    _add_train_args(p)
    add_retrieval_args(p)
    cli_images.add_image_args(p)
    p.add_argument("--output-dir", required=True, help="run folder: best/ (the adapter), last/ (checkpoint)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last after a crash")
    p.add_argument("--eval-test", action="store_true", help="after training, evaluate on the test split of --dataset")

    p = sub.add_parser("eval", help="evaluate an adapter (or zero-shot) on a labelled or retrieval dataset")
    _add_task_arg(p)
    _add_data_args(p, split_default="test")
    _add_box_args(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--adapter", help="adapter folder written by train")
    who.add_argument("--zero-shot", action="store_true",
                     help="the bare box: class-name prototypes, or plain embeddings for retrieval")
    p.add_argument("--label-template", default=None,
                   help="with --zero-shot: text a class name is encoded as (default: '{}'; images: 'a photo of a {}.')")
    cli_images.add_image_args(p)
    p.add_argument("--json", action="store_true", help="print metrics as JSON")

    p = sub.add_parser("predict", help="label texts with a trained adapter")
    _add_box_args(p)
    p.add_argument("--adapter", required=True, help="adapter folder written by train")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to label (repeatable)")
    src.add_argument("--input-file", help="a file with one text per line")
    p.add_argument("--top-k", type=int, default=1, help="labels to show per text")

    p = sub.add_parser("serve", help="serve a box over HTTP at a chosen access level",
                       description="Serve a backbone as a box: dark-gray and light-gray expose forward and "
                                   "input gradients, black only outputs. Tokens come from --tokens-file or "
                                   f"${TOKENS_ENV} (comma-separated); without one it refuses to start "
                                   "unless --no-auth is given.")
    add_serve_args(p)

    p = sub.add_parser("bench", help="run a comparison suite and write benchmarks/results/")
    from exotune.bench import SUITES, add_bench_args

    p.add_argument("suite", choices=sorted(SUITES))
    add_bench_args(p)

    from exotune.ea.cli import add_ea_parser

    add_ea_parser(sub)
    return parser


def _load_data(args, split: str):
    from exotune.data import load_dataset, load_text_file

    if args.dataset:
        return load_dataset(args.dataset, split, args.data_dir)
    return load_text_file(args.file, args.text_column, args.label_column)


def _dga_config(args, modality: str = "text"):
    from exotune.graybox import (
        DGAConfig,
        PixelConvConfig,
        PixelResidualConfig,
        ResidualMLPConfig,
        TextShiftConfig,
    )
    from exotune.graybox.input_adapters import TokenLowRankConfig
    from exotune.graybox.output_adapters import LinearOutputConfig

    if modality == "image":
        inp = (PixelResidualConfig(kernel_size=args.kernel_size, channels=args.pixel_channels)
               if args.pixel_adapter == "pixel-residual" else PixelConvConfig(kernel_size=args.kernel_size))
    elif args.text_adapter == "token-lowrank":
        inp = TokenLowRankConfig(rank=args.lowrank_rank, activation=args.lowrank_activation,
                                 shift=not args.no_shift, extra_tokens=args.extra_tokens, reparam=args.token_reparam)
    else:
        inp = TextShiftConfig(shift=not args.no_shift, extra_tokens=args.extra_tokens, reparam=args.token_reparam)
    out = ResidualMLPConfig(hidden=args.mlp_hidden) if args.output_adapter == "mlp" else LinearOutputConfig()
    return DGAConfig.variant(args.variant, inp, out, _entry_tokens_config(args), modality)


def _lga(args) -> bool:
    return args.entry_points is not None or args.entry_tokens is not None


def _entry_tokens_config(args):
    from exotune.graybox import EntryTokensConfig

    return EntryTokensConfig(tokens=args.entry_tokens or ENTRY_TOKENS, reparam=args.token_reparam) if _lga(args) else None


def _lga_box_options(args) -> dict:
    """Box options for training: light-gray with the chosen entry points for LGA."""
    if not _lga(args):
        return {}
    n = args.entry_tokens or ENTRY_TOKENS
    return {"entry_points": args.entry_points or "all", "entry_tokens_max": max(ENTRY_TOKENS_MAX, n)}


def _train_box(args):
    """The box to train against: for LGA, a local one is loaded light-gray with the chosen
    entry points; a served one exposes what its owner chose."""
    if args.remote and args.entry_points:
        raise ConfigError("--entry-points chooses the entry points of a local box; a served box (--remote) "
                          "exposes those its owner chose (see its /v1/spec)")
    return open_box(args, **_lga_box_options(args))


def _adapter_box(args):
    """The box an adapter was trained against: served, or loaded with the same entry points."""
    from exotune.tasks.classification import saved_box_options

    if args.remote:
        return open_box(args)
    return open_box(args, **saved_box_options(args.adapter))


def _train_config(args):
    from exotune.train import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
                       warmup_ratio=args.warmup_ratio, patience=args.patience, seed=args.seed,
                       lr_input=args.lr_input, lr_tokens=args.lr_tokens, lr_output=args.lr_output,
                       lr_head=args.lr_head)


def cmd_train(args) -> int:
    from exotune import distributed
    from exotune.graybox.tokens import init_tokens
    from exotune.tasks.classification import ClassificationConfig, TextClassifier
    from exotune.train import seed_everything

    distributed.setup()  # under torchrun: join the group (and pick this rank's GPU) before loading the box
    dga, train_cfg = _dga_config(args), _train_config(args)
    if args.task.startswith("image-"):
        if args.token_init != "random":
            raise ConfigError("--token-init starts text tokens from words; image tasks take random tokens")
        return cli_images.train(args, dga, train_cfg)
    cli_images.refuse_images(args)
    if args.task == "retrieval":
        from exotune import cli_retrieval

        return cli_retrieval.train(args, dga, train_cfg, _train_box(args))
    cls_cfg = ClassificationConfig(head=args.head, label_template=args.label_template or "{}")
    data = _load_data(args, "train")
    train, val = data.split(args.val_fraction, seed=args.seed)
    if args.max_train:
        train = train.head(args.max_train, seed=args.seed)
    box = _train_box(args)
    seed_everything(args.seed)  # the adapters' random initial tokens: --seed makes a run repeatable
    model = TextClassifier(box, data.label_names, dga, cls_cfg)
    init_tokens(model.encoder, args.token_init, data.label_names, train.texts)  # --token-init
    if distributed.is_main():
        print(f"training {dga.description} on {len(train)} examples, validating on {len(val)}; "
              f"{model.num_trainable():,} trainable parameters", file=sys.stderr)
        if args.eval_test and not args.dataset:
            print("warning: --eval-test needs --dataset; skipped", file=sys.stderr)

    def test():
        return model.evaluate(_load_data(args, "test"), progress=not args.quiet)

    return fit_and_report(args, model, train, val, train_cfg, test if args.eval_test and args.dataset else None)


def cmd_eval(args) -> int:
    from exotune.tasks.classification import ClassificationConfig, TextClassifier

    if args.task.startswith("image-"):
        return cli_images.evaluate(args)
    cli_images.refuse_images(args)
    if args.task == "retrieval":
        from exotune import cli_retrieval

        return cli_retrieval.evaluate(args)
    data = _load_data(args, args.split)
    if args.zero_shot:
        box = open_box(args)
        model = TextClassifier(box, data.label_names, None,
                               ClassificationConfig(label_template=args.label_template or "{}"))
    else:
        model = TextClassifier.from_pretrained(args.adapter, _adapter_box(args))
    metrics = model.evaluate(data, progress=True)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{data.name}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} ({len(data)} examples)")
    return 0


def cmd_predict(args) -> int:
    from exotune.data.text import read_text
    from exotune.errors import DataError
    from exotune.tasks.classification import TextClassifier

    if args.text:
        texts = args.text
    else:
        texts = [line for line in read_text(Path(args.input_file)).splitlines() if line.strip()]
    if not texts or any(not t.strip() for t in texts):
        raise DataError("predict needs non-empty texts")
    model = TextClassifier.from_pretrained(args.adapter, _adapter_box(args))
    probs = model.predict_proba(texts)
    k = max(1, min(args.top_k, len(model.label_names)))
    for text, p in zip(texts, probs, strict=True):
        top = p.topk(k)
        labels = ", ".join(f"{model.label_names[i]} ({v:.3f})" for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True))
        print(f"{labels}\t{text}")
    return 0


def cmd_demo(args) -> int:
    from exotune.boxes import load_box
    from exotune.data import load_dataset
    from exotune.graybox import DGAConfig
    from exotune.tasks.classification import TextClassifier
    from exotune.train import TrainConfig, Trainer

    t0 = time.perf_counter()
    data = load_dataset("banking77", "train", args.data_dir)
    test = load_dataset("banking77", "test", args.data_dir)
    train, val = data.split(0.1, seed=0)
    if args.max_train:
        train = train.head(args.max_train)
    print("loading the hidden backbone (all-MiniLM-L6-v2) as a dark-gray box ...", file=sys.stderr)
    box = load_box()
    zero_shot = TextClassifier(box, data.label_names).evaluate(test, progress=not args.quiet)
    print(f"zero-shot on Banking77 test: accuracy {zero_shot['accuracy']:.4f}", file=sys.stderr)
    model = TextClassifier(box, data.label_names, DGAConfig())
    print(f"training DGA input+output adapters ({model.num_trainable():,} parameters; the backbone's "
          f"weights are never touched) on {len(train)} examples ...", file=sys.stderr)
    out = Path(args.output_dir)
    Trainer(TrainConfig(epochs=args.epochs, lr=DGA_LR), out, progress=not args.quiet).fit(model, train, val)
    adapted = model.evaluate(test, progress=not args.quiet)
    print(f"\nBanking77 test ({len(test)} examples), all-MiniLM-L6-v2 behind a dark-gray box")
    print(f"  zero-shot      accuracy {zero_shot['accuracy']:.4f}   macro-F1 {zero_shot['macro_f1']:.4f}")
    print(f"  DGA (both)     accuracy {adapted['accuracy']:.4f}   macro-F1 {adapted['macro_f1']:.4f}")
    print(f"adapter saved to {out / 'best'} ({time.perf_counter() - t0:.0f} s in all)")
    return 0


def cmd_serve(args) -> int:
    from exotune.serve.cli import cmd_serve as run

    return run(args)


def cmd_ea(args) -> int:
    from exotune.ea.cli import run

    return run(args)


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "serve": cmd_serve,
            "ea": cmd_ea}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bench":
            from exotune.bench import run_suite

            return run_suite(args)
        return COMMANDS[args.command](args)
    except ExotuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

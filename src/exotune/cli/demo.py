"""``exotune demo``: DGA on Banking77 with the packaged MiniLM, zero-shot vs adapted."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from exotune.defaults import CLASSIFICATION

DEMO_DIR = "runs/demo"


HELP = "DGA on Banking77 with MiniLM: zero-shot vs adapted, in a few minutes"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help=HELP,
        description="Train DGA adapters (both sides) on Banking77 through the packaged MiniLM "
        "box and compare with zero-shot on the test split.",
    )
    p.add_argument("--data-dir", help="folder holding banking77/ (default: $EXOTUNE_DATA, else ./datasets)")
    p.add_argument("--output-dir", default=DEMO_DIR, help=f"where the adapter goes (default: {DEMO_DIR})")
    p.add_argument("--epochs", type=int, default=1, help="passes over the training data")
    p.add_argument("--max-train", type=int, default=None, help="train on a sample of this many examples")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
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
    print(
        f"training DGA input+output adapters ({model.num_trainable():,} parameters; the backbone's "
        f"weights are never touched) on {len(train)} examples ...",
        file=sys.stderr,
    )
    out = Path(args.output_dir)
    Trainer(TrainConfig(epochs=args.epochs, lr=CLASSIFICATION.gray_lr), out, progress=not args.quiet).fit(
        model, train, val
    )
    adapted = model.evaluate(test, progress=not args.quiet)
    print(f"\nBanking77 test ({len(test)} examples), all-MiniLM-L6-v2 behind a dark-gray box")
    print(f"  zero-shot      accuracy {zero_shot['accuracy']:.4f}   macro-F1 {zero_shot['macro_f1']:.4f}")
    print(f"  DGA (both)     accuracy {adapted['accuracy']:.4f}   macro-F1 {adapted['macro_f1']:.4f}")
    print(f"adapter saved to {out / 'best'} ({time.perf_counter() - t0:.0f} s in all)")
    return 0

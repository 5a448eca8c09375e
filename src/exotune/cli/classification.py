"""``exotune train|eval --task classification``: the command bodies for labelled texts."""

from __future__ import annotations

import sys

from exotune.cli.boxes import adapter_box, on_device, open_box, train_box
from exotune.cli.common import fit_and_report, print_metrics
from exotune.cli.data import labelled_splits, load_data


def train(args, dga, train_cfg) -> int:
    from exotune import distributed
    from exotune.graybox.tokens import init_tokens
    from exotune.tasks.classification import ClassificationConfig, TextClassifier
    from exotune.train import seed_everything

    cls_cfg = ClassificationConfig(
        head=args.head, label_template=args.label_template or "{}", prototype_start=args.prototype_start
    )
    train_data, val, test_data = labelled_splits(args, want_test=args.eval_test)
    box = train_box(args)
    seed_everything(args.seed)  # the adapters' random initial tokens: --seed makes a run repeatable
    model = TextClassifier(box, train_data.label_names, dga, cls_cfg)
    init_tokens(model.encoder, args.token_init, train_data.label_names, train_data.texts)  # --token-init
    model.start_head(train_data, progress=not args.quiet)  # --prototype-start class-means
    if distributed.is_main():
        print(
            f"training {dga.description} on {len(train_data)} examples, validating on {len(val)}; "
            f"{model.num_trainable():,} trainable parameters",
            file=sys.stderr,
        )

    def test():
        return model.evaluate(test_data, progress=not args.quiet)

    return fit_and_report(args, model, train_data, val, train_cfg, test if test_data is not None else None)


def evaluate(args) -> int:
    from exotune.tasks.classification import ClassificationConfig, TextClassifier
    from exotune.tasks.metrics import class_report, classification_metrics

    data = load_data(args, args.split)
    if args.zero_shot:
        model = TextClassifier(
            open_box(args), data.label_names, None, ClassificationConfig(label_template=args.label_template or "{}")
        )
    else:
        model = TextClassifier.from_pretrained(args.adapter, adapter_box(args))
    model = on_device(args, model)
    y_true, y_pred, classes = model.predictions(data, progress=not getattr(args, "quiet", False))
    metrics = classification_metrics(y_true, y_pred, len(model.label_names), classes)
    if getattr(args, "report_dir", None):
        from exotune.cli.outputs import write_class_report

        rows, matrix = class_report(y_true, y_pred, model.label_names, classes)
        out = write_class_report(args.report_dir, metrics, rows, matrix, model.label_names)
        print(f"metrics, per-class report and confusion matrix written to {out}", file=sys.stderr)
    print_metrics(
        args,
        metrics,
        f"{data.name}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} ({len(data)} examples)",
    )
    return 0

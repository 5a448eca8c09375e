"""``exotune predict``: label texts with a trained adapter."""

from __future__ import annotations

from exotune.cli.common import adapter_box, add_box_args, add_texts_args, read_texts


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="label texts with a trained adapter")
    add_box_args(p)
    p.add_argument("--adapter", required=True, help="adapter folder written by train")
    add_texts_args(p)
    p.add_argument("--top-k", type=int, default=1, help="labels to show per text")


def run(args) -> int:
    from exotune.tasks.classification import TextClassifier

    texts = read_texts(args)
    model = TextClassifier.from_pretrained(args.adapter, adapter_box(args))
    probs = model.predict_proba(texts)
    k = max(1, min(args.top_k, len(model.label_names)))
    for text, p in zip(texts, probs, strict=True):
        top = p.topk(k)
        labels = ", ".join(f"{model.label_names[i]} ({v:.3f})" for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True))
        print(f"{labels}\t{text}")
    return 0

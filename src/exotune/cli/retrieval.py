"""``exotune train|eval --task retrieval``: the command bodies for a BEIR-style dataset."""

from __future__ import annotations

import argparse
import sys

from exotune.cli.boxes import adapter_box, on_device, open_box, train_box
from exotune.cli.common import fit_and_report, print_metrics
from exotune.cli.data import train_val
from exotune.errors import ConfigError

DOC_SIDES = (
    "same",
    "output-only",
    "frozen",
)  # RetrievalConfig.doc_side (a test keeps the two equal); no torch at parse time


def add_retrieval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("retrieval (--task retrieval, image-retrieval)")
    g.add_argument("--shared-towers", action="store_true", help="one adapted encoder for queries and documents")
    g.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="InfoNCE temperature at start (default: 0.05; image-retrieval: the model's own when it states "
        "one, a BLIP checkpoint's learned temperature, else 0.02)",
    )
    g.add_argument("--fixed-temperature", action="store_true", help="do not learn the temperature")
    g.add_argument(
        "--hard-negatives",
        type=int,
        default=0,
        help="per query, top non-relevant docs of the zero-shot ranking added to each batch",
    )
    g.add_argument(
        "--doc-side",
        choices=DOC_SIDES,
        default="same",
        help="adapters on the document tower: the same as the query tower's (default), the "
        "output adapter only, so the corpus crosses the box once and is never re-sent, or "
        "none (frozen: the bare box's outputs)",
    )


def _load(args, split: str, corpus=None):
    from exotune.data import load_retrieval_dataset

    if not args.dataset:
        raise ConfigError("--task retrieval needs --dataset (a BEIR folder such as scifact under --data-dir)")
    return load_retrieval_dataset(args.dataset, split, args.data_dir, corpus=corpus)


def train(args, dga, train_cfg) -> int:
    from dataclasses import replace

    from exotune.graybox.tokens import init_tokens
    from exotune.tasks.retrieval import DualEncoder, RetrievalConfig
    from exotune.train import seed_everything

    box = train_box(args)
    temperature = args.temperature if args.temperature is not None else RetrievalConfig.temperature
    cfg = RetrievalConfig(
        shared_towers=args.shared_towers,
        temperature=temperature,
        learn_temperature=not args.fixed_temperature,
        hard_negatives=args.hard_negatives,
        doc_side=args.doc_side,
    )
    train_cfg = replace(train_cfg, select_metric="ndcg@10")
    data = _load(args, "train")
    train_data, val = train_val(data, args)
    seed_everything(args.seed)  # the adapters' random initial tokens: --seed makes a run repeatable
    model = DualEncoder(box, dga, cfg)
    model.progress = not args.quiet
    for tower in dict.fromkeys([model.query_tower, model.doc_encoder]):  # the same one when shared
        init_tokens(tower, args.token_init, None, train_data.queries)
    towers = "one shared tower" if cfg.shared_towers else f"query and document towers, doc side {cfg.doc_side}"
    print(
        f"training {dga.description} ({towers}) on {len(train_data)} queries, validating on "
        f"{len(val)} over {len(data.corpus)} documents; {model.num_trainable():,} trainable parameters",
        file=sys.stderr,
    )
    model.mine_hard_negatives(train_data, progress=not args.quiet)

    def test():
        return model.evaluate(_load(args, "test", corpus=data.corpus))

    return fit_and_report(args, model, train_data, val, train_cfg, test if args.eval_test else None)


def evaluate(args) -> int:
    from exotune.graybox import DGAConfig
    from exotune.tasks.retrieval import DualEncoder

    data = _load(args, args.split)
    if args.zero_shot:
        model = DualEncoder(open_box(args), DGAConfig.variant("none"))
    else:  # the box the adapter was trained against (its entry points, for LGA)
        model = DualEncoder.from_pretrained(args.adapter, adapter_box(args))
    metrics = on_device(args, model).evaluate(data, progress=not getattr(args, "quiet", False))
    print_metrics(
        args,
        metrics,
        f"{data.name}: nDCG@10 {metrics['ndcg@10']:.4f}, Recall@10 "
        f"{metrics['recall@10']:.4f}, Recall@100 {metrics['recall@100']:.4f}, MRR@10 "
        f"{metrics['mrr@10']:.4f} ({len(data)} queries, {len(data.corpus)} documents)",
    )
    return 0

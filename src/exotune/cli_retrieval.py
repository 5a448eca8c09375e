"""``exotune train|eval --task retrieval``: the command bodies, kept out of cli.py."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from exotune.errors import ConfigError


def add_retrieval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("retrieval (--task retrieval)")
    g.add_argument("--shared-towers", action="store_true", help="one adapted encoder for queries and documents")
    g.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature at start (default: 0.05)")
    g.add_argument("--fixed-temperature", action="store_true", help="do not learn the temperature")
    g.add_argument("--hard-negatives", type=int, default=0,
                   help="per query, top non-relevant docs of the zero-shot ranking added to each batch")


def _load(args, split: str, corpus=None):
    from exotune.data import load_retrieval_dataset

    if not args.dataset:
        raise ConfigError("--task retrieval needs --dataset (a BEIR folder such as scifact under --data-dir)")
    return load_retrieval_dataset(args.dataset, split, args.data_dir, corpus=corpus)


def _print_metrics(name: str, data, metrics: dict) -> None:
    print(f"{name}: nDCG@10 {metrics['ndcg@10']:.4f}, Recall@10 {metrics['recall@10']:.4f}, "
          f"Recall@100 {metrics['recall@100']:.4f}, MRR@10 {metrics['mrr@10']:.4f} "
          f"({len(data)} queries, {len(data.corpus)} documents)")


def train(args, dga, train_cfg) -> int:
    from dataclasses import replace

    from exotune import distributed
    from exotune.cli import open_box
    from exotune.tasks.retrieval import DualEncoder, RetrievalConfig
    from exotune.train import Trainer, seed_everything

    cfg = RetrievalConfig(shared_towers=args.shared_towers, temperature=args.temperature,
                          learn_temperature=not args.fixed_temperature, hard_negatives=args.hard_negatives)
    train_cfg = replace(train_cfg, select_metric="ndcg@10")
    data = _load(args, "train")
    train_data, val = data.split(args.val_fraction, seed=args.seed)
    if args.max_train:
        train_data = train_data.head(args.max_train, seed=args.seed)
    box = open_box(args)
    seed_everything(args.seed)  # the adapters' random initial tokens: --seed makes a run repeatable
    model = DualEncoder(box, dga, cfg)
    model.progress = not args.quiet
    towers = "one shared tower" if cfg.shared_towers else "query and document towers"
    print(f"training DGA ({dga.variant_name}, {towers}) on {len(train_data)} queries, validating on "
          f"{len(val)} over {len(data.corpus)} documents; {model.num_trainable():,} trainable parameters",
          file=sys.stderr)
    model.mine_hard_negatives(train_data, progress=not args.quiet)
    out = Path(args.output_dir)
    result = Trainer(train_cfg, out, progress=not args.quiet).fit(model, train_data, val, resume=args.resume)
    if not distributed.is_main():
        return 0  # rank 0 reports and writes
    summary = result.summary()
    if args.eval_test:
        summary["test"] = model.evaluate(_load(args, "test", corpus=data.corpus))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


def evaluate(args) -> int:
    from exotune.cli import open_box
    from exotune.graybox import DGAConfig
    from exotune.tasks.retrieval import DualEncoder

    data = _load(args, args.split)
    box = open_box(args)
    model = DualEncoder(box, DGAConfig.variant("none")) if args.zero_shot else DualEncoder.from_pretrained(args.adapter, box)
    metrics = model.evaluate(data, progress=not getattr(args, "quiet", False))
    if args.json:
        print(json.dumps(metrics))
    else:
        _print_metrics(data.name, data, metrics)
    return 0

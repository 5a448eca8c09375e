"""Retrieval suite: zero-shot, DGA variants and LGA on SciFact (BEIR), query and document
towers over one hidden MiniLM box.

Trained on the train queries' judgements, the epoch chosen by nDCG@10 on validation queries
carved from train (searched over the full corpus), reported on the test judgements.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from exotune.bench.common import peak_memory_mb

METHODS = {
    # name: (method, variant, access)
    "zero-shot": ("zero-shot", "bare box", "dark-gray"),
    "dga-input-only": ("dga", "input-only", "dark-gray"),
    "dga-output-only": ("dga", "output-only", "dark-gray"),
    "dga-both": ("dga", "both", "dark-gray"),
    "lga-1": ("lga", "tokens=1", "light-gray"),
    "lga-2": ("lga", "tokens=2", "light-gray"),
    "lga-4": ("lga", "tokens=4", "light-gray"),
}
DATASETS = ("scifact",)
METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


@dataclass
class Budget:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-3
    val_fraction: float = 0.1
    patience: int = 2
    max_train: int | None = None  # train queries
    max_val: int | None = None
    max_test: int | None = None
    max_corpus: int | None = None  # quick runs: judged documents + a random sample of the rest

    def lr_for(self, method: str) -> float:
        return self.lr


def quick_budget() -> Budget:
    return Budget(epochs=1, max_train=64, max_val=16, max_test=32, max_corpus=400)


def _shrink(corpus, keep_ids: set[str], n: int, seed: int):
    from exotune.data.beir import Corpus

    rest = [i for i, d in enumerate(corpus.ids) if d not in keep_ids]
    rng = np.random.default_rng(seed)
    extra = rng.choice(len(rest), size=max(0, min(len(rest), n - len(keep_ids))), replace=False)
    idx = sorted([corpus.index[d] for d in keep_ids] + [rest[i] for i in extra])
    return Corpus([corpus.ids[i] for i in idx], [corpus.titles[i] for i in idx],
                  [corpus.texts[i] for i in idx], f"{corpus.name}[{len(idx)}]")


def _data(dataset: str, data_dir, budget: Budget, seed: int):
    from exotune.data import load_retrieval_dataset
    from exotune.data.beir import RetrievalData

    full = load_retrieval_dataset(dataset, "train", data_dir)
    train, val = full.split(budget.val_fraction, seed=seed)
    test = load_retrieval_dataset(dataset, "test", data_dir, corpus=full.corpus)
    if budget.max_train:
        train = train.head(budget.max_train, seed)
    if budget.max_val:
        val = val.head(budget.max_val, seed)
    if budget.max_test:
        test = test.head(budget.max_test, 0)
    if budget.max_corpus:
        judged = {d for part in (train, val, test) for q in part.qrels for d in q}
        corpus = _shrink(full.corpus, judged, budget.max_corpus, seed)
        train, val, test = (RetrievalData(p.query_ids, p.queries, p.qrels, corpus, p.name) for p in (train, val, test))
    return train, val, test


def _timed_eval(model, data):
    t = time.perf_counter()
    metrics = model.evaluate(data, progress=False)
    return metrics, len(data.corpus) / (time.perf_counter() - t)


def run_one(name: str, dataset: str, seed: int, data_dir, budget: Budget, backbone) -> dict:
    """One (method, dataset, seed) run; meant for a fresh process (see ``run_isolated``)."""
    from exotune.boxes import load_box
    from exotune.graybox import DGAConfig
    from exotune.graybox.entry_tokens import EntryTokensConfig
    from exotune.tasks.retrieval import DualEncoder, RetrievalConfig
    from exotune.train import TrainConfig, Trainer, seed_everything

    seed_everything(seed)
    method, variant, access = METHODS[name]
    train, val, test = _data(dataset, data_dir, budget, seed)
    lga = method == "lga"
    box = load_box(backbone, entry_points="all") if lga else load_box(backbone)
    rec = {"dataset": dataset, "split": "test", "method": method, "variant": variant, "access": access,
           "seed": seed, "train_seconds": 0.0, "seconds_per_step": None, "lr": None, "n_train": len(train),
           "n_val": len(val), "n_test": len(test), "n_corpus": len(test.corpus)}
    if method == "zero-shot":
        model = DualEncoder(box, DGAConfig.variant("none"), RetrievalConfig(learn_temperature=False))
        rec["trainable_params"] = 0
    else:
        tokens = EntryTokensConfig(tokens=int(variant.split("=")[1])) if lga else None
        dga = DGAConfig.variant("both" if lga else variant, entry_tokens=tokens)
        model = DualEncoder(box, dga, RetrievalConfig())
        cfg = TrainConfig(epochs=budget.epochs, batch_size=budget.batch_size, lr=budget.lr,
                          patience=budget.patience, seed=seed, select_metric="ndcg@10")
        result = Trainer(cfg, progress=False).fit(model, train, val)
        rec.update(trainable_params=model.num_trainable(), train_seconds=result.train_seconds,
                   seconds_per_step=result.seconds_per_step, steps=result.steps, lr=budget.lr,
                   best_epoch=result.best_epoch, val_ndcg_at_10=result.best_metric)
    rec["metrics"], rec["eval_docs_per_second"] = _timed_eval(model, test)
    rec["peak_memory_mb"] = peak_memory_mb()
    return rec

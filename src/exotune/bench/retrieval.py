"""Retrieval suite: zero-shot, DGA variants, LGA and the white-box baselines (LoRA, full
fine-tuning) on SciFact (BEIR), query and document towers over one MiniLM.

Trained on the train queries' judgements, the epoch chosen by nDCG@10 on validation queries
carved from train (searched over the full corpus), reported on the test judgements.

By default the document tower carries only the output adapter (``doc_side="output-only"``):
the corpus then crosses the box once, and its box outputs are kept on disk
(``benchmarks/.cache``, safetensors) for every later run with the same box and corpus; the
query tower carries the variant's adapters. ``--doc-side same`` adapts both towers alike
(the corpus is re-encoded whenever the document tower changes: several times per run).

The white-box rows train the backbone's weights on the query side only: their document side is
the gray-box rows' (the frozen backbone's cached corpus outputs, then the trained output adapter
with ``doc_side="output-only"``), since re-encoding the corpus through trained weights at each
validation would cost minutes per epoch on a CPU. Every gradient method gets the same loss,
batch, epochs and early stopping; only the learning rate is per method.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from exotune.bench import graymethods
from exotune.bench.common import fit_record, peak_memory_mb, run_record
from exotune.bench.sources import splits
from exotune.defaults import RETRIEVAL

METHODS = {
    # name: (method, variant, access)
    "zero-shot": ("zero-shot", "bare box", "dark-gray"),
    "dga-input-only": ("dga", "input-only", "dark-gray"),
    "dga-output-only": ("dga", "output-only", "dark-gray"),
    "dga-both": ("dga", "both", "dark-gray"),
    "lga-1": ("lga", "tokens=1", "light-gray"),
    "lga-2": ("lga", "tokens=2", "light-gray"),
    "lga-4": ("lga", "tokens=4", "light-gray"),
    # and any gray-box name bench.graymethods parses: dga-lowrank16, lga-8-upper, ...
    "lora": ("lora", "r=8 on queries", "white"),  # documents: see the module's docstring
    "full-ft": ("full-ft", "all, on queries", "white"),
}
DATASETS = ("scifact",)
METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
# The white-box scales (exotune.defaults); the gray-box methods take ``Budget.lr``.
METHOD_LR = dict(RETRIEVAL.white_lr)


@dataclass
class Budget:
    # the defaults the committed tables were made with (exotune.defaults)
    epochs: int = RETRIEVAL.epochs
    batch_size: int = RETRIEVAL.batch_size
    lr: float = RETRIEVAL.gray_lr  # gray-box adapters; other methods: method_lr
    method_lr: dict[str, float] = field(default_factory=lambda: dict(METHOD_LR))
    val_fraction: float = RETRIEVAL.val_fraction
    patience: int = RETRIEVAL.patience
    max_train: int | None = None  # train queries
    max_val: int | None = None
    max_test: int | None = None
    max_corpus: int | None = None  # quick runs: judged documents + a random sample of the rest
    doc_side: str = "output-only"  # RetrievalConfig.doc_side
    hard_negatives: int = 0  # RetrievalConfig.hard_negatives, for every trained method alike
    # TrainConfig options of every trained method beyond rates and budget (ema, group_by_length)
    train_options: dict = field(default_factory=dict)
    group_lr: dict[str, float] = field(default_factory=dict)  # "dga.tokens": 5e-2 (see bench.graymethods)

    def lr_for(self, method: str) -> float:
        return self.method_lr.get(method, self.lr)

    def train_lrs(self, method: str) -> dict:
        """``TrainConfig`` fields: the peak rate and any per-group rates of ``method``."""
        return {"lr": self.lr_for(method), **graymethods.group_rates(self.group_lr, method)}

    def for_dataset(self, dataset: str) -> dict:
        """What runs are logged and written under: the fields, ``method_lr`` only when changed
        from ``METHOD_LR``, so that runs logged before the white-box rows existed still match."""
        out = asdict(self)
        if self.method_lr == METHOD_LR:
            del out["method_lr"]
        for key in ("group_lr", "train_options", "hard_negatives"):  # runs logged before them still match
            if not out[key]:
                del out[key]
        return out


def quick_budget() -> Budget:
    return Budget(epochs=1, max_train=64, max_val=16, max_test=32, max_corpus=400)


def _shrink(corpus, keep_ids: set[str], n: int, seed: int):
    from exotune.data.beir import Corpus

    rest = [i for i, d in enumerate(corpus.ids) if d not in keep_ids]
    rng = np.random.default_rng(seed)
    extra = rng.choice(len(rest), size=max(0, min(len(rest), n - len(keep_ids))), replace=False)
    idx = sorted([corpus.index[d] for d in keep_ids] + [rest[i] for i in extra])
    return Corpus(
        [corpus.ids[i] for i in idx],
        [corpus.titles[i] for i in idx],
        [corpus.texts[i] for i in idx],
        f"{corpus.name}[{len(idx)}]",
    )


def _data(dataset: str, source, budget: Budget, seed: int):
    """(train, validation, test) of a known dataset under the data root ``source``, or of the
    user's ``BeirFolder``; then the budget's samples."""
    from exotune.data import load_retrieval_dataset
    from exotune.data.beir import RetrievalData

    def known(root):
        full = load_retrieval_dataset(dataset, "train", root)
        return full, None, load_retrieval_dataset(dataset, "test", root, corpus=full.corpus)

    train, val, test = splits(source, budget.val_fraction, seed, known)
    full_corpus = train.corpus
    if budget.max_train:
        train = train.head(budget.max_train, seed)
    if budget.max_val:
        val = val.head(budget.max_val, seed)
    if budget.max_test:
        test = test.head(budget.max_test, 0)
    if budget.max_corpus:
        judged = {d for part in (train, val, test) for q in part.qrels for d in q}
        corpus = _shrink(full_corpus, judged, budget.max_corpus, seed)
        train, val, test = (RetrievalData(p.query_ids, p.queries, p.qrels, corpus, p.name) for p in (train, val, test))
    return train, val, test


CACHE_DIR = Path("benchmarks/.cache")


def box_corpus_outputs(model, corpus, cache_dir: Path = CACHE_DIR) -> tuple[float, bool]:
    """Give a document tower that caches box outputs the box's outputs for ``corpus``: from
    ``cache_dir`` when an earlier run saved them, else computed here and saved. Returns the
    seconds the box took over the corpus (measured by whichever run computed them) and whether
    they came from disk. Keyed by the backbone's digest, pooling and length (not the entry
    points: a light-gray box without tokens computes what the dark-gray one does)."""
    import hashlib

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from exotune.boxes.base import encode_sorted

    tower, spec = model.doc_encoder, model.box.spec
    key = hashlib.sha256(
        f"{spec.model_digest}|{spec.pooling}|{spec.normalized}|{spec.text_max_length}|{corpus.fingerprint}".encode()
    ).hexdigest()[:16]
    path = cache_dir / f"{corpus.name.replace('/', '_')}-{key}.safetensors"
    docs = corpus.documents()
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            outputs, seconds = f.get_tensor("outputs"), float(f.metadata()["seconds"])
        tower.remember(docs, outputs)
        return seconds, True
    t = time.perf_counter()
    with torch.no_grad():
        outputs = encode_sorted(tower.backbone_outputs, docs, min(128, spec.limits.max_batch), spec.output_dim)
    seconds = time.perf_counter() - t
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"outputs": outputs.contiguous()}, str(tmp), metadata={"seconds": f"{seconds:.3f}"})
    os.replace(tmp, path)
    return seconds, False


def _timed_eval(model, data):
    """Test metrics over the full corpus and queries ranked per second (document embeddings
    included, unless they were cached)."""
    t = time.perf_counter()
    metrics = model.evaluate(data, progress=False)
    return metrics, len(data) / (time.perf_counter() - t)


def _model(name: str, box, budget: Budget, backbone):
    """The retriever one method evaluates (and trains) and its extra record fields."""
    from exotune.graybox import DGAConfig
    from exotune.tasks.retrieval import DualEncoder, RetrievalConfig

    method, variant, access = graymethods.describe(name, METHODS)
    if method == "zero-shot":
        return DualEncoder(box, DGAConfig.variant("none"), RetrievalConfig(learn_temperature=False)), {}
    task = RetrievalConfig(doc_side=budget.doc_side, hard_negatives=budget.hard_negatives)
    if access == "white":
        from exotune.whitebox import WhiteBoxConfig, WhiteBoxRetriever

        wb = WhiteBoxConfig.lora(r=8) if method == "lora" else WhiteBoxConfig.full_ft()
        return WhiteBoxRetriever.from_backbone(box, backbone, wb, task), {"whitebox": wb.to_dict()}
    dga = graymethods.parse(name).dga_config(box)
    return DualEncoder(box, dga, task), {"dga": dga.to_dict()}


def run_one(name: str, dataset: str, seed: int, source, budget: Budget, backbone) -> dict:
    """One (method, dataset, seed) run; meant for a fresh process (see ``run_isolated``).
    ``source``: the data root of the known datasets, or the user's ``BeirFolder``."""
    import torch

    from exotune.boxes import load_box
    from exotune.train import seed_everything

    seed_everything(seed)
    method, variant, access = graymethods.describe(name, METHODS)
    train, val, test = _data(dataset, source, budget, seed)
    gray = graymethods.parse(name) if access != "white" and method != "zero-shot" else None
    box = gray.load_box(backbone) if gray is not None else load_box(backbone)
    rec = {
        **run_record(dataset, seed, (method, variant, access), train, val, test),
        "n_corpus": len(test.corpus),
        "doc_side": budget.doc_side,
        **({"hard_negatives": budget.hard_negatives} if budget.hard_negatives else {}),
    }
    model, extra = _model(name, box, budget, backbone)
    if gray is not None:
        for tower in dict.fromkeys([model.query_tower, model.doc_encoder]):  # the same one when shared
            gray.init_tokens(tower, None, train.queries)
    rec.update(extra, trainable_params=model.num_trainable())
    if model.doc_encoder.caches_box_outputs and not budget.max_corpus:  # quick runs: in memory only
        rec["corpus_box_seconds"], rec["corpus_from_disk"] = box_corpus_outputs(model, test.corpus)
    if method != "zero-shot":
        rec.update(fit_record(model, train, val, budget, budget.train_lrs(method), seed, "ndcg@10"))
    rec["metrics"], rec["eval_examples_per_second"] = _timed_eval(model, test)
    rec["peak_memory_mb"] = peak_memory_mb()
    rec["threads"] = torch.get_num_threads()  # training seconds depend on it (OMP_NUM_THREADS)
    return rec

"""Classification suite: zero-shot, linear probe and DGA variants on real datasets.

Every gradient method gets the same budget (epochs, batch size, validation share,
early-stopping patience); every choice (epoch, probe regularisation) is made on the
validation split carved from train; test is touched once per run, at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from exotune.bench.common import peak_memory_mb

METHODS = {
    # name: (method, variant, access)
    "zero-shot": ("zero-shot", "prototype", "dark-gray"),
    "linear-probe": ("linear-probe", "logreg", "black"),
    "dga-input-only": ("dga", "input-only", "dark-gray"),
    "dga-output-only": ("dga", "output-only", "dark-gray"),
    "dga-both": ("dga", "both", "dark-gray"),
}
DATASETS = ("banking77", "sst2")


@dataclass
class Budget:
    epochs: int = 5
    batch_size: int = 32
    lr: float = 2e-3
    val_fraction: float = 0.1
    patience: int = 2
    max_train: int | None = None  # sample of train (after carving validation)
    max_val: int | None = None
    max_test: int | None = None
    probe_cs: list[float] = field(default_factory=lambda: [0.3, 1.0, 3.0, 10.0, 30.0, 100.0])


def _data(dataset: str, data_dir, budget: Budget, seed: int):
    from exotune.data import load_dataset

    full = load_dataset(dataset, "train", data_dir)
    train, val = full.split(budget.val_fraction, seed=seed)
    test = load_dataset(dataset, "test", data_dir)
    if budget.max_train:
        train = train.head(budget.max_train, seed)
    if budget.max_val:
        val = val.head(budget.max_val, seed)
    if budget.max_test:
        test = test.head(budget.max_test, 0)
    return train, val, test


def _timed_eval(model, data, batch_size=128):
    t = time.perf_counter()
    metrics = model.evaluate(data, batch_size=batch_size)
    return metrics, len(data) / (time.perf_counter() - t)


def run_one(name: str, dataset: str, seed: int, data_dir, budget: Budget, backbone) -> dict:
    """One (method, dataset, seed) run; meant for a fresh process (see ``run_isolated``)."""
    import torch

    from exotune.boxes import load_box
    from exotune.graybox import DGAConfig
    from exotune.tasks.classification import TextClassifier
    from exotune.train import TrainConfig, Trainer, seed_everything

    torch.set_num_threads(max(1, torch.get_num_threads()))
    seed_everything(seed)
    method, variant, access = METHODS[name]
    train, val, test = _data(dataset, data_dir, budget, seed)
    box = load_box(backbone)
    rec = {"dataset": dataset, "split": "test", "method": method, "variant": variant, "access": access,
           "seed": seed, "train_seconds": 0.0, "seconds_per_step": None}
    if method == "zero-shot":
        model = TextClassifier(box, train.label_names)
        rec["trainable_params"] = 0
        rec["metrics"], rec["eval_examples_per_second"] = _timed_eval(model, test)
    elif method == "linear-probe":
        rec.update(_linear_probe(box, train, val, test, budget, seed))
    else:
        model = TextClassifier(box, train.label_names, DGAConfig.variant(variant))
        cfg = TrainConfig(epochs=budget.epochs, batch_size=budget.batch_size, lr=budget.lr,
                          patience=budget.patience, seed=seed)
        result = Trainer(cfg, progress=False).fit(model, train, val)
        rec.update(trainable_params=model.num_trainable(), train_seconds=result.train_seconds,
                   seconds_per_step=result.seconds_per_step, best_epoch=result.best_epoch,
                   val_accuracy=result.best_metric)
        rec["metrics"], rec["eval_examples_per_second"] = _timed_eval(model, test)
    rec["peak_memory_mb"] = peak_memory_mb()
    return rec


def _linear_probe(box, train, val, test, budget: Budget, seed: int) -> dict:
    """Logistic regression on frozen box outputs; C chosen on validation."""
    from sklearn.linear_model import LogisticRegression

    from exotune.tasks.metrics import classification_metrics

    t0 = time.perf_counter()
    x_tr, x_val = box.encode(train.texts).numpy(), box.encode(val.texts).numpy()
    best = None
    for c in budget.probe_cs:
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x_tr, train.labels)
        acc = float((clf.predict(x_val) == np.asarray(val.labels)).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    pred = best[2].predict(box.encode(test.texts).numpy())
    speed = len(test) / (time.perf_counter() - t1)
    n_classes = len(train.label_names)
    params = x_tr.shape[1] * (n_classes if n_classes > 2 else 1) + (n_classes if n_classes > 2 else 1)
    return {"trainable_params": params, "train_seconds": train_seconds, "probe_C": best[1],
            "val_accuracy": best[0], "eval_examples_per_second": speed,
            "metrics": classification_metrics(test.labels, pred, n_classes)}

"""Classification suite: zero-shot, linear probe, DGA variants and the white-box baselines
(LoRA, full fine-tuning) on real datasets.

Every gradient method gets the same budget (epochs, batch size, validation share,
early-stopping patience, training sample); only the learning rate is per method, because
LoRA, full fine-tuning and adapters live at different scales. Every choice (epoch, probe
regularisation) is made on the validation split carved from train; test is touched once per
run, at the end.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from exotune.bench import graymethods
from exotune.bench.common import fit_record, peak_memory_mb, run_record
from exotune.bench.sources import splits
from exotune.defaults import CLASSIFICATION
from exotune.errors import DataError

METHODS = {
    # name: (method, variant, access)
    "zero-shot": ("zero-shot", "prototype", "dark-gray"),
    "linear-probe": ("linear-probe", "logreg", "black"),
    "dga-input-only": ("dga", "input-only", "dark-gray"),
    "dga-output-only": ("dga", "output-only", "dark-gray"),
    "dga-both": ("dga", "both", "dark-gray"),
    "lga": ("lga", "tokens=2", "light-gray"),  # DGA (both) + 2 tokens at every layer's input
    # and any gray-box name bench.graymethods parses: dga-lowrank16, lga-8-upper, ...
    "lora": ("lora", "r=8", "white"),
    "full-ft": ("full-ft", "all", "white"),
}
DATASETS = ("banking77", "sst2")
METRICS = ("accuracy", "macro_f1")
# What a class name is encoded as for the prototype head (zero-shot, DGA, LoRA, full-FT alike):
# "negative"/"positive" alone say little; as a movie review they are what SST-2 means.
LABEL_TEMPLATES = {"banking77": "{}", "sst2": "a {} movie review"}


@dataclass
class Budget:
    # the defaults the committed tables were made with (exotune.defaults)
    epochs: int = CLASSIFICATION.epochs
    batch_size: int = CLASSIFICATION.batch_size
    lr: float = CLASSIFICATION.gray_lr  # gray-box adapters (dga, lga); other methods: method_lr
    method_lr: dict[str, float] = field(default_factory=lambda: dict(CLASSIFICATION.white_lr))
    val_fraction: float = CLASSIFICATION.val_fraction
    patience: int = CLASSIFICATION.patience
    max_train: int | None = None  # sample of train (after carving validation); overrides the per-dataset caps
    max_val: int | None = None
    max_test: int | None = None
    # validation: only phrases of at least this many words (SST-2's test sentences are longer
    # than most of its training phrases); None: all of the carved share
    val_min_words: int | None = None
    # where every gradient method's prototype head starts (ClassificationConfig.prototype_start):
    # None, the class names; "class-means", the training sample's class means through the model
    prototype_start: str | None = None
    # SST-2 has 67k training phrases: a fixed sample keeps the suite (full FT included) near an
    # hour on 2 cores; every method sees the same sample for a given seed.
    dataset_max_train: dict[str, int] = field(default_factory=lambda: {"sst2": 4000})
    dataset_max_val: dict[str, int] = field(default_factory=lambda: {"sst2": 2000})
    probe_cs: list[float] = field(default_factory=lambda: [0.3, 1.0, 3.0, 10.0, 30.0, 100.0])
    # TrainConfig options of every trained method beyond rates and budget (ema, group_by_length)
    train_options: dict = field(default_factory=dict)
    group_lr: dict[str, float] = field(default_factory=dict)  # "dga.tokens": 5e-2 (see bench.graymethods)

    def lr_for(self, method: str) -> float:
        return self.method_lr.get(method, self.lr)

    def train_lrs(self, method: str) -> dict:
        """``TrainConfig`` fields: the peak rate and any per-group rates of ``method``."""
        return {"lr": self.lr_for(method), **graymethods.group_rates(self.group_lr, method)}

    def train_cap(self, dataset: str) -> int | None:
        return self.max_train or self.dataset_max_train.get(dataset)

    def val_cap(self, dataset: str) -> int | None:
        return self.max_val or self.dataset_max_val.get(dataset)

    def for_dataset(self, dataset: str) -> dict:
        """The budget one dataset's runs get, caps resolved: what its runs are logged and
        written under, so another dataset's cap never changes this dataset's runs."""
        out = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("max_train", "max_val", "dataset_max_train", "dataset_max_val")
            and (k not in ("group_lr", "train_options", "val_min_words", "prototype_start") or v)
        }  # runs logged before group rates (train options, a validation length, ...) still match
        return {**out, "train_cap": self.train_cap(dataset), "val_cap": self.val_cap(dataset)}


def quick_budget() -> Budget:
    return Budget(epochs=1, max_train=256, max_val=128, max_test=256, probe_cs=[1.0, 10.0])


def split_data(dataset: str, source, budget: Budget, seed: int):
    """(train, validation, test) of a known dataset under the data root ``source``, or of the
    user's files (``source`` a ``UserFiles``), for one seed; then the budget's samples."""
    from exotune.data import load_dataset

    def known(root):
        return load_dataset(dataset, "train", root), None, load_dataset(dataset, "test", root)

    train, val, test = splits(source, budget.val_fraction, seed, known)
    if budget.val_min_words:
        val = long_texts(val, budget.val_min_words)
    if budget.train_cap(dataset):
        train = train.head(budget.train_cap(dataset), seed)
    if budget.val_cap(dataset):
        val = val.head(budget.val_cap(dataset), seed)
    if budget.max_test:
        test = test.head(budget.max_test, 0)
    return train, val, test


def long_texts(data, min_words: int):
    """The examples of ``data`` whose text has at least ``min_words`` words; a clear error if none."""
    keep = [i for i, text in enumerate(data.texts) if len(text.split()) >= min_words]
    if not keep:
        raise DataError(f"{data.name}: no validation text has {min_words} words or more; lower --val-min-words")
    return data.subset(keep)


def timed_eval(model, data, batch_size=128):
    t = time.perf_counter()
    metrics = model.evaluate(data, batch_size=batch_size)
    return metrics, len(data) / (time.perf_counter() - t)


def _gradient_model(name: str, train, task, backbone):
    """The model a gradient method trains (DGA, LGA, LoRA, full FT), its head started as ``task``
    says (``start_head``), and its extra record fields."""
    from exotune.tasks.classification import TextClassifier

    method, variant, access = graymethods.describe(name, METHODS)
    if access == "white":
        from exotune.whitebox import WhiteBoxClassifier, WhiteBoxConfig

        wb = WhiteBoxConfig.lora(r=8) if method == "lora" else WhiteBoxConfig.full_ft()
        model = WhiteBoxClassifier.from_backbone(backbone, train.label_names, wb, task)
        extra = {"variant": wb.variant_name, "whitebox": wb.to_dict()}
    else:
        gray = graymethods.parse(name)
        box = gray.load_box(backbone)
        dga = gray.dga_config(box)
        model = TextClassifier(box, train.label_names, dga, task)
        gray.init_tokens(model.encoder, train.label_names, train.texts)
        extra = {"dga": dga.to_dict()}
    model.start_head(train)
    return model, extra


def run_one(name: str, dataset: str, seed: int, source, budget: Budget, backbone) -> dict:
    """One (method, dataset, seed) run; meant for a fresh process (see ``run_isolated``).
    ``source``: the data root of the known datasets, or the user's ``UserFiles``."""
    import torch

    from exotune.boxes import load_box
    from exotune.tasks.classification import ClassificationConfig, TextClassifier
    from exotune.train import seed_everything

    seed_everything(seed)
    method, variant, access = graymethods.describe(name, METHODS)
    train, val, test = split_data(dataset, source, budget, seed)
    task = ClassificationConfig(  # the start is read by trained methods only (start_head)
        label_template=LABEL_TEMPLATES.get(dataset, "{}"), prototype_start=budget.prototype_start or "names"
    )
    rec = {
        **run_record(dataset, seed, (method, variant, access), train, val, test),
        "n_classes": len(train.label_names),  # the head, hence trainable parameters, grows with it
        "label_template": None if method == "linear-probe" else task.label_template,
    }
    if method == "zero-shot":
        model = TextClassifier(load_box(backbone), train.label_names, config=task)
        rec["trainable_params"] = 0
        rec["metrics"], rec["eval_examples_per_second"] = timed_eval(model, test)
    elif method == "linear-probe":
        rec.update(_linear_probe(load_box(backbone), train, val, test, budget, seed))
    else:
        model, extra = _gradient_model(name, train, task, backbone)
        rec.update(extra)
        rec.update(_fit(model, train, val, test, budget, budget.train_lrs(method), seed))
    rec["peak_memory_mb"] = peak_memory_mb()
    rec["threads"] = torch.get_num_threads()  # training seconds depend on it (OMP_NUM_THREADS)
    return rec


def step_time(name: str, dataset: str, data_dir, budget: Budget, backbone, steps: int = 30, warmup: int = 3) -> dict:
    """Seconds per training step of one gradient method on one fixed batch (``budget.batch_size``
    examples drawn once with seed 0, the same for every method): forward, backward and the
    optimiser step, as the training loop takes them; the median over ``steps`` after ``warmup``.
    Meant for a fresh process: the peak memory is this method's alone."""
    import statistics

    import torch

    from exotune.graybox import GrayBoxModel
    from exotune.tasks.classification import ClassificationConfig
    from exotune.train import seed_everything

    seed_everything(0)
    method, variant, access = graymethods.describe(name, METHODS)
    train, _, _ = split_data(dataset, data_dir, budget, 0)
    batch = train.head(budget.batch_size, 0)
    model, extra = _gradient_model(
        name, train, ClassificationConfig(label_template=LABEL_TEMPLATES.get(dataset, "{}")), backbone
    )
    model.train()
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=budget.lr_for(method))
    # A tower that keeps the plain box's outputs per text (token-conditioned) forgets them before
    # each step: every step pays the gradient-free call a text costs in its first epoch.
    towers = [m for m in model.modules() if isinstance(m, GrayBoxModel)]
    times = []
    for i in range(warmup + steps):
        for tower in towers:
            tower.forget_plain_outputs()
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model.loss(batch).backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    median = statistics.median(times)
    # the results format's fields: the measured quantity is the metric (median s/step, over one seed)
    return {
        "dataset": dataset,
        "split": "train",
        "method": method,
        "variant": extra.get("variant", variant),
        "access": access,
        "metric": "seconds_per_step",
        "mean": median,
        "std": float(np.std(times)),
        "seeds": [0],
        "train_seconds": float(sum(times)),
        "batch_size": len(batch),
        "trainable_params": sum(p.numel() for p in params),
        "steps": steps,
        "seconds_per_step": median,
        "seconds_per_step_p90": float(np.percentile(times, 90)),
        "peak_memory_mb": peak_memory_mb(),
        "threads": torch.get_num_threads(),
    }


def _fit(model, train, val, test, budget: Budget, lrs: dict, seed: int) -> dict:
    """The shared gradient protocol: the same Trainer, budget and selection for every method;
    ``lrs``: the ``TrainConfig`` rates (``lr`` and any per-group ``lr_tokens``, ...)."""
    rec = {"trainable_params": model.num_trainable(), **fit_record(model, train, val, budget, lrs, seed, "accuracy")}
    rec["metrics"], rec["eval_examples_per_second"] = timed_eval(model, test)
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
    return {
        "trainable_params": params,
        "train_seconds": train_seconds,
        "probe_C": best[1],
        "val_accuracy": best[0],
        "eval_examples_per_second": speed,
        "metrics": classification_metrics(test.labels, pred, n_classes),
    }

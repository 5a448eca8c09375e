"""One source of training defaults: the budgets and learning rates the committed tables
(benchmarks/results/classification.json, retrieval.json, ea.json) were made with. ``exotune
bench`` and ``exotune train`` take their defaults from here, and every results file records
them; a test checks them against the committed results.

The learning rates are what a validation-only sweep chose (benchmarks/lr-sweep): the gray-box
methods (DGA, LGA) share one rate; LoRA and full fine-tuning live at their own scales (LoRA's
B starts at zero; full fine-tuning of every weight wants a BERT-style rate).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from exotune.errors import ConfigError

GRAY_METHODS = ("dga", "lga")
WHITE_METHODS = ("lora", "full-ft")


@dataclass(frozen=True)
class Defaults:
    """The budget every gradient method of a task gets, and each method's learning rate."""

    epochs: int
    batch_size: int
    patience: int  # epochs without validation gain before stopping
    val_fraction: float  # validation carved from train when no validation split is given
    gray_lr: float  # dga and lga
    white_lr: dict[str, float] = field(default_factory=dict)  # lora, full-ft

    def lr_for(self, method: str) -> float:
        """The learning rate of a gradient method: ``dga``, ``lga``, ``lora`` or ``full-ft``."""
        if method in GRAY_METHODS:
            return self.gray_lr
        if method in self.white_lr:
            return self.white_lr[method]
        raise ConfigError(f"no default learning rate for method {method!r}; known: {[*GRAY_METHODS, *self.white_lr]}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["lr"] = {m: self.lr_for(m) for m in (*GRAY_METHODS, *self.white_lr)}
        return out


CLASSIFICATION = Defaults(
    epochs=5, batch_size=32, patience=2, val_fraction=0.1, gray_lr=5e-3, white_lr={"lora": 2e-3, "full-ft": 2e-4}
)
RETRIEVAL = Defaults(
    epochs=10, batch_size=32, patience=2, val_fraction=0.1, gray_lr=2e-3, white_lr={"lora": 2e-3, "full-ft": 2e-4}
)
# the LoRA baseline of the EA suite is the classification suite's LoRA run
TASK_DEFAULTS = {"classification": CLASSIFICATION, "retrieval": RETRIEVAL}


def for_task(task: str) -> Defaults:
    """The defaults of ``exotune train --task TASK``: image tasks have no committed tables and
    take the classification ones."""
    return TASK_DEFAULTS.get(task, CLASSIFICATION)

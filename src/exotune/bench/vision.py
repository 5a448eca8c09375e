"""Vision suite: zero-shot, DGA variants, LGA, LoRA and full fine-tuning on image-text retrieval, both towers of one
CLIP-family model (``--backbone NAME|PATH``: a Hugging Face CLIP, SigLIP or BLIP checkpoint, a
local folder, or ``open_clip:MODEL@PRETRAINED``) on the user's captioned images (``--data``:
the caption files ``exotune train --task image-retrieval`` reads, with the same loaders).

Every gradient method gets the same budget (epochs, batch, early stopping; the gray-box methods
one learning rate, LoRA and full fine-tuning their own, as in the classification suite); the
epoch is chosen on validation (mean recall), and the test split is scored once per run.
Validation is the data's own (a Karpathy-split file's ``val``, or ``--val-file``), else a
share of the training images carved off whole (an image keeps all its captions).

The white-box rows (``exotune.whitebox.pair``) train both towers of the same checkpoint with
the same loss, temperature and evaluation: LoRA (PEFT, r=8) on both towers' attention
projections, or every weight of both towers (Hugging Face checkpoints; not open_clip). Video
and sketch retrieval are not in the suite yet.

``--quick`` runs on a tiny random ``CLIPModel`` built here (``exotune.bench.tiny_clip``) and
drawn images, so CI can run the suite end to end; its numbers say nothing about real models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from exotune.bench import graymethods
from exotune.bench.classification import timed_eval
from exotune.bench.common import fit_record, peak_memory_mb, run_record
from exotune.defaults import for_task
from exotune.errors import ConfigError

METHODS = {
    # name: (method, variant, access); and any gray-box name bench.graymethods parses
    "zero-shot": ("zero-shot", "bare towers", "dark-gray"),
    "dga-input-only": ("dga", "input-only", "dark-gray"),
    "dga-output-only": ("dga", "output-only", "dark-gray"),
    "dga-both": ("dga", "both", "dark-gray"),
    "lga-2": ("lga", "tokens=2", "light-gray"),
    "lora": ("lora", "r=8, both towers", "white"),
    "full-ft": ("full-ft", "all, both towers", "white"),
}
DATASETS = ("shapes",)  # drawn images (--quick); real data comes with --data
METRICS = ("mean_recall", "t2i_recall@1", "t2i_recall@5", "t2i_recall@10", "i2t_recall@1", "i2t_recall@5")
DEFAULTS = for_task("image-retrieval")  # what exotune train --task image-retrieval runs with
DEFAULT_BACKBONE = "tiny-random-clip"  # the records' name of the model --quick builds (no --backbone)
METHOD_LR = dict(DEFAULTS.white_lr)  # LoRA's and full fine-tuning's rates; the gray-box methods: Budget.lr


@dataclass
class Budget:
    epochs: int = DEFAULTS.epochs
    batch_size: int = DEFAULTS.batch_size
    lr: float = DEFAULTS.gray_lr  # the gray-box methods: DGA and LGA share one rate; others: method_lr
    method_lr: dict[str, float] = field(default_factory=lambda: dict(METHOD_LR))
    val_fraction: float = DEFAULTS.val_fraction
    patience: int = DEFAULTS.patience
    max_train: int | None = None  # training captions
    max_val: int | None = None
    max_test: int | None = None
    # TrainConfig options of every trained method beyond rates and budget (ema, group_by_length)
    train_options: dict = field(default_factory=dict)

    def lr_for(self, method: str) -> float:
        return self.method_lr.get(method, self.lr)

    def train_lrs(self, method: str) -> dict:
        return {"lr": self.lr_for(method)}

    def for_dataset(self, dataset: str) -> dict:
        """What runs are logged under: the fields, ``method_lr`` only when changed from
        ``METHOD_LR``, so that runs logged before the white-box rows existed still match."""
        out = asdict(self)
        if self.method_lr == METHOD_LR:
            del out["method_lr"]
        return out


def quick_budget() -> Budget:
    return Budget(epochs=2, batch_size=9, patience=2)


def check(args) -> None:
    """What the suite needs beyond the generic options: a backbone and data, unless ``--quick``."""
    if args.quick:
        return
    if not args.backbone:
        raise ConfigError(
            "the vision suite needs --backbone: a CLIP, SigLIP or BLIP checkpoint (a name, a local folder, "
            "or open_clip:MODEL@PRETRAINED); --quick runs it on a tiny random CLIP instead"
        )
    if not args.data:
        raise ConfigError(
            "the vision suite needs --data: your captioned images (a caption file, as for exotune train "
            "--task image-retrieval --captions, with --test-file, or a Karpathy-split .json); --quick "
            "runs it on drawn images instead"
        )


def _data(dataset: str, source, budget: Budget, seed: int):
    """(train, validation, test): the user's caption files, or the drawn shapes; then the budget's samples."""
    from exotune.bench.sources import splits
    from exotune.bench.tiny_clip import shape_captions

    def drawn(_root):
        return shape_captions(3, seed=1), shape_captions(1, seed=2), shape_captions(2, seed=3)

    train, val, test = splits(source, budget.val_fraction, seed, drawn)
    if budget.max_train:
        train = train.head(budget.max_train, seed)
    if budget.max_val:
        val = val.head(budget.max_val, seed)
    if budget.max_test:
        test = test.head(budget.max_test, 0)
    return train, val, test


def _pair(backbone: str | None, gray):
    """The (text, image) boxes: light-gray with entry points at every layer for LGA."""
    from exotune.boxes import clip_boxes
    from exotune.boxes.loading import load_clip_boxes

    lga = gray is not None and gray.tokens is not None
    options = {"entry_points": "all", "entry_tokens_max": max(8, gray.tokens)} if lga else {}
    if backbone is None:
        from exotune.bench.tiny_clip import build_tiny_clip

        return clip_boxes(*build_tiny_clip(seed=0), **options)
    return load_clip_boxes(backbone, **options)


def _model(name: str, backbone: str | None):
    from exotune.graybox import DGAConfig
    from exotune.tasks.image_text import ImageTextConfig, ImageTextRetriever

    method, _, access = graymethods.describe(name, METHODS)
    if access == "white":
        model = _white_model(method, backbone)
        return model, None, {"whitebox": model.whitebox.to_dict()}
    gray = graymethods.parse(name) if method != "zero-shot" else None
    text_box, image_box = _pair(backbone, gray)
    if gray is None:
        none, bare = DGAConfig.variant("none"), ImageTextConfig(learn_temperature=False)
        return ImageTextRetriever(text_box, image_box, none, none, bare), gray, {}
    text_dga, image_dga = gray.dga_config(text_box), gray.dga_config(image_box, "image")
    model = ImageTextRetriever(text_box, image_box, text_dga, image_dga)
    return model, gray, {"dga": image_dga.to_dict(), "text_dga": text_dga.to_dict()}


def _white_model(method: str, backbone: str | None):
    """Both towers of the checkpoint, owned: LoRA (r=8, the family's attention projections) or all."""
    from exotune.whitebox import WhiteBoxConfig, WhiteBoxPairRetriever

    wb = None if method == "lora" else WhiteBoxConfig.full_ft()
    if backbone is None:
        from exotune.bench.tiny_clip import build_tiny_clip

        return WhiteBoxPairRetriever(*build_tiny_clip(seed=0), wb)
    return WhiteBoxPairRetriever.from_backbone(backbone, wb)


def run_one(name: str, dataset: str, seed: int, source, budget: Budget, backbone) -> dict:
    """One (method, dataset, seed) run; meant for a fresh process (see ``run_isolated``).
    ``source``: the user's ``CaptionFiles``, or None for the drawn shapes; ``backbone`` None:
    the tiny random CLIP."""
    import torch

    from exotune.train import seed_everything

    seed_everything(seed)
    method, variant, access = graymethods.describe(name, METHODS)
    train, val, test = _data(dataset, source, budget, seed)
    model, gray, extra = _model(name, backbone)
    if gray is not None:
        gray.init_tokens(model.text_tower, None, train.captions)
    rec = {
        **run_record(dataset, seed, (method, variant, access), train, val, test),
        "n_test_images": len(test.images),
        **extra,
        "trainable_params": model.num_trainable(),
    }
    if method != "zero-shot":
        rec.update(fit_record(model, train, val, budget, budget.train_lrs(method), seed, "mean_recall"))
    rec["metrics"], rec["eval_examples_per_second"] = timed_eval(model, test)  # once: the epoch chosen on validation
    rec["peak_memory_mb"] = peak_memory_mb()
    rec["threads"] = torch.get_num_threads()
    return rec

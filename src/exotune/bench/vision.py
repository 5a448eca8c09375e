"""Vision suite: zero-shot, DGA variants, LGA, LoRA and full fine-tuning on image-text retrieval
(``--task image-retrieval``, the default), text-video retrieval (``--task video-retrieval``) or
sketch-to-photo retrieval (``--task sketch-retrieval``, below): both towers of one CLIP-family
model (``--backbone NAME|PATH``: a Hugging Face CLIP, SigLIP or BLIP checkpoint, a local folder,
or ``open_clip:MODEL@PRETRAINED``) on the user's captioned images or videos (``--data``: the
caption files ``exotune train --task image-retrieval`` or ``video-retrieval`` reads, with the
same loaders; ``--images`` / ``--videos`` their folder).

Every gradient method gets the same budget (epochs, batch, early stopping; the gray-box methods
one learning rate, LoRA and full fine-tuning their own, as in the classification suite); the
epoch is chosen on validation (mean recall), and the test split is scored once per run.
Validation is the data's own (a Karpathy-split file's ``val``, or ``--val-file``), else a
share of the training images (videos) carved off whole (one keeps all its captions). A video is
``Budget.frames`` frames sampled uniformly, pooled by their mean (``exotune.tasks.video_text``).

The white-box rows (``exotune.whitebox.pair``) train both towers of the same checkpoint with
the same loss, temperature and evaluation: LoRA (PEFT, r=8) on both towers' attention
projections, or every weight of both towers (Hugging Face checkpoints; not open_clip).

Sketch-to-photo retrieval (``exotune.tasks.sketch``): two image towers over one image box (the
image tower of ``--backbone``, or a ViT / DINOv2 checkpoint), each with its own adapters, on
Sketchy's root or two class folders (``--sketches DIR [--photos DIR]``, as ``exotune train --task
sketch-retrieval`` reads them). The test split is ``--unseen-classes`` of the classes (default
0.2, chosen by ``--class-seed``), sketches and photos no method trains or validates on; validation
is a share of the other classes' sketches against their photos; the epoch is chosen on its
mAP@all. Rows report mAP@all, P@100 and instance acc@1 (where sketches are paired with their
photos). The white-box rows (``WhiteBoxSketchRetriever``) train the vision tower of a CLIP,
SigLIP or BLIP checkpoint, one tower shared by sketches and photos (LoRA on its attention
projections, or all its weights).

``--quick`` runs on a tiny random ``CLIPModel`` built here (``exotune.bench.tiny_clip``) and
drawn images (or videos: frame folders; or sketches, outlines, and photos, filled shapes, of five
classes, two of them unseen), so CI can run the suite end to end; its numbers say
nothing about real models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from exotune.bench import graymethods
from exotune.bench.classification import timed_eval
from exotune.bench.common import fit_record, peak_memory_mb, run_record
from exotune.defaults import for_task
from exotune.errors import ConfigError
from exotune.tasks.metrics import SKETCH_METRICS  # not tasks.sketch: the suite imports no torch at load

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
# the white-box rows' variants on sketches: the one vision tower both sides cross
SKETCH_WHITE = {"lora": "r=8, vision tower (shared)", "full-ft": "all, vision tower (shared)"}
# drawn images, videos, sketches (--quick, by --task); real data comes with --data or --sketches
DATASETS = ("shapes", "shape-videos", "shape-sketches")
DATASET_TASK = {"shapes": "image-retrieval", "shape-videos": "video-retrieval", "shape-sketches": "sketch-retrieval"}
QUICK_UNSEEN = 0.4  # the drawn sketches' test classes: 2 of 5
METRICS = ("mean_recall", "t2i_recall@1", "t2i_recall@5", "t2i_recall@10", "i2t_recall@1", "i2t_recall@5")
VIDEO_METRICS = ("mean_recall", "t2v_recall@1", "t2v_recall@5", "t2v_recall@10", "v2t_recall@1", "t2v_median_rank")
TASK_METRICS = {"image-retrieval": METRICS, "video-retrieval": VIDEO_METRICS, "sketch-retrieval": SKETCH_METRICS}
FRAMES = 8  # sampled per video (VideoTextConfig's default)
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
    frames: int = FRAMES  # video-retrieval: frames sampled per video
    # TrainConfig options of every trained method beyond rates and budget (ema, group_by_length)
    train_options: dict = field(default_factory=dict)

    def lr_for(self, method: str) -> float:
        return self.method_lr.get(method, self.lr)

    def train_lrs(self, method: str) -> dict:
        return {"lr": self.lr_for(method)}

    def for_dataset(self, dataset: str) -> dict:
        """What runs are logged under: the fields, ``method_lr`` and ``frames`` only when changed
        from their defaults, so that runs logged before them still match."""
        out = asdict(self)
        if self.method_lr == METHOD_LR:
            del out["method_lr"]
        if self.frames == FRAMES:
            del out["frames"]
        return out


def run_metrics(run: dict) -> tuple[str, ...]:
    """The metrics a run's rows report: its task's (image runs logged before tasks have none);
    a sketch run without known pairings has no instance acc@1."""
    metrics = TASK_METRICS[run.get("task", "image-retrieval")]
    return tuple(m for m in metrics if m != "acc@1" or run.get("n_test_pairs"))


def default_datasets(args) -> list[str]:
    """Without data: the drawn dataset of ``--task``."""
    task = args.task or "image-retrieval"
    return [next(d for d, t in DATASET_TASK.items() if t == task)]


def quick_budget() -> Budget:
    return Budget(epochs=2, batch_size=9, patience=2)


def check(args) -> None:
    """What the suite needs beyond the generic options: a backbone and data, unless ``--quick``."""
    if args.task and args.datasets and any(DATASET_TASK.get(d, args.task) != args.task for d in args.datasets):
        raise ConfigError(f"--task {args.task} runs on {default_datasets(args)[0]}; --datasets names another task's")
    if args.unseen_classes is not None and not args.sketches:
        raise ConfigError(
            f"--unseen-classes chooses the test classes of --sketches; --quick's drawn sketches hold out "
            f"{QUICK_UNSEEN:g} of theirs"
        )
    if args.quick:
        return
    sketch = args.task == "sketch-retrieval"
    if not args.backbone:
        raise ConfigError(
            "the vision suite needs --backbone: a CLIP, SigLIP or BLIP checkpoint (a name, a local folder, "
            "or open_clip:MODEL@PRETRAINED)"
            + ("; for sketches also a ViT or DINOv2 one" if sketch else "")
            + "; --quick runs it on a tiny random CLIP instead"
        )
    if sketch and not args.sketches:
        raise ConfigError(
            "--task sketch-retrieval needs --sketches DIR: Sketchy's root (sketch/ and photo/ inside), or "
            "sketches in class sub-folders with --photos DIR; --quick runs it on drawn sketches instead"
        )
    if not args.data and not sketch:
        raise ConfigError(
            "the vision suite needs --data: your captioned images or videos (a caption file, as for exotune "
            "train --task image-retrieval|video-retrieval --captions, with --test-file, or a Karpathy-split "
            ".json, MSR-VTT's MSRVTT_data.json); --quick runs it on drawn images or videos instead"
        )


def _data(dataset: str, source, budget: Budget, seed: int, task: str, folder: Path):
    """(train, validation, test): the user's caption files, or the drawn shapes (videos: frame
    folders written under ``folder``); then the budget's samples."""
    from exotune.bench.sources import splits
    from exotune.bench.tiny_clip import shape_captions, shape_sketches, shape_videos

    def drawn(_root):
        if task == "sketch-retrieval":
            seen, unseen = shape_sketches(3, 2, seed=1).class_split(QUICK_UNSEEN, seed=0)
            return seen, None, unseen
        if task == "video-retrieval":
            return tuple(
                shape_videos(folder / part, n, seed=k)
                for part, n, k in (("train", 3, 1), ("val", 1, 2), ("test", 2, 3))
            )
        return shape_captions(3, seed=1), shape_captions(1, seed=2), shape_captions(2, seed=3)

    train, val, test = splits(source, budget.val_fraction, seed, drawn)
    if budget.max_train:
        train = train.head(budget.max_train, seed)
    if budget.max_val:
        val = val.head(budget.max_val, seed)
    if budget.max_test:
        test = test.head(budget.max_test, 0)
    return train, val, test


def _pair(backbone: str | None, gray, image_only: bool = False):
    """The (text, image) boxes, light-gray with entry points at every layer for LGA; ``image_only``:
    the image box alone (of a CLIP pair, or a ViT / DINOv2 checkpoint)."""
    from exotune.boxes import clip_boxes
    from exotune.boxes.loading import load_clip_boxes, load_image_box

    options = {} if gray is None else gray.box_options()
    if backbone is None:
        from exotune.bench.tiny_clip import build_tiny_clip

        pair = clip_boxes(*build_tiny_clip(seed=0), **options)
        return pair.image if image_only else pair
    return load_image_box(backbone, **options) if image_only else load_clip_boxes(backbone, **options)


def _sketch_model(name: str, backbone: str | None):
    """Two image towers over one image box, each with its own adapters (white-box: the owned
    vision tower, shared); as ``_model``."""
    from exotune.graybox import DGAConfig
    from exotune.tasks.sketch import SketchConfig, SketchPhotoRetriever

    method, _, access = graymethods.describe(name, METHODS)
    if access == "white":
        model = _white_model(method, backbone, None, sketch=True)
        return model, None, {"whitebox": model.whitebox.to_dict()}
    gray = graymethods.parse(name) if method != "zero-shot" else None
    if gray is not None and gray.init != "random":
        raise ConfigError(f"{name}: -init starts tokens from words; sketch retrieval has no text tower")
    box = _pair(backbone, gray, image_only=True)
    if gray is None:
        none = DGAConfig.variant("none", modality="image")
        return SketchPhotoRetriever(box, box, none, none, SketchConfig(learn_temperature=False)), None, {}
    dga = gray.dga_config(box, "image")
    return SketchPhotoRetriever(box, box, dga, dga, SketchConfig()), gray, {"dga": dga.to_dict()}


def _model(name: str, backbone: str | None, task: str, frames: int):
    from exotune.graybox import DGAConfig
    from exotune.tasks.image_text import ImageTextConfig, ImageTextRetriever
    from exotune.tasks.video_text import VideoTextConfig, VideoTextRetriever

    if task == "sketch-retrieval":
        return _sketch_model(name, backbone)
    method, _, access = graymethods.describe(name, METHODS)
    video = task == "video-retrieval"
    config_cls, options = (VideoTextConfig, {"frames": frames}) if video else (ImageTextConfig, {})
    if access == "white":
        model = _white_model(method, backbone, config_cls(**options) if video else None)
        return model, None, {"whitebox": model.whitebox.to_dict()}
    retriever = VideoTextRetriever if video else ImageTextRetriever
    gray = graymethods.parse(name) if method != "zero-shot" else None
    text_box, image_box = _pair(backbone, gray)
    if gray is None:
        none, bare = DGAConfig.variant("none"), config_cls(learn_temperature=False, **options)
        return retriever(text_box, image_box, none, none, bare), gray, {}
    text_dga, image_dga = gray.dga_config(text_box), gray.dga_config(image_box, "image")
    model = retriever(text_box, image_box, text_dga, image_dga, config_cls(**options))
    return model, gray, {"dga": image_dga.to_dict(), "text_dga": text_dga.to_dict()}


def _white_model(method: str, backbone: str | None, video, sketch: bool = False):
    """Both towers of the checkpoint, owned: LoRA (r=8, the family's attention projections) or
    all; ``video``: a ``VideoTextConfig`` for text-video retrieval, else None; ``sketch``: its
    vision tower only, for sketches and photos alike."""
    from exotune.whitebox import WhiteBoxConfig, WhiteBoxPairRetriever, WhiteBoxSketchRetriever, WhiteBoxVideoRetriever

    wb = None if method == "lora" else WhiteBoxConfig.full_ft()
    retriever = WhiteBoxPairRetriever if video is None else WhiteBoxVideoRetriever
    retriever = WhiteBoxSketchRetriever if sketch else retriever
    if backbone is None:
        from exotune.bench.tiny_clip import build_tiny_clip

        return retriever(*build_tiny_clip(seed=0), wb, video)
    return retriever.from_backbone(backbone, wb, video)


def run_one(name: str, dataset: str, seed: int, source, budget: Budget, backbone) -> dict:
    """One (method, dataset, seed) run; meant for a fresh process (see ``run_isolated``).
    ``source``: the user's ``CaptionFiles`` or ``SketchFolders``, or None for the drawn shapes
    (videos, written to a temporary folder for the run; sketches); ``backbone`` None: the tiny
    random CLIP."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="exotune-vision-") as folder:
        return _run(name, dataset, seed, source, budget, backbone, Path(folder))


def _run(name: str, dataset: str, seed: int, source, budget: Budget, backbone, folder: Path) -> dict:
    import torch

    from exotune.train import seed_everything

    seed_everything(seed)
    method, variant, access = graymethods.describe(name, METHODS)
    task = getattr(source, "task", None) or DATASET_TASK[dataset]
    train, val, test = _data(dataset, source, budget, seed, task, folder)
    model, gray, extra = _model(name, backbone, task, budget.frames)
    sketch = task == "sketch-retrieval"
    if gray is not None and not sketch:
        gray.init_tokens(model.text_tower, None, train.captions)
    if sketch and access == "white":
        variant = SKETCH_WHITE[method]
    rec = {
        **run_record(dataset, seed, (method, variant, access), train, val, test),
        **_test_fields(task, test, budget.frames),
        **extra,
        "trainable_params": model.num_trainable(),
    }
    if method != "zero-shot":
        rec.update(fit_record(model, train, val, budget, budget.train_lrs(method), seed, TASK_METRICS[task][0]))
    rec["metrics"], rec["eval_examples_per_second"] = timed_eval(model, test)  # once: the epoch chosen on validation
    rec["peak_memory_mb"] = peak_memory_mb()
    rec["threads"] = torch.get_num_threads()
    return rec


def _test_fields(task: str, test, frames: int) -> dict:
    """The record's fields on the test split beyond its size (``n_test``: captions, sketches)."""
    if task == "video-retrieval":
        return {"task": task, "frames": frames, "n_test_videos": len(test.videos)}
    if task == "sketch-retrieval":
        return {
            "task": task,
            "n_test_photos": len(test.photos),
            "n_test_classes": len(set(test.sketch_labels)),
            "n_test_pairs": sum(p >= 0 for p in test.sketch_photo),
        }
    return {"n_test_images": len(test.images)}

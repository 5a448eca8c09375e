"""A user's own data for a suite: labelled text files (classification, ea), a BEIR folder
(retrieval) or captioned images (vision). Each names its runs in the run log by paths, columns and file digests, so an
interrupted suite resumes, and an edited file is run again rather than reused."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exotune.errors import ConfigError

KNOWN_NAMES = ("banking77", "sst2", "scifact")  # a user's data never takes a known dataset's caps
GENERIC_STEMS = ("train", "training", "corpus", "data")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"


def _name(path: Path) -> str:
    """The table's heading: the file's stem, or its folder's name for a generic stem."""
    stem = path.stem if path.suffix else path.name
    name = path.resolve().parent.name if stem.lower() in GENERIC_STEMS and path.suffix else stem
    return f"{name}-own" if name in KNOWN_NAMES else name


@dataclass(frozen=True)
class UserFiles:
    """Labelled text files: train and test, validation carved from train unless given."""

    train: str
    test: str
    val: str | None = None
    text_column: str = "text"
    label_column: str = "label"

    @property
    def name(self) -> str:
        return _name(Path(self.train))

    def key(self) -> dict:
        files = {"train": self.train, "val": self.val, "test": self.test}
        return {
            "files": files,
            "columns": [self.text_column, self.label_column],
            "sha256": {k: _digest(Path(v)) for k, v in files.items() if v},
        }

    def load(self):
        """(train, validation or None, test) on the training file's label set."""
        from exotune.data import load_text_files

        return load_text_files(self.train, self.val, self.test, self.text_column, self.label_column)


@dataclass(frozen=True)
class BeirFolder:
    """A BEIR folder: corpus.jsonl, queries.jsonl, qrels/train.tsv and qrels/test.tsv; its
    qrels/dev.tsv is the validation split when present, else validation is carved from train."""

    path: str

    @property
    def name(self) -> str:
        return _name(Path(self.path))

    def key(self) -> dict:
        folder = Path(self.path)
        files = ["corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/dev.tsv", "qrels/test.tsv"]
        return {"beir_dir": self.path, "sha256": {f: _digest(folder / f) for f in files}}

    def load(self):
        """(train, validation or None, test) over one corpus."""
        from exotune.data import load_beir

        folder = Path(self.path)
        train = load_beir(folder, "train")
        val = load_beir(folder, "dev", corpus=train.corpus) if (folder / "qrels" / "dev.tsv").is_file() else None
        return train, val, load_beir(folder, "test", corpus=train.corpus)


VISION_TASKS = ("image-retrieval", "video-retrieval", "sketch-retrieval")
SPLIT_FILES = {"image-retrieval": ".json", "video-retrieval": "MSRVTT_data.json"}  # their own splits


@dataclass(frozen=True)
class CaptionFiles:
    """Captioned images (or videos: ``task="video-retrieval"``), read as ``exotune train --task
    image-retrieval`` (``video-retrieval``) reads them: a caption file (CSV/TSV/JSONL, COCO;
    VATEX) with ``test`` (and optionally ``val``), or a file with its own splits alone (a
    Karpathy-split .json: train, val and test; MSR-VTT's ``MSRVTT_data.json``: train and
    test). Images (videos) are relative to ``images`` (default: as the loaders find them)."""

    train: str
    test: str | None = None
    val: str | None = None
    images: str | None = None  # the images' or the videos' folder
    task: str = "image-retrieval"
    skip_bad: bool = False  # leave out missing or unreadable files (counted), else stop at the first

    @property
    def name(self) -> str:
        return _name(Path(self.train))

    @property
    def split_file(self) -> bool:
        path = Path(self.train)
        own = SPLIT_FILES[self.task]
        return self.test is None and self.val is None and (path.name == own or path.suffix.lower() == own)

    def key(self) -> dict:
        files = {"train": self.train, "val": self.val, "test": self.test}
        skip = {"skip_bad": True} if self.skip_bad else {}  # off: logged as before the option
        if self.task == VISION_TASKS[0]:  # as image runs were logged before tasks
            return {"captions": files, "images": self.images, "sha256": self._digests(files), **skip}
        return {"captions": files, "videos": self.images, "sha256": self._digests(files), "task": self.task, **skip}

    @staticmethod
    def _digests(files: dict) -> dict:
        return {k: _digest(Path(v)) for k, v in files.items() if v}

    def load(self):
        """(train, validation or None, test)."""
        from exotune.data import load_image_captions
        from exotune.data.images import report_skipped
        from exotune.data.videos import load_video_captions

        def read(path: str, split: str | None = None):
            load = load_video_captions if self.task == "video-retrieval" else load_image_captions
            data = load(path, self.images, split=split, skip_bad=self.skip_bad)
            report_skipped(data, "files", f"[bench] {Path(path).name}")
            return data

        if self.split_file:
            val = read(self.train, "val") if self.task == "image-retrieval" else None
            return read(self.train, "train"), val, read(self.train, "test")
        return read(self.train), read(self.val) if self.val else None, read(self.test)


UNSEEN_CLASSES = 0.2  # sketch-retrieval's test classes by default (Sketchy's zero-shot split: 25 of 125)


@dataclass(frozen=True)
class SketchFolders:
    """Sketches and photos, read as ``exotune train --task sketch-retrieval`` reads them: Sketchy's
    root (``sketches``), or class sub-folders of sketches and of ``photos``. The test split is
    ``unseen_classes`` of the classes (chosen by ``class_seed``), sketches and photos alike: none
    of them is trained or validated on, as in zero-shot (unseen-class) sketch retrieval."""

    sketches: str
    photos: str | None = None
    unseen_classes: float = UNSEEN_CLASSES
    class_seed: int = 0
    task: str = "sketch-retrieval"
    skip_bad: bool = False  # leave out missing or unreadable files (counted), else stop at the first

    @property
    def name(self) -> str:
        return _name(Path(self.sketches))

    def key(self) -> dict:
        folders = {"sketches": self.sketches, "photos": self.photos}
        listing = {k: _listing_digest(Path(v)) for k, v in folders.items() if v}
        split = {"unseen_classes": self.unseen_classes, "class_seed": self.class_seed}
        skip = {"skip_bad": True} if self.skip_bad else {}  # off: logged as before the option
        return {**folders, **split, "sha256": listing, "task": self.task, **skip}

    def load(self):
        """(seen classes, None: validation is carved from them, unseen classes)."""
        from exotune.data.images import report_skipped
        from exotune.data.sketches import load_sketch_photos, load_sketchy

        if self.photos:
            data = load_sketch_photos(self.sketches, self.photos, skip_bad=self.skip_bad)
        else:
            data = load_sketchy(self.sketches, skip_bad=self.skip_bad)
        report_skipped(data, "files", f"[bench] {Path(self.sketches).name}")
        seen, unseen = data.class_split(self.unseen_classes, seed=self.class_seed)
        return seen, None, unseen


def _listing_digest(folder: Path) -> str:
    """A digest of the files under ``folder`` (relative paths and sizes): an edited set of images runs again."""
    if not folder.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def splits(source, val_fraction: float, seed: int, known: Callable):
    """(train, validation, test): the user's data when ``source`` is a ``UserFiles`` or
    ``BeirFolder``, else ``known(source)`` (a known dataset under the data root ``source``);
    validation carved from train (``val_fraction``) when none is given."""
    own = (UserFiles, BeirFolder, CaptionFiles, SketchFolders)
    train, val, test = source.load() if isinstance(source, own) else known(source)
    if val is None:
        train, val = train.split(val_fraction, seed=seed)
    return train, val, test


def user_data(args) -> UserFiles | BeirFolder | CaptionFiles | SketchFolders | None:
    """The user's data named by a suite's options (``--file`` with ``--test-file``, ``--beir-dir``,
    ``--data``, or ``--sketches``), or ``None`` for the suite's known datasets."""
    files = args.file or args.val_file or args.test_file
    if not files and not args.beir_dir and not args.data and not args.sketches and not args.photos:
        if args.skip_bad_images:
            raise ConfigError("--skip-bad-images goes with your own images (--data, or --sketches)")
        return None
    takes = {"classification": "file", "ea": "file", "retrieval": "beir", "vision": "data"}.get(args.suite)
    if takes is None:
        raise ConfigError(
            f"suite {args.suite!r} runs on its own datasets; --file, --beir-dir, --data and --sketches "
            "are for the classification, ea, retrieval and vision suites"
        )
    if args.datasets:
        raise ConfigError("--datasets names known datasets; give either it or your own data, not both")
    if not args.out_dir:
        raise ConfigError("your own data needs --out-dir: the folder its results go to")
    if takes == "data":
        return _sketch_folders(args) if args.task == "sketch-retrieval" else _caption_files(args)
    if args.data or args.sketches or args.photos:
        raise ConfigError(
            f"--data and --sketches are the vision suite's images; the {args.suite} suite does not take them"
        )
    if takes == "beir":
        if files:
            raise ConfigError("the retrieval suite takes a BEIR folder (--beir-dir), not --file")
        return BeirFolder(args.beir_dir)
    if args.beir_dir:
        raise ConfigError(f"the {args.suite} suite takes labelled text files (--file), not --beir-dir")
    if not args.file or not args.test_file:
        raise ConfigError(
            "--file (training) and --test-file (scored once per run) are both needed; "
            "--val-file is optional (default: a share of --file)"
        )
    return UserFiles(args.file, args.test_file, args.val_file, args.text_column, args.label_column)


def _sketch_folders(args) -> SketchFolders:
    if args.file or args.beir_dir or args.data or args.val_file or args.test_file:
        raise ConfigError(
            "--task sketch-retrieval takes sketches and photos (--sketches DIR, and --photos DIR unless "
            "Sketchy's root), not caption or text files; its test split is the --unseen-classes"
        )
    if not args.sketches:
        raise ConfigError("--photos goes with --sketches DIR (the sketches' class folders)")
    unseen = UNSEEN_CLASSES if args.unseen_classes is None else args.unseen_classes
    if not 0.0 < unseen < 1.0:
        raise ConfigError(f"--unseen-classes is a share of the classes, in (0, 1); got {unseen}")
    return SketchFolders(args.sketches, args.photos, unseen, args.class_seed, skip_bad=bool(args.skip_bad_images))


def _caption_files(args) -> CaptionFiles:
    if args.file or args.beir_dir:
        raise ConfigError("the vision suite takes captioned images (--data), not --file or --beir-dir")
    if args.sketches or args.photos or args.unseen_classes is not None:
        raise ConfigError("--sketches, --photos and --unseen-classes go with --task sketch-retrieval")
    if not args.data:
        raise ConfigError("--val-file and --test-file go with --data (the training captions)")
    task = args.task or VISION_TASKS[0]
    video = task == "video-retrieval"
    if (args.videos and not video) or (args.images and video):
        raise ConfigError("--images goes with --task image-retrieval, --videos with --task video-retrieval")
    own = CaptionFiles(
        args.data,
        args.test_file,
        args.val_file,
        args.videos if video else args.images,
        task,
        skip_bad=bool(args.skip_bad_images),
    )
    if own.test is None and not own.split_file:
        raise ConfigError(
            "--data needs --test-file (the captions scored once per run), unless it is a Karpathy-split "
            ".json (its own train, val and test splits) or, for videos, MSR-VTT's MSRVTT_data.json; "
            "--val-file is optional (default: a share of --data)"
        )
    return own

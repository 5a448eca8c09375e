"""Images: captioned images (image-text retrieval) and labelled image folders (classification).

Captions come from a CSV / TSV / JSONL file (one row per caption: an image path and a caption;
in JSONL the caption may be a list), a COCO caption file (``{"images": [{"id", "file_name"}],
"annotations": [{"image_id", "caption"}]}``) or a Karpathy-split file as used for COCO and
Flickr30K (``{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}]}]}``).
Image paths are relative to ``images_dir`` (default: the caption file's folder).

Every image is checked when the data is loaded: a missing or unreadable file is an error that
names it, or, with ``skip_bad=True``, is left out and counted (``data.skipped``).
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exotune.data.text import Labelled, held_out, read_rows, read_text, sample
from exotune.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
KARPATHY_TRAIN = ("train", "restval")  # the usual training images of the Karpathy splits


@dataclass
class ImageCaptionData:
    """Captions and the images they describe: caption i describes ``images[caption_image[i]]``.

    An image may have several captions (COCO has five). ``len`` counts captions: training
    draws caption-image pairs, evaluation ranks all images for each caption and all captions
    for each image.
    """

    images: list[str]
    captions: list[str]
    caption_image: list[int]
    name: str = "image-captions"
    skipped: int = field(default=0, compare=False)  # images left out as missing or unreadable

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_image):
            raise DataError(f"{self.name}: {len(self.captions)} captions but {len(self.caption_image)} image indices")
        bad = next((i for i in self.caption_image if not 0 <= i < len(self.images)), None)
        if bad is not None:
            raise DataError(f"{self.name}: image index {bad} is outside 0..{len(self.images) - 1}")

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, indices, name: str | None = None) -> ImageCaptionData:
        """The captions at ``indices`` and only the images they describe."""
        idx = [int(i) for i in indices]
        used = list(dict.fromkeys(self.caption_image[i] for i in idx))
        new = {old: j for j, old in enumerate(used)}
        return type(self)(
            [self.images[i] for i in used],
            [self.captions[i] for i in idx],
            [new[self.caption_image[i]] for i in idx],
            name or self.name,
        )

    def split(self, fraction: float, seed: int = 0) -> tuple[ImageCaptionData, ImageCaptionData]:
        """Image-level split into (rest, held-out): a held-out image keeps all its captions."""
        rest, held = held_out(len(self.images), fraction, seed, self.name, "images")
        held_images = set(held)
        held_caps = [i for i, img in enumerate(self.caption_image) if img in held_images]
        rest_caps = [i for i, img in enumerate(self.caption_image) if img not in held_images]
        if not rest_caps or not held_caps:
            raise DataError(f"{self.name}: the split leaves one side without captions")
        return self.subset(rest_caps, f"{self.name}[train]"), self.subset(held_caps, f"{self.name}[val]")

    def head(self, n: int, seed: int = 0) -> ImageCaptionData:
        """A random sample of ``n`` captions (all of them if ``n`` >= len)."""
        return sample(self, n, seed)


@dataclass
class ImageLabelData(Labelled):
    """Images (file paths) with integer labels into ``label_names``."""

    images: list[str]
    labels: list[int]
    label_names: list[str]
    name: str = "images"
    skipped: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        self._check_labels("images", len(self.images))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def inputs(self) -> list[str]:
        return self.images

    def subset(self, indices, name: str | None = None) -> ImageLabelData:
        idx = [int(i) for i in indices]
        return ImageLabelData(
            [self.images[i] for i in idx], [self.labels[i] for i in idx], self.label_names, name or self.name
        )


# -- checking images --------------------------------------------------------------------------


def image_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable image ("file not found", the decoder's complaint), or None."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return "file not found"
    try:
        with Image.open(path) as img:
            img.verify()  # reads the whole file and checks it without decoding the pixels
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return f"not a readable image ({err.__class__.__name__}: {err})"
    return None


def usable(
    paths: list[Path], where: dict[Path, str], skip_bad: bool, problem=image_problem, what: str = "image"
) -> tuple[set[Path], int]:
    """The readable ones among ``paths`` (``problem(path)`` is None) and how many were left out;
    without ``skip_bad`` the first bad one is a DataError naming it (and ``where[path]``: where
    it was listed). ``what`` names the kind of file in messages ("image", "video")."""
    bad: list[tuple[Path, str]] = []
    for path in paths:
        why = problem(path)
        if why is None:
            continue
        if not skip_bad:
            listed = f" (listed at {where[path]})" if path in where else ""
            raise DataError(
                f"{what} {path}: {why}{listed}; fix or remove it, or skip bad {what}s "
                f"(skip_bad=True, --skip-bad-{what}s)"
            )
        bad.append((path, why))
    if bad:
        warnings.warn(
            f"skipped {len(bad)} missing or unreadable {what}s (first: {bad[0][0]}: {bad[0][1]})", stacklevel=3
        )
    return set(paths) - {p for p, _ in bad}, len(bad)


# -- captions -------------------------------------------------------------------------------


def load_image_captions(
    captions: str | Path,
    images_dir: str | Path | None = None,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    split: str | None = None,
    skip_bad: bool = False,
) -> ImageCaptionData:
    """Captioned images from a CSV / TSV / JSONL, COCO or Karpathy-split caption file.

    ``split`` picks the images of one Karpathy split (``train`` also takes ``restval``);
    the other formats have no splits. Every problem names the file and the line or image.
    """
    path = Path(captions)
    root = Path(images_dir) if images_dir is not None else path.parent
    if not root.is_dir():
        raise DataError(f"images folder {root} does not exist")
    if path.suffix.lower() == ".json":
        pairs = _json_pairs(path, split)
    else:
        if split is not None:
            raise DataError(f"{path}: a {path.suffix} caption file has no splits; give each split its own file")
        pairs = row_pairs(path, image_column, caption_column)
    if not pairs:
        raise DataError(f"{path}: no captions" + (f" in split {split!r}" if split else ""))
    name = path.stem if split is None else f"{path.stem}-{split}"
    return captioned(ImageCaptionData, pairs, root, path, name, skip_bad)


def captioned(
    cls,
    pairs: list[tuple[str, str, str]],
    root: Path,
    path: Path,
    name: str,
    skip_bad: bool,
    problem=image_problem,
    what: str = "image",
):
    """``cls`` (an ``ImageCaptionData``) from (file, caption, where listed) ``pairs`` of the caption
    file ``path``, files relative to ``root``; each file checked by ``problem`` (see ``usable``)."""
    where: dict[Path, str] = {}
    for rel, _, at in pairs:
        where.setdefault(resolve(root, rel), f"{path}, {at}")
    ok, skipped = usable(list(where), where, skip_bad, problem, what)
    items: dict[Path, int] = {}
    caps, caption_item = [], []
    for rel, caption, _ in pairs:
        item = resolve(root, rel)
        if item in ok:
            caps.append(caption)
            caption_item.append(items.setdefault(item, len(items)))
    if not caps:
        raise DataError(f"{path}: none of the {len(where)} {what}s could be read")
    return cls([str(p) for p in items], caps, caption_item, name, skipped)


def resolve(root: Path, rel: str) -> Path:
    p = Path(rel).expanduser()
    return p if p.is_absolute() else root / p


def caption_text(path: Path, at: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}, {at}: empty or non-text caption {value!r}")
    return value.strip()


def row_pairs(path: Path, image_column: str, caption_column: str, what: str = "image") -> list[tuple[str, str, str]]:
    """(file, caption, where) per caption of a CSV / TSV / JSONL file; ``what`` names the file kind."""
    pairs = []
    for n, row in read_rows(path):
        for col in (image_column, caption_column):
            if col not in row:
                raise DataError(f"{path}, line {n}: no column {col!r}; columns are {sorted(row)}")
        image = row[image_column]
        if not isinstance(image, str) or not image.strip():
            raise DataError(f"{path}, line {n}, column {image_column!r}: empty or non-text {what} path {image!r}")
        value = row[caption_column]
        for caption in value if isinstance(value, list) else [value]:
            pairs.append(
                (image.strip(), caption_text(path, f"line {n}, column {caption_column!r}", caption), f"line {n}")
            )
    return pairs


def _json_pairs(path: Path, split: str | None) -> list[tuple[str, str, str]]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}, column {err.colno}: invalid JSON ({err.msg})") from err
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(
            f"{path}: expected a COCO caption file ('images' and 'annotations') or a Karpathy-split "
            "file ('images' with 'sentences'); a CSV/TSV/JSONL file gives one row per caption"
        )
    if "annotations" in data:
        if split is not None:
            raise DataError(f"{path}: a COCO caption file has no splits (each split has its own file)")
        return _coco_pairs(path, images, data["annotations"])
    return _karpathy_pairs(path, images, split)


def _coco_pairs(path: Path, images: list, annotations) -> list[tuple[str, str, str]]:
    try:
        files = {im["id"]: im["file_name"] for im in images}
    except (KeyError, TypeError) as err:
        raise DataError(f"{path}: every entry of 'images' needs 'id' and 'file_name' ({err!r} missing)") from err
    pairs = []
    for k, ann in enumerate(annotations if isinstance(annotations, list) else []):
        at = f"annotation {k}"
        if not isinstance(ann, dict) or ann.get("image_id") not in files:
            raise DataError(
                f"{path}, {at}: 'image_id' {ann.get('image_id') if isinstance(ann, dict) else ann!r} "
                "names no entry of 'images'"
            )
        pairs.append((files[ann["image_id"]], caption_text(path, at, ann.get("caption")), at))
    return pairs


def _karpathy_pairs(path: Path, images: list, split: str | None) -> list[tuple[str, str, str]]:
    wanted = None if split is None else (KARPATHY_TRAIN if split == "train" else (split,))
    pairs = []
    for k, im in enumerate(images):
        at = f"image {k}"
        if not isinstance(im, dict) or "filename" not in im or not isinstance(im.get("sentences"), list):
            raise DataError(f"{path}, {at}: a Karpathy-split entry needs 'filename' and a list of 'sentences'")
        if wanted is not None and im.get("split") not in wanted:
            continue
        rel = str(Path(im.get("filepath", "")) / im["filename"])
        for s in im["sentences"]:
            pairs.append((rel, caption_text(path, at, s.get("raw") if isinstance(s, dict) else s), at))
    return pairs


# -- image folders ----------------------------------------------------------------------------


def report_skipped(data, what: str = "images", source: str = "") -> None:
    """Say on stderr how many files ``data`` left out (loaded with ``skip_bad``), if any;
    ``source`` names where they were read from."""
    if getattr(data, "skipped", 0):
        lead = f"{source}: " if source else ""
        print(f"{lead}skipped {data.skipped} missing or unreadable {what}", file=sys.stderr)


def load_image_folder(folder: str | Path, *, skip_bad: bool = False) -> ImageLabelData:
    """Labelled images from ``folder/<class name>/**/<image>`` (class names sorted)."""
    root = Path(folder)
    classes = {name: files for name, files in class_folders(root).items() if files}
    if len(classes) < 2:
        raise DataError(
            f"{root}: need at least 2 class folders holding images ({', '.join(IMAGE_EXTENSIONS)}), "
            f"found {sorted(classes) or 'none'}"
        )
    ok, skipped = usable([p for files in classes.values() for p in files], {}, skip_bad)
    names = list(classes)
    images, labels = [], []
    for label, files in enumerate(classes.values()):
        kept = [p for p in files if p in ok]
        images += [str(p) for p in kept]
        labels += [label] * len(kept)
    counts = np.bincount(labels, minlength=len(names)) if labels else np.zeros(len(names), int)
    empty = [n for n, c in zip(names, counts, strict=True) if c == 0]
    if empty:
        raise DataError(f"{root}: no readable images left in class folders {empty}")
    return ImageLabelData(images, labels, names, root.name, skipped)


def class_folders(root: Path, what: str = "image folder") -> dict[str, list[Path]]:
    """``root/<class name>/**/<image>``: the image files (sorted) of every class sub-folder, by
    class name (sorted); a class folder without images maps to an empty list."""
    if not root.is_dir():
        raise DataError(f"{what} {root} does not exist")
    return {
        sub.name: sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    }

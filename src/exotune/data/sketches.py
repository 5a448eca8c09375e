"""Sketches and photos (sketch-to-photo retrieval): sketches are the queries, photos the gallery.

Layouts: Sketchy's (``sketch/tx_*/<class>/*.png``, ``photo/tx_*/<class>/*.jpg``; one ``tx_*``
augmentation folder chosen, by default ``tx_000000000000``) and a plain two-folder one
(``sketches/<class>/*``, ``photos/<class>/*``). A sketch is paired with a photo of its class when
its file name, up to a last ``-<n>``, is the photo's (Sketchy's ``n02691156_10151-1.png`` draws
``n02691156_10151.jpg``): those pairs give instance-level accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exotune.data.images import class_folders, usable
from exotune.data.text import held_out, sample
from exotune.errors import DataError

SKETCHY_AUGMENTATION = "tx_000000000000"  # Sketchy's plain sketches and photos (no augmentation)


@dataclass
class SketchPhotoData:
    """Sketches (queries) and photos (gallery), each with a class label into ``label_names``;
    ``sketch_photo[i]``: the photo sketch i was drawn from, or -1 when unknown.

    ``len`` counts sketches: training draws sketches (each with a photo of its class), a subset
    keeps the whole gallery."""

    sketches: list[str]
    sketch_labels: list[int]
    photos: list[str]
    photo_labels: list[int]
    label_names: list[str]
    sketch_photo: list[int] | None = None
    name: str = "sketches"
    skipped: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.sketch_photo is None:
            self.sketch_photo = [-1] * len(self.sketches)
        for what, items, labels in (
            ("sketches", self.sketches, self.sketch_labels),
            ("photos", self.photos, self.photo_labels),
        ):
            if len(items) != len(labels):
                raise DataError(f"{self.name}: {len(items)} {what} but {len(labels)} labels")
            bad = next((y for y in labels if not 0 <= y < len(self.label_names)), None)
            if bad is not None:
                raise DataError(f"{self.name}: {what} label {bad} is outside 0..{len(self.label_names) - 1}")
        if len(self.sketch_photo) != len(self.sketches):
            raise DataError(f"{self.name}: {len(self.sketches)} sketches but {len(self.sketch_photo)} pairings")
        for i, p in enumerate(self.sketch_photo):
            if p != -1 and (not 0 <= p < len(self.photos) or self.photo_labels[p] != self.sketch_labels[i]):
                raise DataError(f"{self.name}: sketch {i} is paired with photo {p}, not a photo of its class")
        missing = set(self.sketch_labels) - set(self.photo_labels)
        if missing:
            raise DataError(
                f"{self.name}: no photos of the sketches' classes {sorted(self.label_names[y] for y in missing)}"
            )

    def __len__(self) -> int:
        return len(self.sketches)

    def subset(self, indices, name: str | None = None) -> SketchPhotoData:
        """The sketches at ``indices``, with the whole gallery."""
        idx = [int(i) for i in indices]
        return SketchPhotoData(
            [self.sketches[i] for i in idx],
            [self.sketch_labels[i] for i in idx],
            self.photos,
            self.photo_labels,
            self.label_names,
            [self.sketch_photo[i] for i in idx],
            name or self.name,
        )

    def split(self, fraction: float, seed: int = 0) -> tuple[SketchPhotoData, SketchPhotoData]:
        """Sketches split into (rest, held-out), both against the whole gallery (validation)."""
        rest, held = held_out(len(self.sketches), fraction, seed, self.name, "sketches")
        return self.subset(rest, f"{self.name}[train]"), self.subset(held, f"{self.name}[val]")

    def head(self, n: int, seed: int = 0) -> SketchPhotoData:
        return sample(self, n, seed)

    def class_split(self, fraction: float, seed: int = 0) -> tuple[SketchPhotoData, SketchPhotoData]:
        """(seen, unseen): ``fraction`` of the classes held out, sketches and photos alike, for
        zero-shot (unseen-class) evaluation."""
        classes = sorted(set(self.sketch_labels))
        rest, held = held_out(len(classes), fraction, seed, self.name, "classes")
        return (
            self.classes([classes[i] for i in rest], f"{self.name}[seen]"),
            self.classes([classes[i] for i in held], f"{self.name}[unseen]"),
        )

    def classes(self, labels: list[int], name: str) -> SketchPhotoData:
        """Only the sketches and photos of ``labels`` (label indices kept)."""
        keep = set(labels)
        photos = [i for i, y in enumerate(self.photo_labels) if y in keep]
        new = {old: j for j, old in enumerate(photos)}
        sketches = [i for i, y in enumerate(self.sketch_labels) if y in keep]
        return SketchPhotoData(
            [self.sketches[i] for i in sketches],
            [self.sketch_labels[i] for i in sketches],
            [self.photos[i] for i in photos],
            [self.photo_labels[i] for i in photos],
            self.label_names,
            [new.get(self.sketch_photo[i], -1) for i in sketches],
            name,
        )


def load_sketchy(root: str | Path, augmentation: str | None = None, *, skip_bad: bool = False) -> SketchPhotoData:
    """Sketchy's layout under ``root``: ``sketch/<augmentation>/<class>/`` and ``photo/<augmentation>/<class>/``
    (default augmentation: ``tx_000000000000``, or the only ``tx_*`` folder there is)."""
    root = Path(root)
    if not (root / "sketch").is_dir() or not (root / "photo").is_dir():
        raise DataError(f"{root}: not Sketchy's layout (no sketch/ and photo/ folders)")
    options = sorted(p.name for p in (root / "sketch").iterdir() if p.is_dir())
    if augmentation is None:
        augmentation = (
            SKETCHY_AUGMENTATION if SKETCHY_AUGMENTATION in options else (options[0] if len(options) == 1 else None)
        )
        if augmentation is None:
            raise DataError(f"{root / 'sketch'}: choose an augmentation folder among {options or 'none'}")
    photo_aug = augmentation if (root / "photo" / augmentation).is_dir() else SKETCHY_AUGMENTATION
    return load_sketch_photos(
        root / "sketch" / augmentation, root / "photo" / photo_aug, skip_bad=skip_bad, name=f"sketchy-{augmentation}"
    )


def load_sketch_photos(
    sketches: str | Path, photos: str | Path, *, skip_bad: bool = False, name: str | None = None
) -> SketchPhotoData:
    """Sketches from ``sketches/<class>/`` and photos from ``photos/<class>/``: the same class
    folders on both sides, none of them empty."""
    sketch_dir, photo_dir = Path(sketches), Path(photos)
    s_classes = class_folders(sketch_dir, "sketch folder")
    p_classes = class_folders(photo_dir, "photo folder")
    if set(s_classes) != set(p_classes):
        odd = sorted(set(s_classes) ^ set(p_classes))
        raise DataError(f"{sketch_dir} and {photo_dir} hold other class folders: {odd} on one side only")
    if len(s_classes) < 2:
        raise DataError(f"{sketch_dir}: need at least 2 class folders, found {sorted(s_classes) or 'none'}")
    for where, classes in ((sketch_dir, s_classes), (photo_dir, p_classes)):
        empty = [c for c, files in classes.items() if not files]
        if empty:
            raise DataError(f"{where}: empty class folders {empty} (no images)")
    every = [p for files in (*s_classes.values(), *p_classes.values()) for p in files]
    ok, skipped = usable(every, {}, skip_bad)
    names = sorted(s_classes)
    photo_list, photo_labels, index = [], [], {}
    for label, c in enumerate(names):
        for p in p_classes[c]:
            if p in ok:
                index[(label, p.stem)] = len(photo_list)
                photo_list.append(str(p))
                photo_labels.append(label)
    sketch_list, sketch_labels, pairs = [], [], []
    for label, c in enumerate(names):
        for p in s_classes[c]:
            if p in ok:
                sketch_list.append(str(p))
                sketch_labels.append(label)
                pairs.append(index.get((label, p.stem), index.get((label, p.stem.rsplit("-", 1)[0]), -1)))
    counts = [np.bincount(labels, minlength=len(names)) for labels in (sketch_labels, photo_labels)]
    empty = sorted({names[y] for c in counts for y in np.flatnonzero(c == 0)})
    if empty:
        raise DataError(f"{sketch_dir}: no readable sketches or photos left in classes {empty}")
    return SketchPhotoData(
        sketch_list, sketch_labels, photo_list, photo_labels, names, pairs, name or sketch_dir.name, skipped
    )

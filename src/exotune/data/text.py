"""Labelled text: CSV/TSV/JSONL files, the shared Banking77 and SST-2 layouts, HF datasets."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exotune.errors import DataError, DatasetNotFoundError

DATA_ENV = "EXOTUNE_DATA"


class Labelled:
    """What labelled texts and labelled images share: checks, a stratified split, a sample.

    A subclass has ``labels`` (indices into ``label_names``), ``name``, ``inputs`` (what the
    model reads: texts or images), ``__len__`` and ``subset``.
    """

    labels: list[int]
    label_names: list[str]
    name: str

    def _check_labels(self, what: str, count: int) -> None:
        if count != len(self.labels):
            raise DataError(f"{self.name}: {count} {what} but {len(self.labels)} labels")
        n = len(self.label_names)
        bad = next((y for y in self.labels if not 0 <= y < n), None)
        if bad is not None:
            raise DataError(f"{self.name}: label index {bad} is outside 0..{n - 1}")

    def split(self, fraction: float, seed: int = 0):
        """Stratified split into (rest, held-out); the held-out part is ``fraction`` of the data."""
        from sklearn.model_selection import train_test_split

        if not 0.0 < fraction < 1.0:
            raise DataError(f"split fraction must be in (0, 1), got {fraction}")
        if len(self) < 2:
            raise DataError(f"{self.name}: need at least 2 examples to split, got {len(self)}")
        idx = np.arange(len(self))
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        stratify = self.labels if counts[counts > 0].min() >= 2 else None
        n_held = max(1, round(fraction * len(self)))
        if stratify is not None and n_held < len(set(self.labels)):
            stratify = None
        if stratify is not None and len(self) - n_held < len(set(self.labels)):
            stratify = None
        if n_held >= len(self):
            raise DataError(f"{self.name}: holding out {n_held} of {len(self)} examples leaves none to train on")
        rest, held = train_test_split(idx, test_size=n_held, random_state=seed, stratify=stratify)
        return self.subset(sorted(rest), f"{self.name}[train]"), self.subset(sorted(held), f"{self.name}[val]")

    def head(self, n: int, seed: int = 0):
        """A random sample of ``n`` examples (all of them if ``n`` >= len)."""
        return sample(self, n, seed)

    def require_classes(self, source: str, n: int = 2):
        """``self``, if it holds examples of at least ``n`` classes (what training needs);
        checked before any model loads. ``source`` names the file or dataset."""
        present = sorted({self.label_names[y] for y in self.labels})
        if len(present) < n:
            raise DataError(
                f"{source} holds {len(present)} class(es) ({', '.join(present) or 'none'}); training "
                f"needs examples of at least {n}"
            )
        return self

    def aligned_to(self, label_names: list[str]):
        """``(data, classes)``: the same examples with labels numbered as ``label_names`` (a
        model's) numbers them, and the indices of the classes this data names. Labels matched
        by name: another order or a subset of the model's classes is fine; a label the model
        does not know is refused, named."""
        from dataclasses import replace

        label_names = list(label_names)
        index = {name: i for i, name in enumerate(label_names)}
        unknown = [name for name in self.label_names if name not in index]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:10]) + (
                f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            )
            raise DataError(
                f"{self.name} has {len(unknown)} label(s) the model was not trained on: {shown} "
                f"(it knows {len(label_names)}: {', '.join(label_names[:10])}"
                f"{' ...' if len(label_names) > 10 else ''})"
            )
        classes = [index[name] for name in self.label_names]
        if classes == list(range(len(label_names))):
            return self, classes
        return replace(self, labels=[classes[y] for y in self.labels], label_names=label_names), classes


@dataclass
class TextLabelData(Labelled):
    """Texts with integer labels into ``label_names``."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    name: str = "data"

    def __post_init__(self) -> None:
        self._check_labels("texts", len(self.texts))

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def inputs(self) -> list[str]:
        return self.texts

    def lengths(self) -> list[int]:
        """Text lengths in characters: a cheap proxy for token counts, to batch by length."""
        return [len(t) for t in self.texts]

    def subset(self, indices, name: str | None = None) -> TextLabelData:
        idx = [int(i) for i in indices]
        return TextLabelData(
            [self.texts[i] for i in idx], [self.labels[i] for i in idx], self.label_names, name or self.name
        )


def held_out(n: int, fraction: float, seed: int, name: str, what: str) -> tuple[list[int], list[int]]:
    """A random (rest, held-out) split of ``range(n)``; the held-out part is ``fraction`` of it."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be in (0, 1), got {fraction}")
    n_held = max(1, round(fraction * n))
    if n_held >= n:
        raise DataError(f"{name}: holding out {n_held} of {n} {what} leaves none to train on")
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_held:]), sorted(order[:n_held])


def sample(data, n: int, seed: int = 0):
    """``data`` itself if ``n`` >= len, else ``n`` of its items drawn at random (kept in order)."""
    if n < 0:
        raise DataError(f"sample size must be >= 0, got {n}")
    if n >= len(data):
        return data
    rng = np.random.default_rng(seed)
    return data.subset(sorted(rng.choice(len(data), size=n, replace=False)), data.name)


# -- files ----------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """A UTF-8 text file; bad bytes give a DataError naming the file and line."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        start = err.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)  # utf-8-sig counts after the BOM
        line = raw[:start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 (byte {start}); re-save the file as UTF-8") from err


def read_rows(path: Path):
    """Yield (line number, row dict) from a .csv, .tsv or .jsonl file."""
    text = read_text(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {n}, column {err.colno}: invalid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}")
            yield n, row
        return
    if suffix not in (".csv", ".tsv"):
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")
    delimiter = "\t" if suffix == ".tsv" else ","
    quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter, quoting=quoting)
    if not reader.fieldnames:
        raise DataError(f"{path}, line 1: the file is empty (no header)")
    for row in reader:
        if None in row:  # more cells than header columns
            raise DataError(
                f"{path}, line {reader.line_num}: {len(reader.fieldnames) + len(row[None])} cells, "
                f"header has {len(reader.fieldnames)}"
            )
        yield reader.line_num, row


def _missing_column(path: Path, n: int, row: dict, col: str, which: str) -> DataError:
    return DataError(
        f"{path}, line {n}: no column {col!r}; columns are {sorted(row)} (choose one with "
        f"--{which.replace('_', '-')}, or {which}= in Python)"
    )


def read_column(path: Path, column: str = "text") -> list[str]:
    """The texts in ``column`` of a .csv, .tsv or .jsonl file, in file order; none may be empty."""
    texts = []
    for n, row in read_rows(path):
        if column not in row:
            raise _missing_column(path, n, row, column, "text_column")
        text = row[column]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}, line {n}, column {column!r}: empty or non-text value {text!r:.80}")
        texts.append(text)
    return texts


def read_label_map(value: str) -> dict[str, str]:
    """Class names for label codes: comma-separated names in code order (``neg,pos``: 0 is
    neg), or a file holding a JSON object ``{code: name}``, a JSON list, or one name a line."""
    path = Path(value)
    if path.is_file():
        text = read_text(path)
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: invalid JSON ({err.msg}, line {err.lineno})") from err
        else:
            data = [line.strip() for line in text.splitlines() if line.strip()]
    elif "," in value or not any(c in value for c in "/\\."):
        data = [name.strip() for name in value.split(",")]
    else:
        raise DataError(f"label names file {value!r} does not exist")
    if isinstance(data, list):
        data = {str(i): name for i, name in enumerate(data)}
    if not isinstance(data, dict) or not data:
        raise DataError(f"label names {value!r:.80}: expected names, a JSON object {{code: name}} or a JSON list")
    out = {str(code).strip(): name.strip() if isinstance(name, str) else name for code, name in data.items()}
    bad = next(((c, n) for c, n in out.items() if not isinstance(n, str) or not n or not c), None)
    if bad is not None:
        raise DataError(f"label names {value!r:.80}: code {bad[0]!r} has no name ({bad[1]!r:.40})")
    if len(set(out.values())) != len(out):
        raise DataError(f"label names {value!r:.80}: a name is given to two codes")
    return out


def load_text_file(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    label_names: list[str] | None = None,
    label_map: dict[str, str] | None = None,
) -> TextLabelData:
    """Read a labelled text file; labels are names (or integers if ``label_names`` is given
    and the column holds indices; or codes that ``label_map`` names, its classes in its order).
    Every problem names file, line and column."""
    path = Path(path)
    texts, raw_labels = [], []
    for n, row in read_rows(path):
        for col in (text_column, label_column):
            if col not in row:
                raise _missing_column(path, n, row, col, "text_column" if col == text_column else "label_column")
        text, label = row[text_column], row[label_column]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}, line {n}, column {text_column!r}: empty or non-text value {text!r}")
        if label is None or str(label).strip() == "":
            raise DataError(f"{path}, line {n}, column {label_column!r}: empty label")
        label = str(label).strip()
        if label_map is not None:
            if label not in label_map:
                raise DataError(
                    f"{path}, line {n}, column {label_column!r}: label code {label!r} is not among "
                    f"the --label-names codes {list(label_map)[:10]}"
                )
            label = label_map[label]
        texts.append(text)
        raw_labels.append((n, label))
    if not texts:
        raise DataError(f"{path}: no examples (the file has a header but no rows)")
    if label_names is None and label_map is not None:
        present = {lab for _, lab in raw_labels}
        label_names = [name for name in label_map.values() if name in present]
    if label_names is None:
        label_names = sorted({lab for _, lab in raw_labels})
    index = {name: i for i, name in enumerate(label_names)}
    labels = []
    for n, lab in raw_labels:
        if lab in index:
            labels.append(index[lab])
        elif lab.isdigit() and int(lab) < len(label_names):
            labels.append(int(lab))
        else:
            raise DataError(
                f"{path}, line {n}, column {label_column!r}: unknown label {lab!r}; "
                f"known labels: {label_names[:10]}{' ...' if len(label_names) > 10 else ''}"
            )
    return TextLabelData(texts, labels, list(label_names), path.stem)


def load_text_files(
    train: str | Path,
    val: str | Path | None = None,
    test: str | Path | None = None,
    text_column: str = "text",
    label_column: str = "label",
    label_map: dict[str, str] | None = None,
) -> tuple[TextLabelData, TextLabelData | None, TextLabelData | None]:
    """A training file and, when given, its validation and test files, on one label set: the
    training file's label names. A label of validation or test is matched by name; one the
    training file lacks is an error naming it (classes absent from validation or test are fine)."""
    train_data = load_text_file(train, text_column, label_column, label_map=label_map)
    index = {name: i for i, name in enumerate(train_data.label_names)}
    out = []
    for path in (val, test):
        if path is None:
            out.append(None)
            continue
        data = load_text_file(path, text_column, label_column, label_map=label_map)
        unknown = [name for name in data.label_names if name not in index]
        if unknown:
            raise DataError(
                f"{path}: {len(unknown)} label(s) the training file {train} does not have: "
                f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''}"
            )
        out.append(
            TextLabelData(
                data.texts, [index[data.label_names[y]] for y in data.labels], train_data.label_names, data.name
            )
        )
    return train_data, out[0], out[1]


def from_hf_dataset(dataset, text_column: str = "text", label_column: str = "label") -> TextLabelData:
    """Accept a Hugging Face ``datasets.Dataset`` with a text column and a ClassLabel/str column."""
    for col in (text_column, label_column):
        if col not in dataset.column_names:
            raise DataError(f"dataset has no column {col!r}; columns are {dataset.column_names}")
    feature = dataset.features[label_column]
    texts = list(dataset[text_column])
    labels = list(dataset[label_column])
    if hasattr(feature, "names"):
        return TextLabelData(texts, [int(y) for y in labels], list(feature.names), "hf-dataset")
    names = sorted({str(y) for y in labels})
    index = {n: i for i, n in enumerate(names)}
    return TextLabelData(texts, [index[str(y)] for y in labels], names, "hf-dataset")


# -- known datasets -------------------------------------------------------------------------


def data_root(data_dir: str | Path | None = None) -> Path:
    """Where known datasets live: the argument, else ``$EXOTUNE_DATA``, else ``./datasets``."""
    return Path(data_dir or os.environ.get(DATA_ENV) or "datasets").expanduser()


def _banking77(root: Path, split: str) -> TextLabelData:
    folder = root / "banking77"
    names = json.loads(read_text(folder / "categories.json"))
    data = load_text_file(folder / f"{split}.csv", "text", "category", names)
    data.name = f"banking77-{split}"
    return data


def _sst2(root: Path, split: str) -> TextLabelData:
    path = root / "sst2" / ("dev.tsv" if split == "test" else "train.tsv")
    header = read_text(path).split("\n", 1)[0].split("\t")
    text_column = "content" if "content" in header and "sentence" not in header else "sentence"
    data = load_text_file(path, text_column, "label", ["negative", "positive"])
    data.name = f"sst2-{split}"
    return data


KNOWN_DATASETS = {
    "banking77": (_banking77, ["banking77/train.csv", "banking77/test.csv", "banking77/categories.json"]),
    "sst2": (_sst2, ["sst2/train.tsv", "sst2/dev.tsv (used as the test split)"]),
}


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None) -> TextLabelData:
    """Load a known dataset (``banking77``, ``sst2``) split ``train`` or ``test``."""
    if name not in KNOWN_DATASETS:
        hint = (
            " (a retrieval dataset: use load_retrieval_dataset / --task retrieval)" if name in RETRIEVAL_NAMES else ""
        )
        raise DataError(f"unknown dataset {name!r}; known: {sorted(KNOWN_DATASETS)} (or pass a file){hint}")
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    loader, files = KNOWN_DATASETS[name]
    root = dataset_root(name, files, data_dir)
    return loader(root, split)


RETRIEVAL_NAMES = ("scifact",)  # loaded by exotune.data.beir; named here for a helpful error


def dataset_root(name: str, files: list[str], data_dir: str | Path | None = None) -> Path:
    """The data root holding ``name/``; a clear DatasetNotFoundError when it is absent."""
    root = data_root(data_dir)
    if not (root / name).is_dir():
        raise DatasetNotFoundError(
            f"dataset {name!r} is not at {root / name}. Put its files there ({', '.join(files)}), "
            f"or point ${DATA_ENV} / --data-dir at the folder that holds '{name}/'."
        )
    return root


def label_texts(label_names: list[str], template: str = "{}") -> list[str]:
    """``card_arrival`` -> ``card arrival``: class names as a person would write them."""
    return [template.format(name.replace("_", " ")) for name in label_names]

"""Folders of JSON + safetensors, written atomically; nested state as tensors + a JSON skeleton.

Nothing here uses pickle: optimiser and scheduler state are flattened into safetensors
(tensors) and JSON (everything else), so a checkpoint cannot execute code when loaded.
Every folder carries ``checksums.sha256`` (the ``sha256sum`` format) listing every file in it,
sub-folders included, checked on load: a flipped byte inside a tensor's data, which no parser
could notice, is refused too, and so is a file added, removed or left out of the list. The list
guards against corruption, not against whoever can rewrite it: what a folder holds is also
validated (types, ranges, shapes, sizes) before anything is built from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from exotune.cards import CARD_NAME, card_for
from exotune.errors import ArtifactError, ConfigError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
CHECKSUMS_NAME = "checksums.sha256"
_CHECKSUM_LINE = re.compile(r"([0-9a-f]{64})  (\S.*)")
MAX_JSON_BYTES = 64 << 20  # a config or trainer state: kilobytes; an EA config with its tables: a few MB
MAX_JSON_DEPTH = 64  # what exotune writes nests < 12 deep


def write_folder(
    path: str | Path, files: dict[str, dict | dict[str, torch.Tensor] | bytes | Callable[[Path], None]]
) -> Path:
    """Write ``{filename: json-able dict | tensors | bytes | writer}`` into ``path``, replacing it
    atomically, with the SHA-256 of every file written in ``checksums.sha256``. A folder with
    an adapter config (``*config.json`` with a ``type``) gets its model card, ``README.md``.

    A writer is called with the target path inside the temporary folder (e.g. a Hugging Face
    ``save_pretrained`` for a sub-folder), so it too is replaced all at once.
    """
    path = Path(path)
    card = None if CARD_NAME in files else card_for(files)  # an adapter's model card (README.md)
    if card is not None:
        files = {**files, CARD_NAME: card.encode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        for name, content in files.items():
            if callable(content):
                content(tmp / name)
            elif isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            elif name.endswith(".safetensors"):
                tensors = {k: v.detach().cpu().contiguous() for k, v in content.items()}
                save_file(tensors, str(tmp / name))
            else:
                (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        write_checksums(tmp)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def rewrite_card(path: str | Path) -> None:
    """Render ``path``'s model card again from its config and what the run knows now (e.g. a
    test score taken after the folder was written); the folder is checked first, and its
    checksums then list the new card."""
    path = Path(path)
    verify_folder(path)
    card = card_for({p.name: read_json(p) for p in sorted(path.glob("*config.json"))})
    if card is not None:
        (path / CARD_NAME).write_text(card)
        write_checksums(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(path: str | Path) -> Path:
    """(Re)write ``path/checksums.sha256`` from the files now in ``path``: ``write_folder`` does
    it on every save; call it yourself only after changing a file on purpose."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != CHECKSUMS_NAME)
    listing = path / CHECKSUMS_NAME
    listing.write_text("".join(f"{_sha256(p)}  {p.relative_to(path).as_posix()}\n" for p in files))
    return listing


def verify_folder(path: str | Path) -> None:
    """Check ``path/checksums.sha256`` against the folder: every file in it (sub-folders too)
    must be listed and match its SHA-256. Raise ``ArtifactError`` naming the first file that is
    missing, differs, or is present but not listed (a file added, or a line deleted)."""
    path = Path(path)
    listing = path / CHECKSUMS_NAME
    if not listing.is_file():
        raise ArtifactError(
            f"{path} has no {CHECKSUMS_NAME}: its files cannot be checked, so it is not loaded "
            "(a folder written by an older exotune: check its files, then record them with "
            "exotune.artifacts.write_checksums(folder))"
        )
    if listing.stat().st_size > MAX_JSON_BYTES:
        raise ArtifactError(f"{listing} is larger than {MAX_JSON_BYTES} bytes; the folder is corrupted")
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{listing} is unreadable ({err}); the folder is corrupted") from err
    entries = [_CHECKSUM_LINE.fullmatch(line) for line in lines if line.strip()]
    if not entries or not all(entries):
        raise ArtifactError(f"{listing} is malformed (expected lines '<sha256>  <file>'); the folder is corrupted")
    listed: dict[str, str] = {}
    for match in entries:
        digest, name = match.groups()
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{listing} names a file outside its folder: {name!r}")
        if name in listed:
            raise ArtifactError(f"{listing} lists {name!r} twice; the folder is corrupted")
        listed[name] = digest
    present = {}
    for p in path.rglob("*"):
        rel = p.relative_to(path).as_posix()
        if p.is_symlink():
            raise ArtifactError(f"{p} is a symbolic link; a saved folder holds only plain files")
        if p.is_file() and rel != CHECKSUMS_NAME:
            present[rel] = p
    unlisted = sorted(set(present) - set(listed))
    if unlisted:
        raise ArtifactError(
            f"{path / unlisted[0]} is not listed in {CHECKSUMS_NAME}: a file was added to the folder "
            f"or its checksum line deleted ({len(unlisted)} unlisted: {unlisted[:5]})"
        )
    for name, digest in listed.items():
        file = path / name
        if name not in present:
            raise ArtifactError(f"{file} is missing (it is listed in {CHECKSUMS_NAME})")
        if _sha256(file) != digest:
            raise ArtifactError(
                f"{file} is corrupted: its SHA-256 differs from the one recorded in "
                f"{CHECKSUMS_NAME} when it was written (after a deliberate edit, "
                "exotune.artifacts.write_checksums(folder) records the new content)"
            )


def _depth(node) -> int:
    """Nesting depth of parsed JSON, without recursion (a hostile file cannot exhaust the stack)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_json(path: str | Path, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """A JSON object from ``path``, at most ``max_bytes`` long and ``MAX_JSON_DEPTH`` deep."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    if path.stat().st_size > max_bytes:
        raise ArtifactError(f"{path} is {path.stat().st_size} bytes, more than the {max_bytes} a saved config may hold")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); the file is corrupted or truncated") from err
    except RecursionError as err:
        raise ArtifactError(f"{path} is nested deeper than {MAX_JSON_DEPTH} levels") from err
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object, got {type(data).__name__}")
    if _depth(data) > MAX_JSON_DEPTH:
        raise ArtifactError(f"{path} is nested deeper than {MAX_JSON_DEPTH} levels")
    return data


@contextmanager
def saved_config(file: str | Path) -> Iterator[None]:
    """Inside, a key missing from a saved config, a value of the wrong type or out of range is
    an ``ArtifactError`` naming ``file`` and the field (configs validate in ``__post_init__``)."""
    try:
        yield
    except KeyError as err:
        raise ArtifactError(f"{file} lacks the required key {err}") from err
    except (ConfigError, TypeError, AttributeError) as err:
        raise ArtifactError(f"{file} holds an invalid value: {err}") from err


def json_object(cfg: dict, key: str) -> dict:
    """A copy of ``cfg[key]``, which must be a JSON object (inside ``saved_config``: a missing or
    mistyped section names the file and the key)."""
    value = cfg[key]
    if not isinstance(value, dict):
        raise ConfigError(f"{key!r} must be a JSON object, got {value!r:.80}")
    return dict(value)


def check_tensors(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], file: str | Path) -> None:
    """Loaded tensors must be exactly the expected names and shapes, floating point where the
    model's are (else the same dtype) and finite; else ``ArtifactError`` naming ``file`` and the tensor."""
    if set(state) != set(expected):
        raise ArtifactError(f"{file} does not match its config: tensors {sorted(set(state) ^ set(expected))}")
    for name, t in state.items():
        if t.shape != expected[name].shape:
            raise ArtifactError(
                f"{file} does not match its config: tensor {name!r} has shape "
                f"{tuple(t.shape)}, expected {tuple(expected[name].shape)}"
            )
        want = expected[name].dtype
        if t.is_floating_point() != want.is_floating_point or (not want.is_floating_point and t.dtype != want):
            raise ArtifactError(
                f"{file}: tensor {name!r} has dtype {t.dtype}, expected "
                f"{'floating point' if want.is_floating_point else want}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ArtifactError(f"{file}: tensor {name!r} holds NaN or infinite values")


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{path} is not a readable safetensors file ({err}); it is corrupted or truncated") from err


# -- nested state (optimiser, scheduler) <-> tensors + JSON skeleton -----------------------


def flatten_state(tree, prefix: str = "") -> tuple[object, dict[str, torch.Tensor]]:
    """Replace every tensor in a nested dict/list/tuple by a reference; return (skeleton, tensors)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node, key):
        if isinstance(node, torch.Tensor):
            tensors[key] = node
            return {"__tensor__": key}
        if isinstance(node, dict):
            return {
                "__dict__": [[walk(k, f"{key}.k{i}"), walk(v, f"{key}.{i}")] for i, (k, v) in enumerate(node.items())]
            }
        if isinstance(node, tuple):
            return {"__tuple__": [walk(v, f"{key}.{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise ArtifactError(f"cannot store a {type(node).__name__} at {key!r} in a checkpoint")

    return walk(tree, prefix or "s"), tensors


def unflatten_state(skeleton, tensors: dict[str, torch.Tensor], where: str = "checkpoint"):
    def walk(node):
        if isinstance(node, dict):
            if "__tensor__" in node:
                return tensors[node["__tensor__"]]
            if "__tuple__" in node:
                return tuple(walk(v) for v in node["__tuple__"])
            if "__dict__" in node:
                return {walk(k): walk(v) for k, v in node["__dict__"]}
            raise ArtifactError(f"{where}: unexpected node {sorted(node)} in the skeleton")
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    try:
        return walk(skeleton)
    except KeyError as err:
        raise ArtifactError(f"{where} is missing tensor {err}") from err

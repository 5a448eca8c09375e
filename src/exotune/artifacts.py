"""Folders of JSON + safetensors, written atomically; nested state as tensors + a JSON skeleton.

Nothing here uses pickle: optimiser and scheduler state are flattened into safetensors
(tensors) and JSON (everything else), so a checkpoint cannot execute code when loaded.
Every folder carries ``checksums.sha256`` (the ``sha256sum`` format), checked on load: a
flipped byte inside a tensor's data, which no parser could notice, is refused too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from exotune.errors import ArtifactError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
CHECKSUMS_NAME = "checksums.sha256"
_CHECKSUM_LINE = re.compile(r"([0-9a-f]{64})  (\S.*)")


def write_folder(path: str | Path,
                 files: dict[str, dict | dict[str, torch.Tensor] | bytes | Callable[[Path], None]]) -> Path:
    """Write ``{filename: json-able dict | tensors | bytes | writer}`` into ``path``, replacing it
    atomically, with the SHA-256 of every file written in ``checksums.sha256``.

    A writer is called with the target path inside the temporary folder (e.g. a Hugging Face
    ``save_pretrained`` for a sub-folder), so it too is replaced all at once.
    """
    path = Path(path)
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
    """Check every file listed in ``path/checksums.sha256``; raise ``ArtifactError`` naming the
    first one that is missing or differs. A folder without the list (written before it
    existed) loads with a warning, never silently."""
    path = Path(path)
    listing = path / CHECKSUMS_NAME
    if not listing.is_file():
        warnings.warn(f"{path} has no {CHECKSUMS_NAME} (written by an older exotune?): "
                      "its files cannot be checked for corruption", stacklevel=3)
        return
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{listing} is unreadable ({err}); the folder is corrupted") from err
    entries = [_CHECKSUM_LINE.fullmatch(line) for line in lines if line.strip()]
    if not entries or not all(entries):
        raise ArtifactError(f"{listing} is malformed (expected lines '<sha256>  <file>'); the folder is corrupted")
    for match in entries:
        digest, name = match.groups()
        file = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{listing} names a file outside its folder: {name!r}")
        if not file.is_file():
            raise ArtifactError(f"{file} is missing (it is listed in {CHECKSUMS_NAME})")
        if _sha256(file) != digest:
            raise ArtifactError(f"{file} is corrupted: its SHA-256 differs from the one recorded in "
                                f"{CHECKSUMS_NAME} when it was written (after a deliberate edit, "
                                "exotune.artifacts.write_checksums(folder) records the new content)")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); the file is corrupted or truncated") from err
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


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
            return {"__dict__": [[walk(k, f"{key}.k{i}"), walk(v, f"{key}.{i}")] for i, (k, v) in enumerate(node.items())]}
        if isinstance(node, tuple):
            return {"__tuple__": [walk(v, f"{key}.{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise ArtifactError(f"cannot store a {type(node).__name__} at {key!r} in a checkpoint")

    return walk(tree, prefix or "s"), tensors


def unflatten_state(skeleton, tensors: dict[str, torch.Tensor]):
    def walk(node):
        if isinstance(node, dict):
            if "__tensor__" in node:
                return tensors[node["__tensor__"]]
            if "__tuple__" in node:
                return tuple(walk(v) for v in node["__tuple__"])
            if "__dict__" in node:
                return {walk(k): walk(v) for k, v in node["__dict__"]}
            raise ArtifactError(f"unexpected node {sorted(node)} in checkpoint skeleton")
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    try:
        return walk(skeleton)
    except KeyError as err:
        raise ArtifactError(f"checkpoint is missing tensor {err}") from err

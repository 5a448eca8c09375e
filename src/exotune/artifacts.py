"""Folders of JSON + safetensors, written atomically; nested state as tensors + a JSON skeleton.

Nothing here uses pickle: optimiser and scheduler state are flattened into safetensors
(tensors) and JSON (everything else), so a checkpoint cannot execute code when loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from exotune.errors import ArtifactError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def write_folder(path: str | Path, files: dict[str, dict | dict[str, torch.Tensor] | Callable[[Path], None]]) -> Path:
    """Write ``{filename: json-able dict | tensors | writer}`` into ``path``, replacing it atomically.

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
            elif name.endswith(".safetensors"):
                tensors = {k: v.detach().cpu().contiguous() for k, v in content.items()}
                save_file(tensors, str(tmp / name))
            else:
                (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


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

"""The wire codec of a served box: tensors as safetensors bytes, small metadata as strings.

Shared by the server (``exotune.serve``) and the clients (``exotune.boxes.remote``, and the
torch-free ``exotune.boxes.http`` that reads answers as numpy arrays), so that nothing below
``serve/`` imports from it. Decoding is strict: the header is parsed and checked (size, dtype
whitelist, shapes against byte ranges) before safetensors reads the data, and every failure is
a ``WireError`` saying what was wrong. Never pickle. torch is imported only by the torch forms.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from exotune.errors import WireError

if TYPE_CHECKING:
    import torch

MEDIA_TYPE = "application/vnd.exotune.safetensors"
# dtypes allowed on the wire: float32 for embeddings, outputs and gradients; int64 for masks
DTYPES = {"F32": "float32", "I64": "int64"}
_ITEMSIZE = {"F32": 4, "I64": 8}
MAX_HEADER_BYTES = 64 * 1024
MAX_TENSORS = 64
MAX_META_CHARS = 4096


@dataclass
class Message:
    """What one request or response body carries."""

    tensors: dict[str, Any] = field(default_factory=dict)  # torch.Tensor, or np.ndarray from decode_arrays
    meta: dict[str, str] = field(default_factory=dict)


def encode(tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> bytes:
    """Serialise ``tensors`` (float32 or int64, any device) and string metadata."""
    import torch
    from safetensors.torch import save

    allowed = {getattr(torch, name) for name in DTYPES.values()}
    out, seen = {}, set()
    for name, t in tensors.items():
        if t.dtype not in allowed:
            raise WireError(f"tensor {name!r} has dtype {t.dtype}; the wire carries float32 and int64 only")
        t = t.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen:  # safetensors refuses tensors sharing memory
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    meta = {str(k): str(v) for k, v in (meta or {}).items()}
    return save(out, metadata=meta or None)


def loads_json(raw: bytes, what: str):
    """``json.loads`` that fails only with a ``WireError`` naming ``what``: also on nesting too
    deep for the parser (RecursionError) and integers too long to convert (ValueError)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise WireError(f"{what} is not valid JSON ({err})") from None
    except UnicodeDecodeError:
        raise WireError(f"{what} is not valid JSON (not UTF-8)") from None
    except (ValueError, RecursionError):
        raise WireError(f"{what} is not acceptable JSON (nested too deep or a number too long)") from None


def _header(data: bytes, max_bytes: int) -> dict:
    if len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    if len(data) < 8:
        raise WireError(
            f"message of {len(data)} bytes is truncated: a safetensors message starts with an 8-byte header length"
        )
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES:
        raise WireError(f"safetensors header of {n} bytes exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if 8 + n > len(data):
        raise WireError(f"message is truncated: the header needs {n} bytes, {len(data) - 8} follow")
    header = loads_json(data[8 : 8 + n], "safetensors header")
    if not isinstance(header, dict):
        raise WireError("safetensors header must be a JSON object")
    return header


def _check_entry(name: str, entry, body_bytes: int) -> None:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise WireError(f"tensor {name!r}: header entry must have dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise WireError(f"tensor {name!r} has dtype {dtype}; allowed: {', '.join(DTYPES)} (float32, int64)")
    if not isinstance(shape, list) or len(shape) > 8 or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise WireError(f"tensor {name!r}: shape must be a list of at most 8 non-negative integers, got {shape!r}")
    ok = isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
    if not ok or not 0 <= offsets[0] <= offsets[1] <= body_bytes:
        raise WireError(
            f"tensor {name!r}: data_offsets {offsets!r} lie outside the {body_bytes} data bytes (truncated?)"
        )
    if math.prod(shape) * _ITEMSIZE[dtype] != offsets[1] - offsets[0]:
        raise WireError(f"tensor {name!r}: shape {shape} does not match its {offsets[1] - offsets[0]} bytes")


def check(data: bytes, max_bytes: int) -> dict[str, str]:
    """Validate a message without reading its data; return its metadata. Needs no torch."""
    header = _header(data, max_bytes)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise WireError("safetensors __metadata__ must map strings to strings")
    if sum(len(k) + len(v) for k, v in meta.items()) > MAX_META_CHARS:
        raise WireError(f"metadata exceeds {MAX_META_CHARS} characters")
    if len(header) > MAX_TENSORS:
        raise WireError(f"message holds {len(header)} tensors; at most {MAX_TENSORS} are allowed")
    body_bytes = len(data) - 8 - struct.unpack("<Q", data[:8])[0]
    for name, entry in header.items():
        _check_entry(name, entry, body_bytes)
    return dict(meta)


def _load(load, data: bytes, meta: dict[str, str]) -> Message:
    try:
        tensors = load(bytes(data))
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise WireError(f"not a readable safetensors message ({err})") from err
    return Message(tensors=dict(tensors), meta=meta)


def decode(data: bytes, max_bytes: int = 64 * 2**20) -> Message:
    """Parse a message into torch tensors; raise ``WireError`` on anything malformed, oversize
    or of another dtype."""
    from safetensors.torch import load

    return _load(load, data, check(data, max_bytes))


def decode_arrays(data: bytes, max_bytes: int = 64 * 2**20) -> Message:
    """As :func:`decode`, with numpy arrays instead of tensors: the client side of a black box
    needs no torch."""
    from safetensors.numpy import load

    return _load(load, data, check(data, max_bytes))

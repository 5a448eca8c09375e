"""Devices and precision: where each part runs and in which floating-point format.

A box's weights live on the box's device (its owner's choice: ``load_box(device=, dtype=)``,
``exotune serve --device --dtype``); the user's adapters, heads and optimiser on the user's
device (``Trainer(device=)``, ``--device``). Lower precision is autocast around the forward:
the user's parameters stay float32, float16 adds a gradient scaler. The choice is a run-time
knob: run summaries record it, adapters never do (an adapter trained in bf16 loads in fp32).
"""

from __future__ import annotations

import contextlib
import math
import os
import re

import torch

from exotune.errors import ArtifactError, ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:<index>"
# a box's weight formats, by every name the command line and the API accept
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_PRECISION_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA when present (under torchrun, GPU ``LOCAL_RANK``), else the CPU;
    ``cpu``; ``cuda`` / ``cuda:<i>``, refused with a clear message where there is no such GPU."""
    if isinstance(name, torch.device):
        name = str(name)
    name = "auto" if name is None else str(name).strip().lower()
    match = _DEVICE.match(name)
    if match is None or (match.group(1) != "cuda" and match.group(2) is not None):
        raise ConfigError(f"device must be one of {DEVICE_CHOICES}, got {name!r}")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        kind, index = "cuda", None
        if "LOCAL_RANK" in os.environ:  # torchrun: one GPU per local rank when there are enough (distributed.setup)
            local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
            if torch.cuda.device_count() < local:
                return torch.device("cpu")
            index = os.environ["LOCAL_RANK"]
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} asks for a CUDA GPU, but this machine has none that PyTorch can use "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
    count = torch.cuda.device_count()
    i = int(index) if index is not None else torch.cuda.current_device()
    if i >= count:
        raise ConfigError(f"device {name!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    return torch.device("cuda", i)


def check_precision(precision: str, device: torch.device | None = None) -> str:
    """``precision`` if it is one of PRECISIONS and ``device`` can run it."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and device is not None and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision 'bf16': the GPU {device} does not support bfloat16; use fp16 or fp32")
    return precision


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """A box's weight format from its name (float32, bfloat16, float16 or fp32, bf16, fp16)."""
    if name is None or isinstance(name, torch.dtype):
        if name is not None and name not in DTYPES.values():
            raise ConfigError(f"dtype must be one of {sorted(set(DTYPES))}, got {name}")
        return name
    if str(name).lower() not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(set(DTYPES))}, got {name!r}")
    return DTYPES[str(name).lower()]


def autocast(precision: str, *devices: torch.device | str | None):
    """Mixed precision on each device type among ``devices`` (fp32: nothing)."""
    check_precision(precision)
    stack = contextlib.ExitStack()
    if precision == "fp32":
        return stack
    for kind in sorted({torch.device(d).type for d in devices if d is not None}):
        stack.enter_context(torch.autocast(device_type=kind, dtype=_PRECISION_DTYPE[precision]))
    return stack


def grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler:
    """A gradient scaler for float16 (underflowing gradients); disabled (a pass-through) otherwise."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=check_precision(precision) == "fp16")


# a float16 scaler's state (GradScaler.state_dict); a disabled one's is empty
SCALER_STATE = {
    "scale": float,
    "growth_factor": float,
    "backoff_factor": float,
    "growth_interval": int,
    "_growth_tracker": int,
}


def restore_scaler(scaler: torch.amp.GradScaler, saved, where: str) -> None:
    """``scaler`` continues from a checkpoint's ``saved`` state (checked): the scale a float16
    run had reached, not the initial one. None (a checkpoint from before) or an empty state (a
    run in another precision) leaves it fresh, and so does a scaler that is disabled."""
    if saved is None or saved == {}:
        return
    if not isinstance(saved, dict) or set(saved) != set(SCALER_STATE):
        raise ArtifactError(f"{where}: the gradient scaler's state is malformed")
    for key, kind in SCALER_STATE.items():
        value = saved[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if (
            not number
            or (kind is int and not isinstance(value, int))
            or value < (0 if key == "_growth_tracker" else 1e-30)
        ):
            raise ArtifactError(
                f"{where}: the gradient scaler's {key} is {value!r:.40}, not a finite positive {kind.__name__}"
            )
    scaler.load_state_dict(saved)


class Placement:
    """Where a box's weights live, in which format, and the precision of its no-gradient calls.

    ``apply`` moves the modules (after the box took its digest of the weights as given);
    ``inward`` moves a caller's tensor there; ``autocast`` is the context of one call.
    """

    def __init__(
        self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None, precision: str = "fp32"
    ) -> None:
        self.device = resolve_device(device) if device is not None else None  # None: where the model is
        self.dtype = parse_dtype(dtype)  # None: the model's
        self.precision = check_precision(precision, self.device)

    def apply(self, *modules: torch.nn.Module | None) -> None:
        modules = tuple(m for m in modules if m is not None)
        for module in modules:
            module.to(device=self.device, dtype=self.dtype)  # in place
        first = next(modules[0].parameters())
        self.device, self.dtype = first.device, first.dtype

    def inward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=self.dtype) if x.is_floating_point() else x.to(self.device)

    def autocast(self):
        """The no-gradient calls' precision; a training call runs under the caller's autocast."""
        return autocast("fp32" if torch.is_grad_enabled() else self.precision, self.device)


class Placed:
    """What a box placed by a ``Placement`` (its ``_placement``) tells: where its weights are,
    and the precision of its no-gradient calls (settable: ``box.precision = "bf16"``)."""

    _placement: Placement

    @property
    def device(self) -> torch.device:
        """Where the box's weights are (not the weights)."""
        return self._placement.device

    @property
    def precision(self) -> str:
        """The precision of the calls made without gradients: fp32, bf16 or fp16."""
        return self._placement.precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._placement.precision = check_precision(value, self.device)

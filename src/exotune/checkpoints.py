"""Checks of a training checkpoint (``last/``) before a run resumes from it: its loop state,
its optimiser's moments, and a longer budget than it was started with. A checkpoint is a
folder someone may have edited: every value is checked before it reaches the run."""

from __future__ import annotations

from pathlib import Path

import torch

from exotune.errors import ArtifactError, ConfigError


def extend_state(saved, config, state: dict, folder: Path) -> bool:
    """Whether resuming with ``config.epochs`` extends the run in ``folder`` (more epochs than
    it was given); refuse fewer epochs than it has run. An extended run that had stopped
    (last epoch, or patience) continues, its patience counted afresh."""
    if config.epochs == saved.epochs:
        return False
    if config.epochs < state["epoch"]:
        raise ConfigError(
            f"cannot resume from {folder} with epochs={config.epochs}: it has run {state['epoch']} epochs already"
        )
    if config.schedule == "onecycle":
        raise ConfigError(f"cannot change the epochs of {folder}: a onecycle schedule is fixed to its total steps")
    state.update(done=False, bad_epochs=0)
    return True


def check_loop_state(saved: dict, fresh: dict) -> None:
    """A checkpoint's loop state has the keys of a fresh one, each of the same type."""
    for key, value in fresh.items():
        if key not in saved:
            raise ConfigError(f"state.{key} is missing")
        got = saved[key]
        kind = (int, float) if isinstance(value, float) else type(value)
        if not isinstance(got, kind) or (isinstance(got, bool) and not isinstance(value, bool)):
            raise ConfigError(f"state.{key} must be a {type(value).__name__}, got {got!r:.80}")
        if isinstance(got, int) and not isinstance(got, bool) and key != "best_epoch" and got < 0:
            raise ConfigError(f"state.{key} must be >= 0, got {got}")


def check_optimizer_state(saved, optimizer, file) -> None:
    """Every saved moment has the shape of its parameter, and is finite."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise ArtifactError(f"{file}: optimizer state is malformed")
    for index, entry in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise ArtifactError(f"{file}: optimizer state names parameter {index!r:.40}, which does not exist")
        for name, t in entry.items():
            if (
                isinstance(t, torch.Tensor)
                and t.ndim
                and (t.shape != params[index].shape or not t.is_floating_point() or not bool(torch.isfinite(t).all()))
            ):
                raise ArtifactError(
                    f"{file}: optimizer state {name!r} of parameter {index} does not fit it "
                    f"(shape {tuple(t.shape)}, dtype {t.dtype})"
                )

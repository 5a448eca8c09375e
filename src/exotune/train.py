"""One training loop for everything with gradients.

The model follows a small protocol (:class:`exotune.protocols.Trainable`): ``trainable_parameters()``,
``loss(data)``, ``evaluate(data) -> dict`` and ``save_pretrained(dir)``; ``data`` has ``len`` and
``subset(indices)``. Under ``torchrun`` it trains data-parallel (see ``exotune.distributed``):
each rank takes its slice of every global batch and only rank 0 writes. Checkpoints hold only
the user's tensors, optimiser and scheduler state (safetensors + JSON), written atomically, so a
crash loses at most ``checkpoint_every`` steps. ``Trainer(device=, precision=)`` are run-time knobs (see
``exotune.devices``): the model moves to the device, the forward and loss run under autocast,
and the run's summary records both; checkpoints and adapters do not (a float16 run's checkpoint
keeps its gradient scaler's state, which a float16 resume continues from).
"""

from __future__ import annotations

import math
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from exotune import distributed
from exotune.artifacts import (
    check_tensors,
    flatten_state,
    json_object,
    read_json,
    read_tensors,
    saved_config,
    unflatten_state,
    verify_folder,
    write_folder,
)
from exotune.averaging import ParameterAverage
from exotune.batching import grouped_batches
from exotune.callbacks import TrainerCallback, check_report_to, loggers
from exotune.cards import card_context, update_run_info
from exotune.checkpoints import check_loop_state, check_optimizer_state, extend_state
from exotune.configs import ConfigBase
from exotune.devices import autocast, check_precision, grad_scaler, resolve_device, restore_scaler
from exotune.errors import ArtifactError, ConfigError
from exotune.progress import note, progress_bar
from exotune.protocols import Trainable

SCHEDULES = ("cosine", "onecycle", "linear", "constant")
# Components that can get their own learning rate: a gray-box tower's input side, tokens and
# output side (its ``parameter_groups()``), and the task's head; white-box weights are "weights".
PARAMETER_GROUPS = ("input", "tokens", "output", "head")
LAST, BEST = "last", "best"


@dataclass
class TrainConfig(ConfigBase):
    epochs: int = 5
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0  # adapters start at identity: decay would pull them to zero
    schedule: str = "cosine"
    warmup_ratio: float = 0.06
    grad_clip: float | None = 1.0
    seed: int = 0
    select_metric: str = "accuracy"  # higher is better; chosen on validation only
    patience: int | None = 3  # epochs without improvement before stopping
    eval_batch_size: int = 128
    max_steps: int | None = None
    checkpoint_every: int = 200  # steps
    group_by_length: bool = True  # batches of similar-length examples when the data has lengths()
    # Peak rates per parameter group (see ``parameter_groups``); None: ``lr``.
    lr_input: float | None = None  # input adapter's maps (shift, low-rank map, pixel maps)
    lr_tokens: float | None = None  # extra tokens and entry tokens
    lr_output: float | None = None  # output adapter
    lr_head: float | None = None  # the task's own tensors (head, temperature) and all else
    # Evaluate, select and save an exponential moving average of the trainable tensors (the
    # decay per step, e.g. 0.995); None: the live tensors.
    ema: float | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1 or None, got {self.patience}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.ema is not None and (isinstance(self.ema, bool) or not 0 < self.ema < 1):
            raise ConfigError(f"ema must be a decay in (0, 1) or None, got {self.ema!r}")
        for group in PARAMETER_GROUPS:
            rate = getattr(self, f"lr_{group}")
            if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0):
                raise ConfigError(f"lr_{group} must be > 0 or None, got {rate!r}")

    def group_lr(self, group: str) -> float:
        """The peak learning rate of a parameter group (``lr`` unless set)."""
        rate = getattr(self, f"lr_{group}", None) if group in PARAMETER_GROUPS else None
        return self.lr if rate is None else float(rate)


@dataclass
class TrainResult:
    best_metric: float
    best_epoch: int
    epochs_run: int
    steps: int
    train_seconds: float
    seconds_per_step: float
    history: list[dict] = field(default_factory=list)
    best_dir: Path | None = None
    group_lr: dict[str, float] = field(default_factory=dict)  # peak rate of each parameter group
    device: str = "cpu"  # where the user's side trained
    precision: str = "fp32"  # of the forward and loss (autocast)

    def summary(self) -> dict:
        """What a run reports (and ``exotune train`` writes to summary.json)."""
        return {
            "best_val": self.best_metric,
            "best_epoch": self.best_epoch,
            "steps": self.steps,
            "train_seconds": round(self.train_seconds, 1),
            "lr_groups": self.group_lr,
            "history": self.history,
            "adapter": str(self.best_dir),
            "device": self.device,
            "precision": self.precision,
        }


def parameter_groups(model) -> dict[str, list[torch.nn.Parameter]]:
    """``model.trainable_parameters()`` by component, in that order: the groups its parts declare
    (a part's ``parameter_groups()``, e.g. a gray-box tower's input / tokens / output), the
    rest ``head``. A model may declare its own groups instead."""
    params = model.trainable_parameters()
    own = getattr(model, "parameter_groups", None)
    parts = [model] if callable(own) else [m for m in model.modules() if m is not model]
    claimed: dict[int, str] = {}
    for part in parts:
        declare = getattr(part, "parameter_groups", None)
        if callable(declare):
            for group, tensors in declare().items():
                for p in tensors:
                    claimed.setdefault(id(p), group)
    groups: dict[str, list[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault(claimed.get(id(p), "head"), []).append(p)
    return groups


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _scheduler(optimizer, config: TrainConfig, total_steps: int):
    warmup = int(config.warmup_ratio * total_steps)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(total_steps, 2),
            pct_start=max(config.warmup_ratio, 0.01),
        )

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    """Fits a model; with ``output_dir`` it keeps ``last/`` (resume) and ``best/`` (artifact)."""

    def __init__(
        self,
        config: TrainConfig | None = None,
        output_dir: str | Path | None = None,
        progress: bool | str = True,
        callbacks: list[TrainerCallback] | None = None,
        report_to: tuple[str, ...] | list[str] = (),
        device: str | torch.device | None = None,
        precision: str = "fp32",
    ) -> None:
        """``callbacks``: hooks called on rank 0 (``exotune.callbacks.TrainerCallback``); with
        ``output_dir``, per-step and per-epoch CSV logs are written too, and TensorBoard event
        files when ``report_to`` names ``"tensorboard"``. ``device``: None, where the model is;
        "auto", CUDA when present. ``progress``: bars and a line per epoch; ``"epochs"``: the
        lines alone (a benchmark's log); False: nothing."""
        self.config = config or TrainConfig()
        self.output_dir = Path(output_dir) if output_dir else None
        if progress not in (True, False, "epochs"):
            raise ConfigError(f"progress must be True, False or 'epochs', got {progress!r}")
        self.progress = progress
        self.callbacks = list(callbacks or [])
        self.report_to = tuple(report_to)
        if self.report_to and self.output_dir is None:
            raise ConfigError("report_to writes into the run folder: give an output_dir")
        check_report_to(self.report_to)
        self.device = resolve_device(device) if device is not None else None
        self.precision = check_precision(precision, self.device)

    def _call(self, hook: str, info: dict | None = None) -> None:
        for callback in self._active:
            getattr(callback, hook)(*(() if info is None else (info,)))

    def _batches(self, data, epoch: int) -> list[np.ndarray]:
        g = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)  # same order on resume
        bs = self.config.batch_size
        if self.config.group_by_length and hasattr(data, "lengths"):
            return grouped_batches(data.lengths(), bs, g)
        order = torch.randperm(len(data), generator=g).numpy()
        return [order[i : i + bs] for i in range(0, len(data), bs)]

    def fit(self, model: Trainable, train, val, resume: bool = False) -> TrainResult:
        cfg = self.config
        if len(train) == 0 or len(val) == 0:
            raise ConfigError(f"train and validation data must be non-empty, got {len(train)} and {len(val)}")
        params = model.trainable_parameters()
        if not params:
            raise ConfigError("the model has no trainable parameters")
        device = self.device or params[0].device
        model.to(device)  # the user's tensors, in place; a box is no submodule and stays where it is
        distributed.setup()
        box = getattr(model, "box", None)  # autocast covers the box's device too when it is local
        self._autocast_devices = (device, getattr(box, "device", None))
        self._scaler = grad_scaler(self.precision, device)  # float16 only
        self._writes = self.output_dir is not None and distributed.is_main()
        self._show = self.progress and distributed.is_main()
        seed_everything(cfg.seed)
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        groups = parameter_groups(model)
        rates = {g: cfg.group_lr(g) for g in groups}
        # one rate for all: one group, as before per-group rates existed (their checkpoints resume)
        optimizer = torch.optim.AdamW(
            params if len(set(rates.values())) == 1 else [{"params": ps, "lr": rates[g]} for g, ps in groups.items()],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
        )
        scheduler = _scheduler(optimizer, cfg, total)
        state = {
            "epoch": 0,
            "step_in_epoch": 0,
            "global_step": 0,
            "best_metric": -math.inf,
            "best_epoch": -1,
            "bad_epochs": 0,
            "history": [],
            "train_seconds": 0.0,
            "done": False,
        }
        self._best_state = None
        self._average = ParameterAverage(model, cfg.ema) if cfg.ema else None
        if resume:
            state, self._best_state = self._load_last(model, optimizer, scheduler, state)
        distributed.broadcast_parameters(params)
        model.train()
        t_start = time.perf_counter() - state["train_seconds"]
        step_seconds = []
        self._active = (
            []
            if not distributed.is_main()
            else [*self.callbacks, *(loggers(self.output_dir, self.report_to) if self._writes else [])]
        )
        self._groups = list(groups) if len(optimizer.param_groups) > 1 else []
        self._call(
            "on_train_begin", {"epoch": state["epoch"], "global_step": state["global_step"], "total_steps": total}
        )
        card_scope = card_context()  # what this fit tells the model card stays inside it
        card_scope.__enter__()
        try:
            self._loop(model, train, val, optimizer, scheduler, params, total, state, t_start, step_seconds)
        except BaseException as err:
            # Interrupted or failed (e.g. a served box went away): the weights are those of the
            # last completed step, so save them; the next run resumes from here, nothing lost.
            if self._writes:
                state["train_seconds"] = time.perf_counter() - t_start
                try:
                    self._save_last(model, optimizer, scheduler, state, self._best_state)
                except Exception as save_err:  # never hide the original error
                    note(f"could not save a checkpoint ({save_err})")
                else:
                    note(
                        f"{type(err).__name__}: checkpoint of step {state['global_step']} saved to "
                        f"{self.output_dir / LAST} (resume to continue)"
                    )
            raise
        finally:
            card_scope.__exit__(None, None, None)
            self._call("on_train_end")
        best_state = self._best_state
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        return TrainResult(
            best_metric=state["best_metric"],
            best_epoch=state["best_epoch"],
            epochs_run=state["epoch"],
            steps=state["global_step"],
            train_seconds=state["train_seconds"],
            seconds_per_step=float(np.median(step_seconds)) if step_seconds else float("nan"),
            history=state["history"],
            best_dir=self.output_dir / BEST if self.output_dir else None,
            group_lr=rates,
            device=str(device),
            precision=self.precision,
        )

    def _loop(self, model, train, val, optimizer, scheduler, params, total, state, t_start, step_seconds) -> None:
        cfg = self.config
        while not state["done"] and state["epoch"] < cfg.epochs and state["global_step"] < total:
            epoch = state["epoch"]
            batches = self._batches(train, epoch)
            bar = progress_bar(
                total=len(batches),
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                enabled=self._show and self.progress is True,
                initial=state["step_in_epoch"],
            )
            losses = []
            for idx in batches[state["step_in_epoch"] :]:
                t0 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss = self._backward(model, train, idx, params)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at step {state['global_step']}; lower the lr")
                self._scaler.unscale_(optimizer)  # float16: the true gradients, before clipping
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                self._scaler.step(optimizer)  # float16: skipped when a gradient overflowed
                self._scaler.update()
                if self._average is not None:
                    self._average.update(model)
                rates = [g["lr"] for g in optimizer.param_groups]  # the rates this step took
                scheduler.step()
                step_seconds.append(time.perf_counter() - t0)
                losses.append(loss.item())
                state["step_in_epoch"] += 1
                state["global_step"] += 1
                self._call("on_step", self._step_info(state, epoch, losses[-1], rates))
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                if state["global_step"] >= total:
                    break
                if self._writes and state["global_step"] % cfg.checkpoint_every == 0:
                    state["train_seconds"] = time.perf_counter() - t_start
                    self._save_last(model, optimizer, scheduler, state, self._best_state)
            bar.close()
            with self._averaged(model):  # the average (if any) is what is evaluated, kept and saved
                self._evaluate(model, val, losses, epoch, state)
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
                state["done"] = True
            state["train_seconds"] = time.perf_counter() - t_start
            if self._writes:
                self._save_last(model, optimizer, scheduler, state, self._best_state)

    def _averaged(self, model):
        return nullcontext() if self._average is None else self._average.swapped(model)

    def _evaluate(self, model, val, losses: list[float], epoch: int, state: dict) -> None:
        """Score the epoch's model on validation; keep (and save) it when it is the best yet."""
        cfg = self.config
        # rank 0 evaluates and tells the others, so that every rank takes the same decisions
        metrics = distributed.agree(model.evaluate, val, batch_size=cfg.eval_batch_size)
        if cfg.select_metric not in metrics:
            raise ConfigError(f"select_metric {cfg.select_metric!r} not in {sorted(metrics)}")
        score = metrics[cfg.select_metric]
        self._call("on_evaluate", {"epoch": epoch + 1, **metrics})
        state["history"].append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)) if losses else None,
                **{f"val_{k}": v for k, v in metrics.items()},
            }
        )
        self._call("on_epoch", dict(state["history"][-1]))
        if score > state["best_metric"]:
            state.update(best_metric=score, best_epoch=epoch + 1, bad_epochs=0)
            self._best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if self._writes:
                update_run_info(metrics={"validation": metrics}, best_epoch=epoch + 1)  # the model card's
                model.save_pretrained(self.output_dir / BEST)
        else:
            state["bad_epochs"] += 1
        if self._show:
            note(
                f"epoch {epoch + 1}: loss {state['history'][-1]['train_loss']:.4f}, "
                f"val {cfg.select_metric} {score:.4f} (best {state['best_metric']:.4f})"
            )

    def _step_info(self, state: dict, epoch: int, loss: float, rates: list[float]) -> dict:
        info = {"step": state["global_step"], "epoch": epoch + 1, "loss": loss, "lr": rates[0]}
        info.update({f"lr_{g}": r for g, r in zip(self._groups, rates, strict=False)})
        return info

    def _backward(self, model, train, idx, params) -> torch.Tensor:
        """Gradients of the mean loss over the global batch ``idx``; returns that loss.

        Distributed, this rank's loss covers only its slice, weighted by its share of the
        examples, and the gradients are summed over ranks.
        """
        part, share = distributed.shard(idx)
        loss = None
        if len(part):
            with autocast(self.precision, *self._autocast_devices):
                loss = model.loss(train.subset(part))
            if share != 1.0:
                loss = loss * share
            self._scaler.scale(loss).backward()
        # float16: every rank scales alike, so the summed gradients are unscaled together
        return distributed.reduce_gradients(params, loss)

    # -- checkpoints ------------------------------------------------------------------------

    def _save_last(self, model, optimizer, scheduler, state, best_state) -> None:
        tree = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best": best_state,
            "rng": torch.get_rng_state(),
            "scaler": self._scaler.state_dict(),
            "average": None if self._average is None else self._average.state_dict(),
        }  # float16: the scale reached; else empty
        skeleton, tensors = flatten_state(tree)
        meta = {"state": state, "config": self.config.to_dict(), "skeleton": skeleton}
        write_folder(self.output_dir / LAST, {"trainer_state.json": meta, "checkpoint.safetensors": tensors})

    def _load_last(self, model, optimizer, scheduler, state):
        if self.output_dir is None:
            raise ConfigError("resume needs an output_dir that holds a checkpoint")
        folder = self.output_dir / LAST
        if not folder.is_dir():
            warnings.warn(f"no checkpoint at {folder}; starting from scratch", stacklevel=3)
            return state, None
        verify_folder(folder)
        meta = read_json(folder / "trainer_state.json")
        with saved_config(folder / "trainer_state.json"):
            saved = TrainConfig.from_dict(json_object(meta, "config"))
            check_loop_state(json_object(meta, "state"), state)
        changed = [
            f.name
            for f in fields(TrainConfig)
            if f.name != "epochs" and getattr(saved, f.name) != getattr(self.config, f.name)
        ]
        if changed:
            raise ConfigError(f"cannot resume from {folder}: training settings differ ({', '.join(changed)})")
        extend_state(saved, self.config, meta["state"], folder)  # more epochs: the schedule spans the new total
        file = folder / "checkpoint.safetensors"
        with saved_config(file):
            tree = unflatten_state(meta["skeleton"], read_tensors(file), str(file))
            check_tensors(tree["model"], model.state_dict(), file)
            if tree["best"] is not None:
                check_tensors(tree["best"], model.state_dict(), file)
            rng = tree["rng"]
            if (
                not isinstance(rng, torch.Tensor)
                or rng.dtype != torch.uint8
                or rng.shape != torch.get_rng_state().shape
            ):
                raise ArtifactError(f"{file}: rng is not a random generator state")
            check_optimizer_state(tree["optimizer"], optimizer, file)
            model.load_state_dict(tree["model"])
            optimizer.load_state_dict(tree["optimizer"])
            scheduler.load_state_dict(tree["scheduler"])
            restore_scaler(self._scaler, tree.get("scaler"), str(file))
            if self._average is not None and tree.get("average") is not None:
                self._average.load_state_dict(tree["average"], str(file))
        torch.set_rng_state(rng)
        if self._show:
            note(f"resumed from {folder} at epoch {meta['state']['epoch'] + 1}, step {meta['state']['global_step']}")
        return meta["state"], tree["best"]

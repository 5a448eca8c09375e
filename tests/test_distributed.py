"""Data-parallel training: 2 gloo processes on CPU, launched as torchrun would (its environment
variables), equal one process over the same global batches; only rank 0 writes; resume works."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from exotune.bench.served import free_port
from exotune.graybox import DGAConfig
from exotune.tasks.classification import TextClassifier
from exotune.train import TrainConfig, Trainer

from .conftest import colour_data

# batches of 15 over 48 examples: 15, 15, 15, 3 split 8/7, 8/7, 8/7, 2/1 between two ranks
CONFIG = dict(epochs=2, batch_size=15, lr=2e-2, patience=None, checkpoint_every=3)
CRASH_AT = 6  # loss calls: mid-epoch 2
WORLD = 2


def _data():
    return colour_data(48, seed=0), colour_data(12, seed=1)


def _model(box, seed=0):
    torch.manual_seed(seed)
    return TextClassifier(box, ["red", "blue", "green"], DGAConfig())


def _crashing(model, at_call):
    original, calls = model.loss, {"n": 0}

    def loss(data):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return original(data)

    model.loss = loss
    return model


def _save(model, history, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps(history))


def _worker(rank: int, port: int, backbone: str, tmp: str) -> None:
    """One rank: a full run, then a run that crashes and is resumed. Env as torchrun sets it."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        CUDA_VISIBLE_DEVICES="",
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    from exotune.boxes import load_box

    tmp = Path(tmp)
    box = load_box(backbone, pooling="mean", normalize=False)
    train, val = _data()
    cfg = TrainConfig(**CONFIG)
    # a different start on rank 1: the trainer starts every rank from rank 0's weights
    model = _model(box, seed=rank)
    result = Trainer(cfg, tmp / "full" / f"rank{rank}", progress=False).fit(model, train, val)
    assert dist.is_initialized() and dist.get_world_size() == WORLD  # joined from the environment
    _save(model, result.history, tmp / "results" / f"full{rank}")

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp / "run", progress=False).fit(_crashing(_model(box), CRASH_AT), train, val)
    dist.barrier()  # rank 0 has written its checkpoint
    model = _model(box)
    result = Trainer(cfg, tmp / "run", progress=False).fit(model, train, val, resume=True)
    _save(model, result.history, tmp / "results" / f"resumed{rank}")


def _spawn(backbone: Path, tmp: Path, timeout_s: float = 120.0) -> None:
    import torch.multiprocessing as mp

    (tmp / "results").mkdir()
    ctx = mp.start_processes(
        _worker, args=(free_port(), str(backbone), str(tmp)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=2):  # raises if a rank failed
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed training did not finish within {timeout_s} s")


def _load(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path.with_suffix(".safetensors"))), json.loads(path.with_suffix(".json").read_text())


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_two_processes_equal_one_over_the_same_global_batch(tiny_backbone, tiny_box, tmp_path):
    _spawn(tiny_backbone, tmp_path)
    train, val = _data()
    reference = _model(tiny_box)
    expected = Trainer(TrainConfig(**CONFIG), progress=False).fit(reference, train, val).history
    ref = reference.state_dict()
    assert any(not torch.equal(v, _model(tiny_box).state_dict()[k]) for k, v in ref.items())  # it trained
    for name in ("full0", "full1", "resumed0", "resumed1"):
        weights, history = _load(tmp_path / "results" / name)
        assert weights.keys() == ref.keys()
        for key, value in ref.items():
            torch.testing.assert_close(weights[key], value, atol=1e-5, rtol=1e-4, msg=f"{name}: {key}")
        assert [h["val_accuracy"] for h in history] == [h["val_accuracy"] for h in expected]
        if name.startswith("full"):  # (after a resume, an epoch's mean loss covers only its resumed steps)
            for got, want in zip(history, expected, strict=True):  # the logged loss is the global batch's
                assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-5)
    # only rank 0 wrote: its own folder is complete, rank 1's was never created
    assert _files(tmp_path / "full" / "rank0") == [
        "best/README.md",
        "best/adapter_config.json",
        "best/adapter_model.safetensors",
        "best/checksums.sha256",
        "last/checkpoint.safetensors",
        "last/checksums.sha256",
        "last/trainer_state.json",
        "logs/epochs.csv",
        "logs/steps.csv",
    ]
    assert not (tmp_path / "full" / "rank1").exists()
    state = json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())["state"]
    assert state["global_step"] == 8 and state["epoch"] == 2  # the resumed run finished


def test_one_process_is_not_distributed(monkeypatch):
    from exotune import distributed

    for name in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.setup()
    assert distributed.world_size() == 1 and distributed.is_main()
    batch = torch.arange(5).numpy()
    part, share = distributed.shard(batch)
    assert part.tolist() == [0, 1, 2, 3, 4] and share == 1.0

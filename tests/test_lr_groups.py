"""Per-component learning rates: groups declared by the model, their rates, resume, CLI."""

import json

import pytest
import torch

from exotune.artifacts import read_tensors, unflatten_state
from exotune.cli import main
from exotune.errors import ConfigError
from exotune.graybox import DGAConfig, EntryTokensConfig
from exotune.graybox.input_adapters import TokenLowRankConfig
from exotune.tasks.classification import TextClassifier
from exotune.tasks.retrieval import DualEncoder
from exotune.train import PARAMETER_GROUPS, TrainConfig, Trainer, parameter_groups

from .conftest import colour_data

FAST = dict(batch_size=16, patience=None, checkpoint_every=3, schedule="constant", warmup_ratio=0.0)
LOWRANK = DGAConfig(input_adapter=TokenLowRankConfig(rank=2))


def _model(box, dga=LOWRANK, seed=0):
    torch.manual_seed(seed)
    return TextClassifier(box, ["red", "blue", "green"], dga)


def _ids(params):
    return {id(p) for p in params}


def test_groups_cover_every_trainable_tensor_once(tiny_box, tiny_backbone):
    from exotune.boxes import load_box

    model = _model(tiny_box)
    groups = parameter_groups(model)
    assert list(groups) == ["input", "tokens", "output", "head"]
    flat = [id(p) for ps in groups.values() for p in ps]
    assert sorted(flat) == sorted(id(p) for p in model.trainable_parameters())  # each once
    assert _ids(groups["head"]) == _ids(model.head.parameters())
    lga = _model(load_box(str(tiny_backbone), entry_points="all"), DGAConfig(entry_tokens=EntryTokensConfig()))
    tokens = _ids(parameter_groups(lga)["tokens"])
    assert _ids(lga.encoder.entry_tokens.parameters()) | {id(lga.encoder.input_adapter.extra)} == tokens
    retriever = DualEncoder(tiny_box, LOWRANK)  # two towers: each declares its own
    groups = parameter_groups(retriever)
    assert set(groups) == {"input", "tokens", "output", "head"}
    assert _ids(groups["head"]) == {id(retriever.log_scale)}
    assert _ids(retriever.doc_tower.output_adapter.parameters()) <= _ids(groups["output"])


def test_each_group_trains_at_its_own_rate(tiny_box):
    """A tiny base rate with a large token rate: only the tokens move."""
    train, val = colour_data(32, seed=0), colour_data(12, seed=1)
    model = _model(tiny_box)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, lr=1e-9, lr_tokens=5e-2, **FAST)
    result = Trainer(cfg, progress=False).fit(model, train, val)
    assert result.group_lr == {"input": 1e-9, "tokens": 5e-2, "output": 1e-9, "head": 1e-9}
    assert result.summary()["lr_groups"] == result.group_lr
    moved = {k: (v - before[k]).abs().max().item() for k, v in model.state_dict().items()}
    assert moved["encoder.input_adapter.extra"] > 1e-2
    assert all(m < 1e-6 for k, m in moved.items() if k != "encoder.input_adapter.extra")


def test_one_rate_keeps_one_optimizer_group(tiny_box, tmp_path):
    """Unchanged behaviour by default: one group, as in checkpoints written before groups existed."""
    train, val = colour_data(16, seed=0), colour_data(8, seed=1)
    cfg = TrainConfig(epochs=1, lr=1e-2, lr_head=1e-2, **FAST)
    Trainer(cfg, tmp_path, progress=False).fit(_model(tiny_box), train, val)
    meta = json.loads((tmp_path / "last" / "trainer_state.json").read_text())
    tree = unflatten_state(meta["skeleton"], read_tensors(tmp_path / "last" / "checkpoint.safetensors"))
    assert len(tree["optimizer"]["param_groups"]) == 1


def _crash_at(model, step):
    original, calls = model.loss, [0]

    def loss(data):
        calls[0] += 1
        if calls[0] == step:
            raise KeyboardInterrupt
        return original(data)

    model.loss = loss
    return model


@pytest.mark.parametrize("schedule", ["constant", "onecycle"])
def test_resume_with_groups_matches_an_uninterrupted_run(schedule, tiny_box, tmp_path):
    train, val = colour_data(64, seed=0), colour_data(12, seed=1)
    cfg = TrainConfig(epochs=2, lr=1e-2, lr_tokens=1e-1, lr_input=3e-3, **{**FAST, "schedule": schedule})
    reference = _model(tiny_box)
    Trainer(cfg, tmp_path / "ref", progress=False).fit(reference, train, val)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "run", progress=False).fit(_crash_at(_model(tiny_box), 6), train, val)
    resumed = _model(tiny_box)
    result = Trainer(cfg, tmp_path / "run", progress=False).fit(resumed, train, val, resume=True)
    assert result.steps == 8
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=1e-6, rtol=1e-5)
    with pytest.raises(ConfigError, match="lr_tokens"):
        Trainer(TrainConfig(**{**cfg.__dict__, "lr_tokens": 1.0}), tmp_path / "run", progress=False).fit(
            _model(tiny_box), train, val, resume=True
        )


@pytest.mark.parametrize("group", PARAMETER_GROUPS)
def test_group_rates_are_validated(group):
    with pytest.raises(ConfigError, match=f"lr_{group}"):
        TrainConfig(**{f"lr_{group}": 0.0})
    assert TrainConfig(**{f"lr_{group}": 0.1}).group_lr(group) == 0.1
    assert TrainConfig(lr=0.2).group_lr(group) == 0.2


def test_cli_train_flags_reach_the_run(tiny_backbone, tmp_path, capsys):
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"the {c} car {i},{c}\n" for i in range(10) for c in ("red", "blue")))
    run = tmp_path / "run"
    argv = [
        "train",
        "--file",
        str(csv),
        "--backbone",
        str(tiny_backbone),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--quiet",
        "--text-adapter",
        "token-lowrank",
        "--lowrank-rank",
        "3",
        "--lowrank-activation",
        "gelu",
        "--lowrank-kernel",
        "3",
        "--input-gain",
        "--lr",
        "1e-3",
        "--lr-tokens",
        "2e-2",
        "--lr-head",
        "5e-4",
        "--output-dir",
        str(run),
    ]
    assert main(argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["lr_groups"] == {"input": 1e-3, "tokens": 2e-2, "output": 1e-3, "head": 5e-4}
    config = json.loads((run / "best" / "adapter_config.json").read_text())
    assert config["dga"]["input_adapter"] == {
        "type": "token-lowrank",
        "rank": 3,
        "activation": "gelu",
        "kernel": 3,
        "shift": True,
        "extra_tokens": 1,
        "init_std": 0.02,
        "gain": True,
    }
    capsys.readouterr()
    assert main([*argv[:-2], "--lr-tokens", "-1", "--output-dir", str(tmp_path / "bad")]) == 2
    assert "lr_tokens" in capsys.readouterr().err

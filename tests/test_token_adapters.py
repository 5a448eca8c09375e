"""The input-dependent text adapters (token-lowrank, token-conditioned) and the bench's gray-box
method names."""

import dataclasses

import pytest
import torch

from exotune.bench import classification, graymethods, retrieval
from exotune.errors import ConfigError
from exotune.graybox import DGAConfig, GrayBoxModel
from exotune.graybox.input_adapters import TextShiftConfig, TokenConditionedConfig, TokenLowRankConfig
from exotune.graybox.output_adapters import LinearOutputConfig, ResidualMLPAdapter, ResidualMLPConfig
from exotune.graybox.registry import build_adapter
from exotune.tasks.classification import TextClassifier

from .conftest import backbone_module


def _moved(adapter, value=0.3):
    with torch.no_grad():
        adapter.up.weight.fill_(value)
    return adapter


@pytest.mark.parametrize("activation", ["none", "gelu", "relu", "tanh"])
def test_lowrank_changes_real_tokens_only(activation, tiny_box):
    cfg = TokenLowRankConfig(rank=4, activation=activation, shift=False, extra_tokens=0)
    adapter = _moved(build_adapter("input", cfg, tiny_box.spec))
    batch = tiny_box.embed(["the red car is fast", "blue"])
    embeds, mask = adapter(batch.embeds, batch.mask)
    pad = batch.mask == 0
    assert pad.any()
    torch.testing.assert_close(embeds[pad], batch.embeds[pad])  # pads untouched
    assert not torch.allclose(embeds[~pad], batch.embeds[~pad])
    assert torch.equal(mask, batch.mask)


def test_lowrank_is_input_dependent_and_composes_with_shift_and_tokens(tiny_box):
    cfg = TokenLowRankConfig(rank=2, extra_tokens=2)
    adapter = _moved(build_adapter("input", cfg, tiny_box.spec))
    batch = tiny_box.embed(["the red car", "blue sky"])
    embeds, mask = adapter(batch.embeds, batch.mask)
    assert embeds.shape[1] == batch.embeds.shape[1] + 2 and mask[:, 1:3].eq(1).all()
    offset = embeds[:, 3:] - batch.embeds[:, 1:]  # the real tokens after the extra ones
    real = batch.mask[:, 1:].bool()
    assert not torch.allclose(offset[real][0], offset[real][1])  # not a constant shift
    expected = adapter.up(adapter.down(batch.embeds)) + adapter.shift  # linear by default
    torch.testing.assert_close(embeds[:, 3:][real], (batch.embeds + expected)[:, 1:][real])


def test_lowrank_kernel_reads_the_neighbours_and_not_the_pads(tiny_box):
    """``kernel=3``: a token's offset moves with the token beside it, never with a pad; at the
    start (``W`` the identity at the centre) it is the kernel-1 map with the same ``U`` and ``V``."""
    wide = build_adapter("input", TokenLowRankConfig(rank=4, kernel=3, shift=False, extra_tokens=0), tiny_box.spec)
    narrow = build_adapter("input", TokenLowRankConfig(rank=4, shift=False, extra_tokens=0), tiny_box.spec)
    batch = tiny_box.embed(["the red car is fast", "blue"])
    torch.testing.assert_close(wide(batch.embeds, batch.mask)[0], batch.embeds)  # U = 0: the identity
    with torch.no_grad():
        narrow.down.weight.copy_(wide.down.weight)
    _moved(wide), _moved(narrow)
    torch.testing.assert_close(wide(batch.embeds, batch.mask)[0], narrow(batch.embeds, batch.mask)[0])
    with torch.no_grad():
        wide.mix.weight.add_(0.1)  # now the neighbours count
    before = wide(batch.embeds, batch.mask)[0]
    changed = batch.embeds.clone()
    changed[0, 3] += 1.0  # the first text's third word
    after = wide(changed, batch.mask)[0]
    moved = (after - before).abs().sum(-1)[0] > 1e-6  # (T,): the first text's positions that moved
    assert moved[2:5].all() and not moved[:2].any() and not moved[5:].any()
    pad = batch.mask == 0
    padded = batch.embeds.clone()
    padded[pad] += 5.0  # whatever sits in the pads
    out = wide(padded, batch.mask)[0]
    torch.testing.assert_close(out[~pad], before[~pad])  # the real tokens do not read pads
    torch.testing.assert_close(out[pad], padded[pad])  # and pads stay untouched
    with pytest.raises(ConfigError, match="kernel"):  # one map per text: no neighbours to read
        TokenConditionedConfig(kernel=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kernel": 2}, "kernel"),
        ({"kernel": 0}, "kernel"),
        ({"rank": 0}, "rank"),
        ({"rank": True}, "rank"),
        ({"activation": "swish"}, "activation"),
        ({"extra_tokens": -1}, "extra_tokens"),
        ({"init_std": -1.0}, "init_std"),
    ],
)
def test_lowrank_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TokenLowRankConfig(**kwargs)


@pytest.mark.parametrize("kernel", [1, 3])
def test_lowrank_trains_only_the_users_tensors_and_round_trips(tiny_box, tmp_path, kernel):
    dga = DGAConfig(input_adapter=TokenLowRankConfig(rank=3, activation="gelu", kernel=kernel))
    assert DGAConfig.from_dict(dga.to_dict()) == dga
    assert ("kernel" in dga.to_dict()["input_adapter"]) == (kernel != 1)  # off: saved as before it existed
    model = TextClassifier(tiny_box, ["red", "blue"], dga)
    _moved(model.encoder.input_adapter)
    texts = ["the red car", "blue sky is big"]
    model(texts).sum().backward()
    assert all(p.grad is None for p in backbone_module(tiny_box).parameters())
    assert model.encoder.input_adapter.down.weight.grad.abs().sum() > 0
    if kernel > 1:
        mix = model.encoder.input_adapter.mix.weight
        assert mix.grad.abs().sum() > 0
        assert id(mix) in {id(p) for p in model.encoder.parameter_groups()["input"]}
    model.save_pretrained(tmp_path / "a")
    again = TextClassifier.from_pretrained(tmp_path / "a", tiny_box)
    assert again.dga == dga
    torch.testing.assert_close(again.predict_proba(texts), model.predict_proba(texts))


def test_parameter_groups_split_a_tower(tiny_box):
    model = GrayBoxModel(tiny_box, DGAConfig(input_adapter=TokenLowRankConfig(rank=2)))
    groups = {k: {id(p) for p in v} for k, v in model.parameter_groups().items()}
    adapter = model.input_adapter
    assert groups["tokens"] == {id(adapter.extra)}
    assert groups["input"] == {id(adapter.shift), id(adapter.down.weight), id(adapter.up.weight)}
    assert groups["output"] == {id(p) for p in model.output_adapter.parameters()}


def test_conditioned_tokens_follow_each_text(tiny_box):
    """Offsets of the shift and extra tokens come from the plain box's output for each text; the
    tower computes it once per text, without gradient."""
    cfg = TokenConditionedConfig(rank=3, activation="tanh", extra_tokens=2)
    model = GrayBoxModel(tiny_box, DGAConfig(cfg, None))
    plain = GrayBoxModel(tiny_box, DGAConfig(TextShiftConfig(extra_tokens=2), None))
    plain.input_adapter.load_state_dict(model.input_adapter.state_dict(), strict=False)
    texts = ["the red car", "a sky is very blue"]
    torch.testing.assert_close(model.encode(texts), plain.encode(texts))  # U = 0: text-shift
    adapter = _moved(model.input_adapter, 0.05)
    batch = tiny_box.embed(texts)
    context = tiny_box.forward(batch.embeds, batch.mask)
    embeds, mask = adapter(batch.embeds, batch.mask, context)
    assert embeds.shape[1] == batch.embeds.shape[1] + 2 and mask[:, 1:3].eq(1).all()
    offsets = adapter.up(torch.tanh(adapter.down(context))).view(2, 3, -1)
    torch.testing.assert_close(embeds[:, 1:3], adapter.extra + offsets[:, 1:])  # per text
    assert not torch.allclose(embeds[0, 1:3], embeds[1, 1:3])
    torch.testing.assert_close(embeds[:, 0], batch.embeds[:, 0] + adapter.shift + offsets[:, 0])

    calls = []
    forward = tiny_box.forward
    tiny_box.forward = lambda *a, **k: calls.append(torch.is_grad_enabled()) or forward(*a, **k)
    try:
        fresh = ["green grass", "a red sky at night"]  # encode() above met the others
        model(fresh).sum().backward()
        model(fresh[::-1]).sum().backward()
        model.forget_plain_outputs()  # as in a first epoch again (the steps suite's dearest step)
        model(fresh).sum().backward()
    finally:
        del tiny_box.forward
    assert calls == [False, True, True, False, True]  # the plain call once per text, without gradient
    assert adapter.down.weight.grad.abs().sum() > 0 and adapter.up.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone_module(tiny_box).parameters())


def test_conditioned_tokens_copies_and_round_trip(tiny_box, tmp_path):
    dga = DGAConfig(input_adapter=TokenConditionedConfig(rank=2, extra_tokens=1, copies_per=2, shift=False))
    assert DGAConfig.from_dict(dga.to_dict()) == dga
    model = TextClassifier(tiny_box, ["red", "blue"], dga)
    _moved(model.encoder.input_adapter, 0.1)
    texts = ["the red car", "blue sky is big and wide"]
    model(texts).sum().backward()
    model.save_pretrained(tmp_path / "a")
    again = TextClassifier.from_pretrained(tmp_path / "a", tiny_box)
    assert again.dga == dga
    torch.testing.assert_close(again.predict_proba(texts), model.predict_proba(texts))
    with pytest.raises(ConfigError, match="rank"):
        TokenConditionedConfig(rank=0)


# -- bench names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("dga-lowrank16", ("dga", "both+lowrank(r=16)", "dark-gray")),
        ("dga-input-only-lowrank4-gelu", ("dga", "input-only+lowrank(r=4, gelu)", "dark-gray")),
        ("lga-8", ("lga", "tokens=8", "light-gray")),
        ("lga-8-upper", ("lga", "tokens=8, upper half", "light-gray")),
        ("lga-8-add-drop10", ("lga", "tokens=8, added+dropout=0.1", "light-gray")),
        ("lga-1-shift", ("lga", "tokens=1, shifts", "light-gray")),
        ("lga-2-affine", ("lga", "tokens=2, affine", "light-gray")),
        ("lga-8-input-only-drop10", ("lga", "input-only, tokens=8+dropout=0.1", "light-gray")),
        ("dga-both-drop10-boxdrop", ("dga", "both+dropout=0.1+box dropout", "dark-gray")),
        ("lga-4-upper-lowrank8", ("lga", "tokens=4, upper half+lowrank(r=8)", "light-gray")),
        ("lga", ("lga", "tokens=2", "light-gray")),
        ("dga-both-cond16", ("dga", "both+conditioned(r=16)", "dark-gray")),
        ("dga-both-gain-x0", ("dga", "both+gain+extra=0", "dark-gray")),
        ("lga-2-affine-cond8-gelu", ("lga", "tokens=2, affine+conditioned(r=8, gelu)", "light-gray")),
        ("dga-both-gain-mlp256-drop10", ("dga", "both+gain+mlp(h=256)+dropout=0.1", "dark-gray")),
        ("dga-output-only-mlp64", ("dga", "output-only+mlp(h=64)", "dark-gray")),
        ("dga-input-only-lowrank32-gelu-k3", ("dga", "input-only+lowrank(r=32, gelu, k=3)", "dark-gray")),
        ("dga-both-gain-lowrank16-k5-drop10", ("dga", "both+gain+lowrank(r=16, k=5)+dropout=0.1", "dark-gray")),
    ],
)
def test_gray_method_names(name, expected):
    assert graymethods.describe(name, classification.METHODS) == expected
    assert graymethods.describe(name, retrieval.METHODS) == expected


def test_table_names_keep_their_variants():
    for methods in (classification.METHODS, retrieval.METHODS):
        for name, (method, variant, access) in methods.items():
            gray = graymethods.parse(name)
            if method in ("dga", "lga"):
                assert (gray.method, gray.variant, gray.access) == (method, variant, access)


@pytest.mark.parametrize(
    "name",
    [
        "dga-output-only-lowrank8",
        "dga-output-only-cond8",
        "dga-output-only-gain",
        "dga-lowrank0",
        "lga-0",
        "svm",
        "dga-lowrank8-swish",
        "dga-both-add",
        "lga-2-output-only-x2",
        "dga-input-only-mlp64",
        "dga-both-mlp0",
        "dga-lowrank8-k2",
        "dga-both-cond8-k3",
    ],
)
def test_bad_gray_method_names_are_clear(name):
    with pytest.raises(ConfigError, match=name if name != "svm" else "unknown method"):
        graymethods.describe(name, classification.METHODS)


def test_upper_half_entry_tokens(tiny_backbone):
    gray = graymethods.parse("lga-3-upper")
    box = gray.load_box(str(tiny_backbone))
    dga = gray.dga_config(box)
    names = [e.name for e in box.spec.entry_points]
    assert dga.entry_tokens.points == names[len(names) // 2 :] and dga.entry_tokens.tokens == 3
    model = GrayBoxModel(box, dga)
    assert model.entry_tokens.names == names[len(names) // 2 :]
    assert box.spec.entry_mode == "replace"
    added = graymethods.parse("lga-3-upper-add").load_box(str(tiny_backbone))
    assert added.spec.entry_mode == "add" and added.spec.entry_points == box.spec.entry_points
    assert graymethods.parse("dga-both").box_options() == {}
    assert graymethods.parse("dga-both-boxdrop").box_options() == {"training_dropout": True}


def test_mlp_output_adapter_by_name(tiny_box):
    dga = graymethods.parse("dga-both-gain-mlp8").dga_config(tiny_box)
    assert dga.output_adapter == ResidualMLPConfig(hidden=8) and dga.input_adapter.gain
    assert graymethods.parse("dga-both").dga_config(tiny_box).output_adapter == LinearOutputConfig()
    model = TextClassifier(tiny_box, ["red", "blue"], dga)
    model(["the red car", "blue sky"]).sum().backward()
    adapter = model.encoder.output_adapter
    assert isinstance(adapter, ResidualMLPAdapter) and adapter.up.weight.grad.abs().sum() > 0


def test_group_rates_and_budget_keys():
    rates = {"dga.tokens": 5e-2, "lga.tokens": 1e-1, "dga.head": 1e-3, "lora.head": 2e-3}
    assert graymethods.group_rates(rates, "dga") == {"lr_tokens": 5e-2, "lr_head": 1e-3}
    assert graymethods.group_rates(rates, "lga") == {"lr_tokens": 1e-1, "lr_head": 1e-3}
    assert graymethods.group_rates(rates, "lora") == {"lr_head": 2e-3}
    for suite in (classification, retrieval):
        plain = suite.Budget()
        assert "group_lr" not in plain.for_dataset(suite.DATASETS[0])  # logged runs keep their keys
        assert plain.train_lrs("dga") == {"lr": plain.lr}
        grouped = dataclasses.replace(plain, group_lr={"dga.tokens": 5e-2})
        assert grouped.for_dataset(suite.DATASETS[0])["group_lr"] == {"dga.tokens": 5e-2}
        assert grouped.train_lrs("lga") == {"lr": plain.lr_for("lga"), "lr_tokens": 5e-2}
    with pytest.raises(ConfigError, match="GROUP"):
        graymethods.check_group_key("dga.everything")


def test_bench_takes_gray_names_and_group_rates(tmp_path, monkeypatch, capsys):
    import exotune.bench as bench
    from exotune.cli import main

    calls = []

    def fake_run(fn, name, dataset, seed, data_dir, budget, backbone):
        calls.append((name, budget.train_lrs(graymethods.parse(name).method)))
        method, variant, access = graymethods.describe(name, classification.METHODS)
        return {
            "dataset": dataset,
            "method": method,
            "variant": variant,
            "access": access,
            "seed": seed,
            "metrics": {"accuracy": 0.5, "macro_f1": 0.5},
            "trainable_params": 1,
            "train_seconds": 1.0,
            "seconds_per_step": 0.1,
            "lr": budget.lr,
            "n_train": 1,
            "n_val": 1,
            "n_test": 1,
        }

    monkeypatch.setattr(bench, "run_isolated", fake_run)
    argv = [
        "bench",
        "classification",
        "--methods",
        "dga-lowrank8",
        "lga-8-upper",
        "--seeds",
        "0",
        "--lr",
        "dga=1e-3",
        "dga.tokens=5e-2",
        "--out-dir",
        str(tmp_path),
    ]
    assert main(argv) == 0
    assert calls == [
        ("dga-lowrank8", {"lr": 1e-3, "lr_tokens": 5e-2}),
        ("lga-8-upper", {"lr": 1e-3, "lr_tokens": 5e-2}),
    ]
    table = (tmp_path / "classification.md").read_text()
    assert "both+lowrank(r=8)" in table and "tokens=8, upper half" in table
    capsys.readouterr()
    assert main([*argv[:-2], "--methods", "dga-lowrank8-swish", "--out-dir", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main([*argv[:-2], "--lr", "dga.all=1e-3", "--out-dir", str(tmp_path)]) == 2
    assert "GROUP" in capsys.readouterr().err


def test_steps_suite_takes_gray_names(tmp_path, monkeypatch, capsys):
    from exotune.bench import steps
    from exotune.cli import main

    seen = []

    def fake_step(fn, name, dataset, data_dir, budget, backbone, n):
        seen.append(name)
        method, variant, access = graymethods.describe(name, classification.METHODS)
        return {
            "dataset": dataset,
            "method": method,
            "variant": variant,
            "access": access,
            "batch_size": 8,
            "trainable_params": 1,
            "seconds_per_step": 0.1,
            "seconds_per_step_p90": 0.1,
            "peak_memory_mb": 1,
        }

    monkeypatch.setattr(steps, "run_isolated", fake_step)
    assert main(["bench", "steps", "--methods", "dga-lowrank16", "lora", "--out-dir", str(tmp_path)]) == 0
    assert seen == ["dga-lowrank16", "lora"]
    assert "both+lowrank(r=16)" in (tmp_path / "steps.md").read_text()
    capsys.readouterr()
    assert main(["bench", "steps", "--methods", "svm", "--out-dir", str(tmp_path)]) == 2
    assert "no method 'svm'" in capsys.readouterr().err


def test_copies_of_the_extra_tokens_follow_each_text_and_keep_its_share(tiny_box):
    from exotune.graybox.input_adapters import TextShiftConfig

    adapter = build_adapter("input", TextShiftConfig(extra_tokens=2, copies_per=3), tiny_box.spec)
    with torch.no_grad():
        adapter.extra.normal_()
    texts = ["the red car is very fast today", "blue"]
    batch = tiny_box.embed(texts)
    lengths = batch.mask.sum(1).tolist()
    embeds, mask = adapter(batch.embeds, batch.mask)
    for row, n in enumerate(lengths):
        copies = -(-n // 3)
        assert mask[row].tolist() == [1] * (n + 2 * copies) + [0] * (mask.shape[1] - n - 2 * copies)
        torch.testing.assert_close(embeds[row, :n], batch.embeds[row, :n] + adapter.shift)  # the text stays put
        torch.testing.assert_close(embeds[row, n : n + 2 * copies], adapter.extra.repeat(copies, 1))
    # a text's output does not depend on what else is in its batch
    model = GrayBoxModel(tiny_box, DGAConfig.variant("input-only", TextShiftConfig(extra_tokens=2, copies_per=3)))
    with torch.no_grad():
        model.input_adapter.extra.normal_()
    together = model(texts)
    alone = torch.cat([model([t]) for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    together.sum().backward()
    assert model.input_adapter.extra.grad.abs().sum() > 0


def test_copies_need_extra_tokens_and_a_mean_pooling_box(tiny_box):
    from exotune.graybox.input_adapters import TextShiftConfig

    with pytest.raises(ConfigError, match="extra_tokens"):
        TextShiftConfig(extra_tokens=0, copies_per=4)
    cls_spec = dataclasses.replace(tiny_box.spec, pooling="cls")
    with pytest.raises(ConfigError, match="mean-pooling"):
        build_adapter("input", TextShiftConfig(copies_per=4), cls_spec)

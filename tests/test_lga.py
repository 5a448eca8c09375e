"""LightGray-box level: entry points in the text-encoder box, and LGA entry tokens."""

import json

import pytest
import torch
from torch import nn

from exotune.boxes import BoxLimits, BoxSpec, TextEncoderBox, load_box
from exotune.boxes.entry_points import entry_point_options
from exotune.cli import main
from exotune.errors import AccessError, BoxLimitError, ConfigError, SpecMismatchError
from exotune.graybox import DGAConfig, EntryTokensConfig, GrayBoxModel
from exotune.tasks.artifacts import saved_box_options
from exotune.tasks.classification import ClassificationConfig, TextClassifier
from exotune.train import TrainConfig, Trainer

from .conftest import backbone_module, colour_data

TEXTS = ["the red car", "a sky is very blue today"]


def light_box(folder, **kwargs):
    return load_box(str(folder), pooling="mean", normalize=False, **{"entry_points": "all", **kwargs})


def double_box(folder, **kwargs):
    """The tiny encoder in float64, for finite differences."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(folder)).double()
    return TextEncoderBox(model, AutoTokenizer.from_pretrained(str(folder)), **kwargs)


def lga(tokens=2, points="all", init_std=0.02, variant="both"):
    return DGAConfig.variant(variant, entry_tokens=EntryTokensConfig(points=points, tokens=tokens, init_std=init_std))


@pytest.fixture
def box(tiny_backbone):
    return light_box(tiny_backbone, entry_tokens_max=4)


# -- the box --------------------------------------------------------------------------------


def test_spec_lists_entry_points_and_fingerprint_changes(tiny_backbone, tiny_box, box):
    spec = box.spec
    assert spec.access == "light-gray"
    assert [(e.name, e.max_tokens) for e in spec.entry_points] == [("layer.0", 4), ("layer.1", 4)]
    assert BoxSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    one = light_box(tiny_backbone, entry_points=[1])
    assert [e.name for e in one.spec.entry_points] == ["layer.1"]
    wider = light_box(tiny_backbone, entry_tokens_max=8)
    prints = {s.fingerprint() for s in (tiny_box.spec, spec, one.spec, wider.spec)}
    assert len(prints) == 4
    assert "entry_points" in tiny_box.spec.differences(spec)
    assert entry_point_options(spec.entry_points) == {"entry_points": [0, 1], "entry_tokens_max": 4}
    assert entry_point_options(()) == {}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"entry_points": [2]}, "entry_points"),
        ({"entry_points": [0, 0]}, "twice"),
        ({"entry_points": []}, "entry_points"),
        ({"entry_points": "some"}, "entry_points"),
        ({"entry_points": [True]}, "entry_points"),
        ({"entry_tokens_max": 0}, "entry_tokens_max"),
        ({"access": "dark-gray"}, "access"),
    ],
)
def test_box_entry_point_options_validate(tiny_backbone, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        light_box(tiny_backbone, **kwargs)


def test_backbone_without_layer_list_is_refused(tiny_backbone):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(tiny_backbone))
    model.encoder = nn.Identity()  # no recognisable list of transformer layers
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_backbone))
    with pytest.raises(ConfigError, match="transformer layers"):
        TextEncoderBox(model, tokenizer, entry_points="all")


def test_no_tokens_is_the_plain_forward(tiny_box, box):
    batch = box.embed(TEXTS)
    torch.testing.assert_close(box.forward(batch.embeds, batch.mask), tiny_box.forward(batch.embeds, batch.mask))
    torch.testing.assert_close(box.forward(batch.embeds, batch.mask, {}), tiny_box.encode(TEXTS))


def test_tokens_change_outputs_and_hooks_are_removed(box):
    batch = box.embed(TEXTS)
    layers = backbone_module(box).encoder.layer
    a = box.forward(batch.embeds, batch.mask, {"layer.1": torch.randn(2, 16)})
    b = box.forward(batch.embeds, batch.mask, {"layer.1": torch.randn(2, 16)})
    assert a.shape == (2, 16) and not torch.allclose(a, b)
    assert all(not layer._forward_pre_hooks for layer in layers)
    with pytest.raises(BoxLimitError):
        box.forward(batch.embeds, batch.mask, {"layer.0": torch.randn(2, 16), "layer.1": torch.randn(3, 16)})
    assert all(not layer._forward_pre_hooks for layer in layers)


def _tokens(**shapes):
    return {f"layer.{k[-1]}": torch.randn(*v) for k, v in shapes.items()}


@pytest.mark.parametrize(
    "tokens, error, match",
    [
        ({"layer.7": torch.randn(2, 16)}, ConfigError, "unknown entry point 'layer.7'"),
        (_tokens(l0=(5, 16)), BoxLimitError, "at most 4"),
        (_tokens(l0=(2, 16), l1=(3, 16)), BoxLimitError, "same number"),
        (_tokens(l0=(2, 15)), BoxLimitError, r"entry_tokens\['layer.0'\] must have shape \(n, 16\)"),
        (_tokens(l0=(16,)), BoxLimitError, "shape"),
        (_tokens(l0=(0, 16)), BoxLimitError, "n >= 1"),
        ({"layer.0": [[0.0] * 16]}, BoxLimitError, "list"),
        ([("layer.0", torch.randn(2, 16))], ConfigError, "map entry point names"),
    ],
)
def test_entry_token_errors(box, tokens, error, match):
    batch = box.embed(TEXTS)
    with pytest.raises(error, match=match):
        box.forward(batch.embeds, batch.mask, tokens)


def test_entry_tokens_count_against_max_length(tiny_backbone):
    box = light_box(tiny_backbone, limits=BoxLimits(max_length=8))
    batch = box.embed(["the red car"])  # [CLS] + 3 + [SEP] = 5
    box.forward(batch.embeds, batch.mask, _tokens(l0=(3, 16)))
    with pytest.raises(BoxLimitError, match="max_length 8"):
        box.forward(batch.embeds, batch.mask, _tokens(l0=(4, 16)))


def test_dark_gray_box_refuses_entry_tokens(tiny_box):
    batch = tiny_box.embed(TEXTS)
    with pytest.raises(AccessError):
        tiny_box.forward(batch.embeds, batch.mask, _tokens(l0=(1, 16)))


@pytest.mark.parametrize("pooling, points", [("mean", ("layer.0", "layer.1")), ("cls", ("layer.1",))])
def test_gradients_match_finite_differences(tiny_backbone, pooling, points):
    box = double_box(tiny_backbone, pooling=pooling, entry_points="all", entry_tokens_max=2)
    batch = box.embed(TEXTS)  # padded: the shorter text has pads after the reserved positions
    assert batch.embeds.dtype == torch.float64 and batch.mask[0].sum() < batch.mask[1].sum()
    embeds = batch.embeds[:, :6].clone().requires_grad_(True)  # keep the Jacobian small
    mask = batch.mask[:, :6]
    torch.manual_seed(0)
    tokens = [torch.randn(2, 16, dtype=torch.float64, requires_grad=True) for _ in points]

    def f(e, *toks):
        return box.forward(e, mask, dict(zip(points, toks, strict=True)))

    # fast mode: random directional derivatives, so the test stays cheap on a busy CPU
    assert torch.autograd.gradcheck(f, (embeds, *tokens), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)
    # and the full Jacobian of a few outputs w.r.t. the last point's tokens, element by element
    last = tokens[-1][:1].detach().requires_grad_(True)  # (1, 16)
    others = {p: t[:1].detach() for p, t in zip(points[:-1], tokens, strict=False)}

    def g(tok):
        return box.forward(embeds.detach(), mask, {**others, points[-1]: tok})[:, :4]  # (2, 4)

    assert torch.autograd.gradcheck(g, (last,), eps=1e-6, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in backbone_module(box).parameters())


# -- LGA configuration and model ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tokens": 0}, "tokens"),
        ({"tokens": 1.5}, "tokens"),
        ({"init_std": -1.0}, "init_std"),
        ({"points": []}, "points"),
        ({"points": "layer.0"}, "points"),
        ({"points": ["layer.0", "layer.0"]}, "twice"),
        ({"points": [0]}, "points"),
    ],
)
def test_entry_tokens_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EntryTokensConfig(**kwargs)


def test_lga_config_round_trip_and_reporting():
    cfg = lga(tokens=3, points=("layer.1",))
    again = DGAConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.entry_tokens.points == ["layer.1"]
    assert (cfg.method, cfg.access, cfg.variant_name) == ("lga", "light-gray", "both")
    assert cfg.description == "LGA (both, tokens=3)"
    dga = DGAConfig()
    assert (dga.method, dga.access, dga.description) == ("dga", "dark-gray", "DGA (both)")
    old = {k: v for k, v in dga.to_dict().items() if k != "entry_tokens"}  # saved before LGA
    assert DGAConfig.from_dict(old) == dga
    with pytest.warns(UserWarning, match="bogus"):
        assert DGAConfig(entry_tokens={"tokens": 1, "bogus": 0}).entry_tokens.tokens == 1
    with pytest.raises(ConfigError, match="entry_tokens"):
        DGAConfig(entry_tokens=3)


def test_lga_on_a_dark_gray_box_is_refused(tiny_box):
    with pytest.raises(AccessError, match="dark-gray and exposes no entry points"):
        GrayBoxModel(tiny_box, lga())


@pytest.mark.parametrize(
    "config, match",
    [(lga(points=["layer.9"]), "unknown entry points"), (lga(tokens=5), "tokens=5")],
)
def test_lga_config_must_fit_the_box(box, config, match):
    with pytest.raises(ConfigError, match=match):
        GrayBoxModel(box, config)


def test_lga_model_holds_independent_tokens_and_no_cache(box):
    model = GrayBoxModel(box, lga(tokens=3, variant="output-only"))
    assert model._cache is None  # the box's outputs now depend on trained tokens
    assert sorted(model.state_dict()) == [
        "entry_tokens.tokens.0",
        "entry_tokens.tokens.1",
        "output_adapter.proj.bias",
        "output_adapter.proj.weight",
    ]
    a, b = model.entry_tokens.tokens
    assert a.shape == (3, 16) and a.data_ptr() != b.data_ptr()
    assert model.added_tokens == 3
    backbone_ids = {id(p) for p in backbone_module(box).parameters()}
    assert not backbone_ids & {id(p) for p in model.parameters()}


def test_zero_init_tokens_run_and_get_gradients(box):
    model = GrayBoxModel(box, lga(init_std=0.0, points=["layer.1"]))
    assert all(t.abs().sum() == 0 for t in model.entry_tokens.tokens)
    z = model(TEXTS)
    (z * torch.randn_like(z)).sum().backward()
    assert model.entry_tokens.tokens[0].grad.abs().sum() > 0
    assert model.input_adapter.shift.grad is not None


def test_room_is_left_for_entry_and_extra_tokens(tiny_backbone):
    box = light_box(tiny_backbone, limits=BoxLimits(max_length=8))
    model = GrayBoxModel(box, lga(tokens=2))  # 1 extra token + 2 entry tokens: texts keep 5
    assert model.embed(["the red car is very fast and big"]).embeds.shape[1] == 5
    assert model(["the red car is very fast and big"]).shape == (1, 16)


def test_lga_training_leaves_the_backbone_bit_identical(box):
    train, val = colour_data(64, seed=0), colour_data(30, seed=1)
    before = {k: v.clone() for k, v in backbone_module(box).state_dict().items()}
    model = TextClassifier(box, train.label_names, lga(variant="none"), ClassificationConfig(head="linear"))
    tokens_before = [t.detach().clone() for t in model.encoder.entry_tokens.tokens]
    cfg = TrainConfig(epochs=2, batch_size=16, lr=2e-2, patience=None)
    Trainer(cfg, progress=False).fit(model, train, val)
    after = backbone_module(box).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in backbone_module(box).parameters())
    assert all(not torch.equal(a, b) for a, b in zip(tokens_before, model.encoder.entry_tokens.tokens, strict=True))


def test_lga_classifier_save_load_round_trip(box, tiny_box, tiny_backbone, tmp_path):
    data = colour_data(20)
    model = TextClassifier(box, data.label_names, lga(tokens=2, points=["layer.1"]))
    with torch.no_grad():
        for p in model.encoder.entry_tokens.parameters():
            p.normal_()
    model.save_pretrained(tmp_path / "lga")
    cfg = json.loads((tmp_path / "lga" / "adapter_config.json").read_text())
    assert cfg["access"] == "light-gray"
    assert cfg["dga"]["entry_tokens"] == {"points": ["layer.1"], "tokens": 2, "init_std": 0.02}
    options = saved_box_options(tmp_path / "lga")
    assert options == {"entry_points": [0, 1], "entry_tokens_max": 4}
    fresh = load_box(str(tiny_backbone), pooling="mean", normalize=False, **options)
    reloaded = TextClassifier.from_pretrained(tmp_path / "lga", fresh)
    assert torch.equal(reloaded.predict_proba(data.texts), model.predict_proba(data.texts))
    with pytest.raises(SpecMismatchError, match="entry_points"):
        TextClassifier.from_pretrained(tmp_path / "lga", tiny_box)
    # DGA adapters keep reporting dark-gray and need no entry points
    TextClassifier(tiny_box, data.label_names, DGAConfig()).save_pretrained(tmp_path / "dga")
    assert json.loads((tmp_path / "dga" / "adapter_config.json").read_text())["access"] == "dark-gray"
    assert saved_box_options(tmp_path / "dga") == {}


# -- command line ---------------------------------------------------------------------------------


def test_cli_train_eval_predict_lga(tiny_backbone, tmp_path, capsys):
    data = colour_data(60)
    csv = tmp_path / "colours.csv"
    csv.write_text(
        "text,label\n" + "".join(f"{t},{data.label_names[y]}\n" for t, y in zip(data.texts, data.labels, strict=True))
    )
    run = tmp_path / "run"
    common = ["--file", str(csv), "--backbone", str(tiny_backbone)]
    assert (
        main(
            [
                "train",
                *common,
                "--entry-points",
                "1",
                "--entry-tokens",
                "3",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--output-dir",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    assert "training LGA (both, tokens=3)" in capsys.readouterr().err
    cfg = json.loads((run / "best" / "adapter_config.json").read_text())
    assert cfg["access"] == "light-gray"
    assert cfg["box_spec"]["entry_points"] == [{"name": "layer.1", "max_tokens": 8}]
    assert main(["eval", *common, "--adapter", str(run / "best"), "--json"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1.0
    assert (
        main(
            [
                "predict",
                "--backbone",
                str(tiny_backbone),
                "--adapter",
                str(run / "best"),
                "--text",
                "the red car",
                "--top-k",
                "2",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.count("\t") == 1


@pytest.mark.parametrize("argv", [["--entry-points", "one"], ["--entry-points", "-1"], ["--entry-tokens", "0"]])
def test_cli_bad_entry_arguments_exit_2(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(["train", "--file", "x.csv", "--output-dir", str(tmp_path), *argv])
    assert info.value.code == 2
    assert "entry-" in capsys.readouterr().err


def test_cli_entry_points_beyond_the_backbone_return_2(tiny_backbone, tmp_path, capsys):
    csv = tmp_path / "c.csv"
    csv.write_text("text,label\n" + "".join(f"t {i},{'ab'[i % 2]}\n" for i in range(20)))
    argv = [
        "train",
        "--file",
        str(csv),
        "--backbone",
        str(tiny_backbone),
        "--entry-points",
        "0,5",
        "--output-dir",
        str(tmp_path / "run"),
        "--quiet",
    ]
    assert main(argv) == 2
    assert "entry_points" in capsys.readouterr().err


# -- entry mode "add": tokens added to what their positions hold --------------------------------


def test_entry_mode_is_in_the_spec_and_its_fingerprint(tiny_backbone, box):
    added = light_box(tiny_backbone, entry_tokens_max=4, entry_mode="add")
    assert added.spec.entry_mode == "add" and box.spec.entry_mode == "replace"
    assert "entry_mode" not in box.spec.to_dict()  # the default: saved specs stay as they were
    assert BoxSpec.from_dict(json.loads(json.dumps(added.spec.to_dict()))) == added.spec
    assert added.spec.fingerprint() != box.spec.fingerprint()
    assert box.spec.differences(added.spec) == ["entry_mode"]
    assert entry_point_options(added.spec.entry_points, added.spec.entry_mode) == {
        "entry_points": [0, 1],
        "entry_tokens_max": 4,
        "entry_mode": "add",
    }


def test_entry_mode_validates(tiny_backbone, box):
    with pytest.raises(ConfigError, match="entry_mode must be one of"):
        light_box(tiny_backbone, entry_mode="prepend")
    with pytest.raises(ConfigError, match="needs entry_points"):
        load_box(str(tiny_backbone), entry_mode="add")
    with pytest.raises(ConfigError, match="needs entry points"):
        BoxSpec.from_dict({**box.spec.to_dict(), "entry_points": [], "entry_mode": "add"})
    with pytest.raises(ConfigError, match="entry_mode must be one of"):
        BoxSpec.from_dict({**box.spec.to_dict(), "entry_mode": "sum"})


@pytest.mark.parametrize("mode", ["replace", "add", "shift", "affine"])
def test_entry_mode_sets_what_each_layer_sees(tiny_backbone, mode):
    box = light_box(tiny_backbone, entry_tokens_max=4, entry_mode=mode)
    layers = backbone_module(box).encoder.layer
    seen = {}

    def out0(module, args, out):
        seen["out0"] = (out[0] if isinstance(out, tuple) else out).detach()

    def in1(module, args, kwargs, out):  # a forward hook sees the inputs the pre-hooks made
        seen["in1"] = (args[0] if args else kwargs["hidden_states"]).detach()

    hooks = [layers[0].register_forward_hook(out0), layers[1].register_forward_hook(in1, with_kwargs=True)]
    batch = box.embed(TEXTS)
    tokens = {"layer.0": torch.randn(2, 16), "layer.1": torch.randn(2, 16)}
    try:
        box.forward(batch.embeds, batch.mask, tokens)
    finally:
        for h in hooks:
            h.remove()
    before, after = seen["out0"], seen["in1"]  # (B, 1 + 2 + T, H): [CLS], the 2 slots, the text
    if mode in ("shift", "affine"):  # nothing reserved: every position moves
        assert after.shape == before.shape == (2, batch.embeds.shape[1], 16)
        scale, shift = (
            (1 + tokens["layer.1"][0], tokens["layer.1"][1]) if mode == "affine" else (1, tokens["layer.1"].sum(0))
        )
        torch.testing.assert_close(after, before * scale + shift)
        return
    expected = tokens["layer.1"] + (before[:, 1:3] if mode == "add" else 0)
    torch.testing.assert_close(after[:, 1:3], expected.expand_as(after[:, 1:3]))
    torch.testing.assert_close(after[:, 3:], before[:, 3:])  # the text's positions untouched
    torch.testing.assert_close(after[:, :1], before[:, :1])


def test_entry_mode_add_adapter_saves_and_rebuilds_its_box(tiny_backbone, box, tmp_path):
    added = light_box(tiny_backbone, entry_tokens_max=4, entry_mode="add")
    data = colour_data(20)
    model = TextClassifier(added, data.label_names, lga(tokens=2))
    with torch.no_grad():
        for p in model.encoder.entry_tokens.parameters():
            p.normal_()
    model.save_pretrained(tmp_path / "lga")
    options = saved_box_options(tmp_path / "lga")
    assert options == {"entry_points": [0, 1], "entry_tokens_max": 4, "entry_mode": "add"}
    fresh = load_box(str(tiny_backbone), pooling="mean", normalize=False, **options)
    reloaded = TextClassifier.from_pretrained(tmp_path / "lga", fresh)
    assert torch.equal(reloaded.predict_proba(data.texts), model.predict_proba(data.texts))
    with pytest.raises(SpecMismatchError, match="entry_mode"):
        TextClassifier.from_pretrained(tmp_path / "lga", box)  # the same entry points, replacing


def test_cli_entry_mode(tiny_backbone, tmp_path, capsys):
    csv = tmp_path / "c.csv"
    csv.write_text("text,label\n" + "".join(f"t {i},{'ab'[i % 2]}\n" for i in range(20)))
    common = ["train", "--file", str(csv), "--backbone", str(tiny_backbone), "--quiet", "--epochs", "1"]
    assert main([*common, "--entry-mode", "add", "--output-dir", str(tmp_path / "dga")]) == 2
    assert "--entry-mode sets how entry tokens are taken" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main([*common, "--entry-tokens", "2", "--entry-mode", "add", "--output-dir", str(run)]) == 0
    assert json.loads((run / "best" / "adapter_config.json").read_text())["box_spec"]["entry_mode"] == "add"
    capsys.readouterr()
    argv = ["predict", "--backbone", str(tiny_backbone), "--adapter", str(run / "best"), "--text", "t 3"]
    assert main(argv) == 0 and capsys.readouterr().out.count("\t") == 1
    remote = ["train", "--file", str(csv), "--remote", "http://127.0.0.1:9", "--entry-mode", "add"]
    assert main([*remote, "--output-dir", str(tmp_path / "r"), "--quiet"]) == 2
    assert "--entry-mode shapes the entry points of a local box" in capsys.readouterr().err
    assert main(["serve", "--no-auth", "--entry-mode", "add"]) == 2
    assert "give --entry-points" in capsys.readouterr().err


# -- the model's own dropout on training calls (the owner's training_dropout) -------------------


def test_training_dropout_acts_on_training_calls_only(tiny_backbone, tiny_box):
    box = light_box(tiny_backbone, entry_tokens_max=4, training_dropout=True)
    assert box.training_dropout and not tiny_box.training_dropout
    assert box.spec == light_box(tiny_backbone, entry_tokens_max=4).spec  # adapters move between them
    dropouts = [m for m in backbone_module(box).modules() if isinstance(m, nn.Dropout) and m.p > 0]
    assert dropouts  # the tiny encoder has dropout layers to act on
    batch = box.embed(TEXTS)
    plain = tiny_box.forward(batch.embeds, batch.mask)
    with torch.no_grad():  # evaluation: exactly the plain box
        assert torch.equal(box.forward(batch.embeds, batch.mask), plain)
    assert torch.equal(box.forward(batch.embeds, batch.mask), plain)  # nothing asks for gradients
    torch.manual_seed(0)
    embeds = batch.embeds.clone().requires_grad_(True)
    a, b = box.forward(embeds, batch.mask), box.forward(embeds, batch.mask)
    assert not torch.allclose(a, plain) and not torch.allclose(a, b)  # a fresh mask per call
    a.pow(2).sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    tokens = {"layer.1": torch.randn(2, 16, requires_grad=True)}  # entry tokens alone ask for gradients
    with_tokens = box.forward(batch.embeds, batch.mask, tokens)
    with torch.no_grad():
        assert not torch.allclose(with_tokens, box.forward(batch.embeds, batch.mask, tokens))
    with_tokens.sum().backward()
    assert tokens["layer.1"].grad.abs().sum() > 0
    assert all(not m._forward_hooks for m in dropouts)  # the hooks leave with the call
    assert all(p.grad is None for p in backbone_module(box).parameters())
    with pytest.raises(ConfigError, match="training_dropout must be True or False"):
        light_box(tiny_backbone, training_dropout="yes")


def test_training_dropout_box_is_not_served(tiny_backbone):
    pytest.importorskip("fastapi")
    from exotune.serve import ServeConfig, create_app

    box = load_box(str(tiny_backbone), training_dropout=True)
    with pytest.raises(ConfigError, match="for local use"):
        create_app(box, ["t" * 32], ServeConfig())


def test_entry_mode_shift_reserves_nothing(tiny_backbone, tiny_box):
    box = light_box(tiny_backbone, entry_tokens_max=4, entry_mode="shift", limits=BoxLimits(max_length=12))
    batch = box.embed(["a b c d e f g h i j"])  # 12 tokens with [CLS] and [SEP]: the box's whole length
    zeros = {e.name: torch.zeros(3, 16) for e in box.spec.entry_points}
    torch.testing.assert_close(box.forward(batch.embeds, batch.mask, zeros), tiny_box.forward(batch.embeds, batch.mask))
    model = GrayBoxModel(box, lga(tokens=3))
    assert model.entry_tokens.added_tokens == 0 and model.added_tokens == 1  # the input adapter's extra token
    replacing = light_box(tiny_backbone, entry_tokens_max=4, limits=BoxLimits(max_length=12))
    with pytest.raises(BoxLimitError, match="entry tokens exceeds"):
        replacing.forward(batch.embeds, batch.mask, zeros)

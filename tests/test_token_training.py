"""Token training aids: re-parameterised tokens folded when saved, tokens started from words."""

import json

import pytest
import torch

from exotune.bench import classification, graymethods
from exotune.boxes import load_box
from exotune.cli import main
from exotune.errors import ConfigError
from exotune.graybox import (
    DGAConfig,
    EntryTokensConfig,
    GrayBoxModel,
    TextShiftConfig,
    TokenLowRankConfig,
)
from exotune.graybox.tokens import frequent_words, init_tokens, word_embeddings
from exotune.tasks.classification import TextClassifier
from exotune.tasks.retrieval import DualEncoder
from exotune.train import TrainConfig, Trainer, parameter_groups

from .conftest import colour_data

TEXTS = ["the red car is fast", "a blue sky", "green leaf"]
LABELS = ["red", "blue", "green"]


@pytest.fixture
def light_box(tiny_backbone):
    return load_box(str(tiny_backbone), entry_points="all", pooling="mean", normalize=False)


def _reparam_dga(input_cls=TextShiftConfig):
    return DGAConfig(input_adapter=input_cls(extra_tokens=2, reparam=8), entry_tokens=EntryTokensConfig(reparam=8))


def _labelled_csv(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"the {c} car {i},{c}\n" for i in range(10) for c in LABELS))
    return csv


def _train_a_little(model):
    cfg = TrainConfig(epochs=1, batch_size=16, lr=5e-2, patience=None)
    Trainer(cfg, progress=False).fit(model, colour_data(32, seed=0), colour_data(12, seed=1))


@pytest.mark.parametrize("input_cls", [TextShiftConfig, TokenLowRankConfig])
def test_reparameterised_tokens_start_as_plain_ones_and_fold_when_saved(input_cls, light_box, tmp_path):
    plain = TextClassifier(
        light_box, LABELS, DGAConfig(input_adapter=input_cls(extra_tokens=2), entry_tokens=EntryTokensConfig())
    )
    model = TextClassifier(light_box, LABELS, _reparam_dga(input_cls))
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)  # the same free tokens
    assert not unexpected and all("mlp" in k for k in missing)
    torch.testing.assert_close(model.predict_proba(TEXTS), plain.predict_proba(TEXTS))  # up starts at zero
    groups = parameter_groups(model)
    mlps = {
        id(p) for m in (model.encoder.input_adapter.extra_mlp, model.encoder.entry_tokens.mlps) for p in m.parameters()
    }
    assert mlps <= {id(p) for p in groups["tokens"]}
    _train_a_little(model)
    assert model.encoder.input_adapter.extra_mlp.up.weight.abs().sum() > 0  # the MLP trained
    model.save_pretrained(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())["dga"]
    assert "reparam" not in saved["input_adapter"] and "reparam" not in saved["entry_tokens"]  # plain tokens
    again = TextClassifier.from_pretrained(tmp_path / "a", light_box)
    assert again.encoder.input_adapter.extra_mlp is None and again.encoder.entry_tokens.mlps is None
    torch.testing.assert_close(again.predict_proba(TEXTS), model.predict_proba(TEXTS))  # same outputs
    assert model.encoder.input_adapter.extra_mlp is not None  # saving left the trained model as it was


def test_a_retriever_folds_its_tokens_too(tiny_box, tmp_path):
    model = DualEncoder(tiny_box, DGAConfig(input_adapter=TextShiftConfig(reparam=4)))
    with torch.no_grad():
        model.query_tower.input_adapter.extra_mlp.up.bias.fill_(0.5)
    model.save_pretrained(tmp_path / "r")
    again = DualEncoder.from_pretrained(tmp_path / "r", tiny_box)
    torch.testing.assert_close(again.encode_queries(TEXTS), model.encode_queries(TEXTS))


@pytest.mark.parametrize("kwargs", [{"reparam": -1}, {"reparam": True}])
def test_reparam_is_validated(kwargs):
    for cls in (TextShiftConfig, TokenLowRankConfig, EntryTokensConfig):
        with pytest.raises(ConfigError, match="reparam"):
            cls(**kwargs)


def test_tokens_start_from_the_boxs_embeddings_of_words(light_box):
    model = GrayBoxModel(
        light_box, DGAConfig(input_adapter=TextShiftConfig(extra_tokens=2), entry_tokens=EntryTokensConfig(tokens=2))
    )
    vectors = word_embeddings(light_box, LABELS)
    batch = light_box.embed(["red"])
    torch.testing.assert_close(vectors[0], batch.embeds[0, 1])  # [CLS] red [SEP]: the word's own piece
    assert model.init_tokens_from_words(LABELS) == 2 + 2 * len(light_box.spec.entry_points)
    torch.testing.assert_close(model.input_adapter.extra, vectors[[0, 1]])
    torch.testing.assert_close(model.entry_tokens.tokens[0], vectors[[2, 0]])  # cycling through the words


def test_init_choices(tiny_box):
    model = GrayBoxModel(tiny_box, DGAConfig())
    before = model.input_adapter.extra.clone()
    init_tokens(model, "random", LABELS, TEXTS)
    assert torch.equal(model.input_adapter.extra, before)
    init_tokens(model, "frequent", None, ["leaf leaf sky", "the leaf"])
    torch.testing.assert_close(model.input_adapter.extra[0], word_embeddings(tiny_box, ["leaf"])[0])
    with pytest.raises(ConfigError, match="classes"):
        init_tokens(model, "labels", None, TEXTS)
    with pytest.raises(ConfigError, match="one of"):
        init_tokens(model, "vocab", LABELS, TEXTS)
    assert frequent_words(["The car, the CAR and a sky"], 5) == ["car", "sky"]
    with pytest.raises(ConfigError, match="no words"):
        frequent_words(["a b", "!!"], 5)


def test_bench_names_for_token_training():
    gray = graymethods.parse("lga-8-upper-rpt64-init-frequent")
    assert (gray.tokens, gray.upper, gray.reparam, gray.init) == (8, True, 64, "frequent")
    assert gray.variant == "tokens=8, upper half+rpt(h=64)+init=frequent"
    assert graymethods.describe("dga-lowrank16-rpt32-init-labels", classification.METHODS)[1] == (
        "both+lowrank(r=16)+rpt(h=32)+init=labels"
    )
    assert gray.input_config() == TextShiftConfig(reparam=64)
    with pytest.raises(ConfigError, match="output-only"):
        graymethods.parse("dga-output-only-rpt8")


def test_bench_names_set_the_extra_tokens(light_box):
    shift_only = graymethods.parse("lga-8-x0")
    assert shift_only.variant == "tokens=8+extra=0"
    model = GrayBoxModel(light_box, shift_only.dga_config(light_box))
    assert model.input_adapter.config == TextShiftConfig(extra_tokens=0)
    assert model.added_tokens == 8  # the entry tokens' positions only
    two = graymethods.parse("dga-x2-lowrank4").input_config()
    assert (two.extra_tokens, two.rank) == (2, 4)
    assert graymethods.parse("dga-both").input_config() is None  # the default adapter
    copies = graymethods.parse("lga-8-c4")
    assert (copies.variant, copies.input_config()) == ("tokens=8+copies/4", TextShiftConfig(copies_per=4))
    with pytest.raises(ConfigError, match="no input adapter"):
        graymethods.parse("dga-output-only-x0")


def test_cli_token_options(tiny_backbone, tmp_path):
    csv = _labelled_csv(tmp_path)
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
        "--token-reparam",
        "8",
        "--token-init",
        "labels",
        "--entry-tokens",
        "2",
        "--output-dir",
        str(run),
    ]
    assert main(argv) == 0
    saved = json.loads((run / "best" / "adapter_config.json").read_text())["dga"]
    assert "reparam" not in saved["input_adapter"] and "reparam" not in saved["entry_tokens"]
    assert main(["eval", "--file", str(csv), "--backbone", str(tiny_backbone), "--adapter", str(run / "best")]) == 0


def test_cli_copies_and_moving_average(tiny_backbone, tmp_path, capsys):
    csv = _labelled_csv(tmp_path)
    run = tmp_path / "run"
    common = ["--file", str(csv), "--backbone", str(tiny_backbone)]
    argv = ["train", *common, "--epochs", "2", "--batch-size", "8", "--quiet", "--output-dir", str(run)]
    assert main([*argv, "--copies-per", "3", "--ema", "0.9", "--no-group-by-length"]) == 0
    saved = json.loads((run / "best" / "adapter_config.json").read_text())["dga"]
    assert saved["input_adapter"]["copies_per"] == 3
    state = json.loads((run / "last" / "trainer_state.json").read_text())["config"]
    assert (state["ema"], state["group_by_length"]) == (0.9, False)
    assert main(["eval", *common, "--adapter", str(run / "best")]) == 0
    with pytest.raises(SystemExit):
        main([*argv, "--overwrite", "--ema", "1.5"])
    assert "must be a number in (0, 1)" in capsys.readouterr().err


def test_input_dropout_acts_while_training_only(light_box):
    drop = TextClassifier(light_box, LABELS, DGAConfig(input_dropout=0.5, entry_tokens=EntryTokensConfig()))
    plain = TextClassifier(light_box, LABELS, DGAConfig(entry_tokens=EntryTokensConfig()))
    assert set(drop.state_dict()) == set(plain.state_dict())  # dropout adds nothing to the saved state
    plain.load_state_dict(drop.state_dict())
    torch.testing.assert_close(drop.predict_proba(TEXTS), plain.predict_proba(TEXTS))  # evaluation: none
    drop.train()
    torch.manual_seed(0)
    first = drop.encoder(TEXTS)
    second = drop.encoder(TEXTS)
    assert not torch.allclose(first, second)  # each training pass drops other entries
    (first.sum() + second.sum()).backward()
    assert drop.encoder.entry_tokens.tokens[0].grad is not None


def test_input_dropout_turns_the_box_output_cache_off(tiny_box):
    assert GrayBoxModel(tiny_box, DGAConfig.variant("output-only")).caches_box_outputs
    assert not GrayBoxModel(tiny_box, DGAConfig.variant("output-only", input_dropout=0.1)).caches_box_outputs


@pytest.mark.parametrize("value", [1.0, -0.1, "0.1", True, float("nan")])
def test_input_dropout_is_validated(value):
    with pytest.raises(ConfigError, match="input_dropout"):
        DGAConfig(input_dropout=value)


def test_input_dropout_is_saved_and_reloaded(light_box, tmp_path):
    cfg = DGAConfig(input_dropout=0.2)
    assert DGAConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert "input_dropout" not in DGAConfig().to_dict()  # off: saved as before the option existed
    assert "input dropout 0.2" in cfg.description
    model = TextClassifier(light_box, LABELS, cfg)
    model.save_pretrained(tmp_path / "a")
    back = TextClassifier.from_pretrained(tmp_path / "a", light_box)
    assert back.encoder.config.input_dropout == 0.2
    torch.testing.assert_close(back.predict_proba(TEXTS), model.predict_proba(TEXTS))


def test_bench_names_for_input_dropout(light_box):
    gray = graymethods.parse("lga-8-rpt16-drop10")
    assert (gray.tokens, gray.reparam, gray.dropout) == (8, 16, 0.1)
    assert gray.variant == "tokens=8+rpt(h=16)+dropout=0.1"
    assert gray.dga_config(light_box).input_dropout == 0.1
    assert graymethods.parse("dga-both").dropout == 0.0
    with pytest.raises(ConfigError, match="percent"):
        graymethods.parse("dga-both-drop100")


def test_cli_input_dropout(tiny_backbone, tmp_path, capsys):
    csv = _labelled_csv(tmp_path)
    run = tmp_path / "run"
    common = ["--file", str(csv), "--backbone", str(tiny_backbone)]
    argv = ["train", *common, "--epochs", "1", "--batch-size", "8", "--quiet", "--output-dir", str(run)]
    assert main([*argv, "--input-dropout", "0.1"]) == 0
    assert json.loads((run / "best" / "adapter_config.json").read_text())["dga"]["input_dropout"] == 0.1
    assert main(["eval", *common, "--adapter", str(run / "best")]) == 0
    assert main([*argv, "--overwrite", "--input-dropout", "1.5"]) != 0
    assert "input_dropout must be in [0, 1)" in capsys.readouterr().err


def test_input_dropout_is_for_text_boxes(tiny_image_box):
    with pytest.raises(ConfigError, match="image box takes pixels"):
        GrayBoxModel(tiny_image_box, DGAConfig.variant("both", modality="image", input_dropout=0.1))

"""The moving average of the trained tensors (``TrainConfig.ema``): its arithmetic, that it is
what the trainer evaluates, keeps and saves, and that a crash loses none of it."""

import pytest
import torch
from torch import nn

from exotune.averaging import ParameterAverage
from exotune.errors import ArtifactError, ConfigError
from exotune.graybox import DGAConfig
from exotune.tasks.classification import TextClassifier
from exotune.train import TrainConfig, Trainer

from .conftest import colour_data
from .test_train import FAST, _crashing


def test_the_average_follows_its_formula_and_swaps_back():
    model = nn.Linear(2, 1)
    model.bias.requires_grad_(False)  # only trainable tensors are averaged
    avg = ParameterAverage(model, decay=0.9)
    start = model.weight.detach().clone()
    expected = start.clone()
    for step in range(1, 6):
        with torch.no_grad():
            model.weight.add_(1.0)
        avg.update(model)
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * model.weight.detach()
    assert set(avg.shadow) == {"weight"}
    torch.testing.assert_close(avg.shadow["weight"], expected)
    live = model.weight.detach().clone()
    with avg.swapped(model):
        torch.testing.assert_close(model.weight.detach(), expected)
    assert torch.equal(model.weight.detach(), live)


def test_a_saved_average_that_does_not_fit_is_refused():
    model = nn.Linear(2, 1)
    avg = ParameterAverage(model, decay=0.9)
    state = avg.state_dict()
    with pytest.raises(ArtifactError, match="average"):
        avg.load_state_dict({**state, "shadow": {"weight": torch.zeros(3)}}, "ckpt")
    with pytest.raises(ArtifactError, match="does not match"):
        avg.load_state_dict({"shadow": {}}, "ckpt")


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1, True])
def test_ema_must_be_a_decay(bad):
    with pytest.raises(ConfigError, match="ema"):
        TrainConfig(ema=bad)


def test_the_trainer_evaluates_keeps_and_saves_the_average(tiny_box, tmp_path):
    train, val = colour_data(80, seed=0), colour_data(30, seed=1)
    torch.manual_seed(0)
    model = TextClassifier(tiny_box, train.label_names, DGAConfig())
    trainer = Trainer(TrainConfig(epochs=1, ema=0.9, **FAST), tmp_path, progress=False)
    result = trainer.fit(model, train, val)
    shadow = trainer._average.shadow
    params = dict(model.named_parameters())
    for name, value in shadow.items():  # one epoch: the best (and only) state is the average
        torch.testing.assert_close(params[name].detach(), value)
    assert model.evaluate(val)["accuracy"] == result.best_metric
    reloaded = TextClassifier.from_pretrained(tmp_path / "best", tiny_box)
    assert reloaded.evaluate(val)["accuracy"] == result.best_metric
    torch.manual_seed(0)
    plain = TextClassifier(tiny_box, train.label_names, DGAConfig())
    Trainer(TrainConfig(epochs=1, **FAST), progress=False).fit(plain, train, val)
    assert any(not torch.equal(plain.state_dict()[k], v) for k, v in model.state_dict().items())


def test_resume_with_an_average_matches_an_uninterrupted_run(tiny_box, tmp_path):
    train, val = colour_data(80, seed=0), colour_data(30, seed=1)
    cfg = TrainConfig(epochs=3, ema=0.8, **FAST)

    def fresh():
        torch.manual_seed(0)
        return TextClassifier(tiny_box, train.label_names, DGAConfig())

    reference = fresh()
    Trainer(cfg, tmp_path / "ref", progress=False).fit(reference, train, val)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "run", progress=False).fit(_crashing(fresh(), at_step=9), train, val)
    resumed = fresh()
    Trainer(cfg, tmp_path / "run", progress=False).fit(resumed, train, val, resume=True)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=1e-6, rtol=1e-5)

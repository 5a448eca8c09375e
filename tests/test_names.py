"""Names that say what they hold: the text box interface, the EA client modules, and one kind
of answer from ``predict`` across task models."""

from __future__ import annotations

import importlib

import pytest
import torch

import exotune
from exotune.boxes import Box, BoxBase, TextBox, TextEncoderBox
from exotune.ea import BlackBoxClient, CallableClient, EasyAdapter
from exotune.tasks.classification import TextClassifier

from .conftest import colour_data


def test_text_box_is_the_interface_and_box_its_former_name():
    assert Box is TextBox and exotune.TextBox is TextBox and exotune.Box is TextBox
    assert issubclass(TextEncoderBox, TextBox) and issubclass(TextBox, BoxBase)


def test_the_ea_client_modules_are_the_interface_and_the_clients():
    interface, clients = importlib.import_module("exotune.ea.blackbox"), importlib.import_module("exotune.ea.clients")
    assert interface.BlackBoxClient is BlackBoxClient and issubclass(clients.CallableClient, BlackBoxClient)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("exotune.ea.client")


def test_predict_gives_label_names_for_every_classifier(tiny_box):
    data = colour_data(60)
    torch.manual_seed(0)
    gray = TextClassifier(tiny_box, data.label_names)
    black = EasyAdapter(CallableClient(lambda text, labels: text.split()[-1]), n_clusters=2, cv_folds=2)
    black.fit(data, colour_data(30, seed=1))
    texts = data.texts[:5]
    for model in (gray, black):
        answers = model.predict(texts)
        assert isinstance(answers, list) and len(answers) == 5 and set(answers) <= set(data.label_names)

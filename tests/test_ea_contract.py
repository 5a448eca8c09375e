"""EasyAdapter on scikit-learn's contract: clone shares the clients and copies the rest; what is
saved and what is trusted on load follow the constructor and the SSM registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.naive_bayes import MultinomialNB

from exotune.ea import SSMS, CallableClient, EasyAdapter, Router, register_ssm
from exotune.ea.io import trusted_types
from exotune.ea.ssm import SSM_PARAMS, SSMBase, TfidfLogRegSSM
from exotune.errors import ConfigError

from .ea_fakes import colour_of, colour_task, one_blas_thread  # noqa: F401


class NaiveBayesSSM(SSMBase):
    """A text SSM defined outside exotune, registered by name."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def encoder(self):
        return TfidfLogRegSSM().encoder()

    def head(self):
        return MultinomialNB(alpha=self.alpha)


@pytest.fixture
def registered():
    register_ssm("test-naive-bayes", NaiveBayesSSM, alpha=0.5)
    yield "test-naive-bayes"
    SSMS.pop("test-naive-bayes")
    SSM_PARAMS.pop("test-naive-bayes")


def lm(text, labels):
    return colour_of(text)


def test_clone_shares_the_clients_and_copies_the_hyperparameters():
    client, embedder = CallableClient(lm), CallableClient(lm, returns="embeddings")
    model = EasyAdapter(client, embedder, ssms=["tfidf-lr"], budget=0.5, n_clusters=2)
    copy = clone(model)  # a client holds a lock and a running ledger: never deep-copied
    assert copy.lm is client and copy.embedder is embedder
    assert copy.ssms == ["tfidf-lr"] and copy.ssms is not model.ssms
    assert {k: v for k, v in copy.get_params().items() if k not in EasyAdapter.RUNTIME} == {
        k: v for k, v in model.get_params().items() if k not in EasyAdapter.RUNTIME
    }


def test_a_clone_of_a_fitted_adapter_is_unfitted_and_fits():
    train, val = colour_task(60, seed=1), colour_task(30, seed=2)
    model = EasyAdapter(CallableClient(lm), n_clusters=2, cv_folds=2).fit(train, val)
    copy = clone(model).set_params(budget=0.0)
    assert not hasattr(copy, "router_") and model.budget == 0.3
    assert copy.fit(train, val).route(val.texts).asked_lm.sum() == 0


def test_saved_params_are_the_constructor_less_the_clients(tmp_path):
    assert set(EasyAdapter.saved_params()) == set(EasyAdapter().get_params()) - {"lm", "embedder"}
    train, val = colour_task(60, seed=1), colour_task(30, seed=2)
    model = EasyAdapter(CallableClient(lm), n_clusters=2, cv_folds=2, min_region_size=7).fit(train, val)
    path = model.save_pretrained(tmp_path / "ea")
    saved = json.loads((path / "ea_config.json").read_text())["params"]
    assert set(saved) == set(EasyAdapter.saved_params()) and saved["min_region_size"] == 7
    assert EasyAdapter.from_pretrained(path).min_region_size == 7


def test_a_registered_ssm_is_trusted_on_load(registered, tmp_path):
    name = f"{NaiveBayesSSM.__module__}.NaiveBayesSSM"
    assert name in trusted_types()
    train, val = colour_task(60, seed=1), colour_task(30, seed=2)
    model = EasyAdapter(CallableClient(lm), ssms=(registered,), n_clusters=2, cv_folds=2).fit(train, val)
    assert model.ssms_[0].alpha == 0.5
    loaded = EasyAdapter.from_pretrained(model.save_pretrained(tmp_path / "ea"), lm=CallableClient(lm))
    np.testing.assert_array_equal(loaded.predict(val.texts), model.predict(val.texts))


def test_trusted_types_follow_the_registry():
    assert {f"exotune.ea.ssm.{cls.__name__}" for cls in SSMS.values()} <= trusted_types()
    assert {"exotune.ea.router.Router", "exotune.ea.regions.Regions", "exotune.ea.ssm.SklearnSSM"} <= trusted_types()
    assert f"{NaiveBayesSSM.__module__}.NaiveBayesSSM" not in trusted_types()  # until registered


def test_register_ssm_checks_the_arguments_the_class_takes():
    with pytest.raises(ConfigError, match="does not take"):
        register_ssm("test-bad-params", NaiveBayesSSM, width=3)
    assert "test-bad-params" not in SSMS


def test_router_validate_is_public_and_names_the_bad_value():
    assert Router("lm-first", 1.0).validate().policy == "lm-first"
    with pytest.raises(ConfigError, match="policy"):
        Router("maybe").validate()
    with pytest.raises(ConfigError, match="budget"):
        Router(budget=1.5).validate()

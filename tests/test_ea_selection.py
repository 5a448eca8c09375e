"""EA's SSMs chosen out of fold and checked on validation: never below the best single SSM."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

import exotune.ea.model
from exotune.ea import CallableClient, EasyAdapter, SklearnSSM
from exotune.ea.report import markdown
from exotune.ea.selection import choose_ssms

from .ea_fakes import colour_of, colour_task, one_blas_thread  # noqa: F401


class Confident(ClassifierMixin, BaseEstimator):
    """Sure of itself and wrong two times in three: a label from each text's hash."""

    def fit(self, X, y, sample_weight=None):
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):
        out = np.zeros((len(X), len(self.classes_)))
        for r, t in enumerate(X):
            out[r, int(hashlib.sha256(t.encode()).hexdigest()[:6], 16) % len(self.classes_)] = 1.0
        return out


def weak_lm(text, labels):
    c = colour_of(text)
    return "blue" if c == "green" else c


@pytest.fixture(scope="module")
def split():
    return colour_task(120, seed=1), colour_task(60, seed=2), colour_task(60, seed=3)


def _fit(split, **kw):
    train, val, _ = split
    return EasyAdapter(
        CallableClient(weak_lm), ssms=("tfidf-lr", SklearnSSM(Confident())), n_clusters=3, cv_folds=3, budget=0.3, **kw
    ).fit(train, val)


def test_selection_keeps_what_helps_out_of_fold_and_says_why(split):
    model = _fit(split)
    table = model.ssm_selection_
    assert [r["kept"] for r in table] == [True, False] and len(model.ssms_) == 1
    assert table[0]["why"] == "best out-of-fold accuracy alone" and table[1]["why"].startswith("not kept")
    assert table[0]["oof_accuracy"] > table[1]["oof_accuracy"]
    best_single = max(r["val_accuracy"] for r in table)
    assert model.val_accuracy_["ssm"] >= best_single and model.val_accuracy_["ea"] >= best_single
    # without the selection, the confident guesser drags the average down on validation
    assert _fit(split, select_ssms=False).val_accuracy_["ssm"] < best_single


@pytest.mark.parametrize("policy", ["ssm-first", "lm-first"])
def test_a_single_ssm_that_beats_the_chosen_ensemble_on_validation_is_the_fallback(split, monkeypatch, policy):
    """Force the out-of-fold choice onto the guesser: validation must bring back the best single SSM."""

    def wrong_choice(names, oofs, y):
        kept, table = choose_ssms(names, oofs, y)
        for r in table:
            r["kept"] = r["name"] != "tfidf-lr"
        return [1], table

    monkeypatch.setattr(exotune.ea.model, "choose_ssms", wrong_choice)
    model = _fit(split, policy=policy)
    table = model.ssm_selection_
    assert model.kept_ == [0] and [r["kept"] for r in table] == [True, False]
    assert table[0]["why"].startswith("fallback") and table[1]["why"].startswith("dropped on validation")
    best_single = max(r["val_accuracy"] for r in table)
    assert model.val_accuracy_["ssm"] == best_single and model.val_accuracy_["ea"] >= best_single
    assert model.ssms_[0].predict(split[2].texts).shape == (60,)


def test_forward_selection_adds_a_candidate_only_when_it_helps():
    y = np.array([0, 1, 0, 1])
    a = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.1, 0.9]])  # 3/4: row 1 wrong, unsure
    b = np.array([[0.6, 0.4], [0.1, 0.9], [0.4, 0.6], [0.4, 0.6]])  # 3/4: row 2 wrong, unsure
    kept, table = choose_ssms(["a", "b"], [a, b], y)
    assert kept == [0, 1] and "0.7500 -> 1.0000" in table[1]["why"]
    kept, table = choose_ssms(["a", "b", "a again"], [a, b, a], y)
    assert kept == [0, 1] and not table[2]["kept"]


def test_saved_config_says_which_ssms_were_kept(split, tmp_path):
    train, val, test = split
    model = EasyAdapter(CallableClient(weak_lm), ssms=("tfidf-lr", "tfidf-lr"), n_clusters=3, cv_folds=3)
    model.fit(train, val)
    path = model.save_pretrained(tmp_path / "ea")
    config = json.loads((path / "ea_config.json").read_text())
    assert [r["kept"] for r in config["ssm_selection"]] == [True, False]
    assert config["n_global_ssms"] == 1 and config["params"]["select_ssms"] is True
    loaded = EasyAdapter.from_pretrained(path, lm=CallableClient(weak_lm))
    np.testing.assert_array_equal(loaded.predict(test.texts), model.predict(test.texts))
    report = loaded.evaluate(test)
    assert report["ssm_selection"] == model.ssm_selection_
    assert "| tfidf-lr | " in markdown(report) and "| yes |" in markdown(report)


def test_a_malformed_saved_selection_is_a_clear_error(split, tmp_path):
    from exotune.ea.selection import check_selection
    from exotune.errors import ArtifactError

    assert check_selection(None, "f") is None
    for bad in ("x", [{"name": "a"}], [{"name": "a", "oof_accuracy": "high", "kept": True, "why": ""}]):
        with pytest.raises(ArtifactError, match="ssm_selection"):
            check_selection(bad, "f")

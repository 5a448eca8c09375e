"""EasyAdapter end to end on a synthetic task with a plain-callable LM."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import make_pipeline

from exotune.artifacts import write_checksums
from exotune.data import TextLabelData
from exotune.ea import CallableClient, EasyAdapter
from exotune.ea.ssm import SSMBase
from exotune.errors import ArtifactError, ConfigError, DataError, NotFittedError

from .ea_fakes import COLOURS, colour_of, colour_task, one_blas_thread  # noqa: F401

SPY_LOG: list[tuple] = []


class SpyClassifier(ClassifierMixin, BaseEstimator):
    """Records what it was fit on and what it was asked about."""

    def fit(self, X, y, sample_weight=None):
        self.model_ = make_pipeline(CountVectorizer(), MultinomialNB()).fit(list(X), y)
        self.classes_ = self.model_.classes_
        self.fit_texts_ = set(X)
        return self

    def predict_proba(self, X):
        SPY_LOG.append((self.fit_texts_, list(X)))
        return self.model_.predict_proba(list(X))


def weak_on_green(text, labels):
    """An LM that never gets green right (it says blue)."""
    c = colour_of(text)
    return "blue" if c == "green" else c


def embed_colour(text, labels):
    """A box that answers with embeddings: one-hot colour plus a little length."""
    v = np.zeros(len(COLOURS) + 1)
    v[COLOURS.index(colour_of(text)) if colour_of(text) in COLOURS else -1] = 1.0
    return v + 0.01 * len(text)


def counting(fn):
    def wrapped(text, labels):
        wrapped.calls += 1
        return fn(text, labels)

    wrapped.calls = 0
    return wrapped


@pytest.fixture(scope="module")
def split():
    return colour_task(120, seed=1), colour_task(45, seed=2), colour_task(60, seed=3)


@pytest.fixture(scope="module")
def fitted(split):
    train, val, _ = split
    model = EasyAdapter(CallableClient(weak_on_green), n_clusters=3, cv_folds=3, budget=1.0)
    return model.fit(train, val)


def test_ea_beats_lm_and_matches_ssm(fitted, split):
    report = fitted.evaluate(split[2])
    assert report["lm"]["accuracy"] < 0.75
    assert report["ea"]["accuracy"] >= max(report["lm"]["accuracy"], report["ssm"]["accuracy"]) - 0.02
    flagged = {r["name"] for r in report["regions"] if r["kind"] == "class" and r["underfit"]}
    assert flagged == {"green"}
    assert len(report["curve"]) == 21 and report["curve"][0]["share"] == 0.0


def test_predict_proba_agrees_with_predict(fitted, split):
    r = fitted.route(split[2].texts)
    assert fitted.predict(split[2].texts) == [COLOURS[i] for i in r.labels]  # names, as every task model
    np.testing.assert_allclose(r.proba.sum(axis=1), 1.0, atol=1e-9)
    assert (r.proba.argmax(axis=1) == r.labels).all()
    assert not (r.used_lm & ~r.asked_lm).any()


def test_router_never_sees_in_fold_predictions(split):
    train, val, _ = split
    SPY_LOG.clear()
    model = EasyAdapter(CallableClient(weak_on_green), ssms=(SpyClassifier(),), n_clusters=3, cv_folds=3)
    model.fit(train, val)
    assert SPY_LOG, "the spy was never asked"
    for fit_texts, asked in SPY_LOG:
        assert not fit_texts & set(asked)  # every prediction during fit is out of fold
    rows = np.sort(model.router_rows_)
    np.testing.assert_array_equal(rows, np.arange(len(train)))
    for fit_idx, held_idx in model.oof_folds_:
        assert not set(fit_idx) & set(held_idx)


def test_save_load_round_trip(fitted, split, tmp_path):
    path = fitted.save_pretrained(tmp_path / "ea")
    names = {p.name for p in path.iterdir()}
    assert "ea_config.json" in names and not any(n.endswith((".pkl", ".pickle", ".pt")) for n in names)
    loaded = EasyAdapter.from_pretrained(path, lm=CallableClient(weak_on_green))
    texts = split[2].texts
    np.testing.assert_array_equal(loaded.predict(texts), fitted.predict(texts))
    np.testing.assert_allclose(loaded.predict_proba(texts), fitted.predict_proba(texts))


def test_untrusted_types_are_refused(split, tmp_path):
    train, val, _ = split
    model = EasyAdapter(CallableClient(weak_on_green), ssms=(SpyClassifier(),), n_clusters=2, cv_folds=2)
    path = model.fit(train, val).save_pretrained(tmp_path / "ea")
    with pytest.raises(ArtifactError, match="SpyClassifier"):
        EasyAdapter.from_pretrained(path)
    name = f"{SpyClassifier.__module__}.SpyClassifier"
    loaded = EasyAdapter.from_pretrained(path, lm=CallableClient(weak_on_green), trusted=[name])
    np.testing.assert_array_equal(loaded.predict(val.texts), model.predict(val.texts))


def test_load_errors(tmp_path):
    with pytest.raises(ArtifactError, match="missing"):
        EasyAdapter.from_pretrained(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ea_config.json").write_text('{"type": "dga"}')
    with pytest.raises(ArtifactError, match="has no checksums.sha256"):
        EasyAdapter.from_pretrained(tmp_path / "bad")  # hand-made: nothing to check it by, so not loaded
    write_checksums(tmp_path / "bad")
    with pytest.raises(ArtifactError, match="not 'easy-adaptation'"):
        EasyAdapter.from_pretrained(tmp_path / "bad")


def test_budget_zero_never_calls_the_lm(split):
    train, val, test = split
    lm = counting(weak_on_green)
    model = EasyAdapter(CallableClient(lm), n_clusters=2, cv_folds=2, budget=0.0).fit(train, val)
    before = lm.calls
    r = model.route(test.texts)
    assert lm.calls == before and not r.asked_lm.any()


def test_default_router_rows_come_from_three_folds_covering_train_once(split):
    train, val, _ = split
    model = EasyAdapter(CallableClient(weak_on_green), n_clusters=2).fit(train, val)
    assert len(model.oof_folds_) == 3  # 3 fits per pass: the fit's time, not its accuracy, drops
    assert sorted(model.router_rows_.tolist()) == list(range(len(train)))


def test_lm_first_asks_the_lm_about_everything(split):
    train, val, test = split
    lm = counting(weak_on_green)
    model = EasyAdapter(CallableClient(lm), n_clusters=2, cv_folds=2, policy="lm-first").fit(train, val)
    before = lm.calls
    r = model.route(test.texts)
    assert r.asked_lm.all() and lm.calls - before == len(test)
    assert (r.labels == np.array(test.labels)).mean() > 0.9  # the SSM overrides the LM on green


def test_useless_lm_is_ignored(split):
    train, val, test = split
    model = EasyAdapter(CallableClient(lambda t, labels: "red"), n_clusters=2, cv_folds=3, budget=1.0)
    report = model.fit(train, val).evaluate(test)
    assert report["ea"]["accuracy"] >= report["ssm"]["accuracy"] - 0.02
    assert report["lm_answer_share"] < 0.1


def test_not_fitted():
    model = EasyAdapter(CallableClient(weak_on_green))
    for call in (model.predict, model.predict_proba, model.route):
        with pytest.raises(NotFittedError, match="fit"):
            call(["a red cup"])
    with pytest.raises(NotFittedError):
        model.save_pretrained("unused")


def test_bad_inputs(fitted, split):
    train, val, _ = split
    with pytest.raises(DataError, match=r"texts\[1\]"):
        fitted.predict(["a red cup", ""])
    with pytest.raises(DataError, match="list of strings"):
        fitted.predict("a red cup")
    with pytest.raises(DataError, match="3 texts but 2 labels"):
        TextLabelData(["a", "b", "c"], [0, 1], COLOURS)
    with pytest.raises(DataError, match="outside"):
        TextLabelData(["a"], [7], COLOURS)
    other = TextLabelData(val.texts, val.labels, ["r", "b", "g"])
    with pytest.raises(DataError, match="label_names"):
        EasyAdapter(CallableClient(weak_on_green)).fit(train, other)
    with pytest.raises(DataError, match="empty"):
        EasyAdapter(CallableClient(weak_on_green)).fit(train, TextLabelData([], [], COLOURS))
    with pytest.raises(ConfigError, match="policy"):
        EasyAdapter(CallableClient(weak_on_green), policy="maybe").fit(train, val)
    with pytest.raises(ConfigError, match="cv_folds"):
        EasyAdapter(CallableClient(weak_on_green), cv_folds=1).fit(train, val)
    with pytest.raises(ConfigError, match="lm"):
        EasyAdapter().fit(train, val)


def test_embedding_ssm_needs_an_embedding_source(split):
    train, val, _ = split
    with pytest.raises(ConfigError, match="embeddings"):
        EasyAdapter(CallableClient(weak_on_green), ssms=("embedding-lr",)).fit(train, val)


def test_an_embedding_lm_is_asked_once_per_input(split):
    """When the LM also gives the embeddings, fit and route take both from one answer: without a
    cache, no input is sent twice."""
    train, val, test = split
    fn = counting(embed_colour)
    model = EasyAdapter(
        CallableClient(fn, returns="embeddings"), ssms=("embedding-lr",), n_clusters=2, cv_folds=2, policy="lm-first"
    ).fit(train, val)
    assert fn.calls == len(COLOURS) + len(train) + len(val)  # the label names, then each input once
    fn.calls = 0
    r = model.route(test.texts)
    assert fn.calls == len(COLOURS) + len(test) and r.asked_lm.all()
    assert len(model.predict(test.texts)) == len(test)


encoder_fits: list[int] = []
head_fits: list[int] = []


class CountingEncoder(TransformerMixin, BaseEstimator):
    def fit(self, X, y=None):
        assert y is None  # label-free
        encoder_fits.append(len(X))
        self.vec_ = CountVectorizer().fit(list(X))
        return self

    def transform(self, X):
        return self.vec_.transform(list(X))


class EncodedSSM(SSMBase):
    """A text SSM with a label-free encoder: EasyAdapter fits that once, then heads per fold."""

    def encoder(self):
        return CountingEncoder()

    def head(self):
        return _CountingNB()


class _CountingNB(MultinomialNB):
    def fit(self, X, y, sample_weight=None):
        head_fits.append(X.shape[0])
        return super().fit(X, y, sample_weight=sample_weight)


def test_encoder_fitted_once_heads_fitted_per_fold(split):
    train, val, test = split
    encoder_fits.clear()
    head_fits.clear()
    model = EasyAdapter(CallableClient(weak_on_green), ssms=(EncodedSSM(),), n_clusters=3, cv_folds=3).fit(train, val)
    assert encoder_fits == [len(train)]  # once, on the training rows (never on validation)
    folds = [len(a) for a, _ in model.oof_folds_]
    passes = (len(head_fits) - 1) // len(folds)  # one out-of-fold pass, two with underfit weights
    assert passes in (1, 2) and head_fits == folds * passes + [len(train)]
    assert not hasattr(model, "encoders_")  # fit's bookkeeping, not part of the model
    encoder = model.ssms_[0].model_[0]
    assert isinstance(encoder, CountingEncoder) and len(model.predict(test.texts)) == len(test)


def test_regions_featurizer_auto(split):
    train, val, _ = split
    text_only = EasyAdapter(CallableClient(weak_on_green), n_clusters=2, cv_folds=2).fit(train, val)
    assert text_only.regions_.featurizer == "tfidf"
    both = EasyAdapter(
        CallableClient(embed_colour, returns="embeddings"), ssms=("tfidf-lr", "embedding-lr"), n_clusters=2, cv_folds=2
    ).fit(train, val)
    assert both.regions_.featurizer == "blackbox"  # the box's embeddings, fetched anyway
    assert len(both.predict(val.texts)) == len(val)


def test_answers_asked_chunk_by_chunk_equal_one_pass(split):
    from exotune.ea.blackbox import Ledger
    from exotune.ea.model import LMAnswers

    texts = split[0].texts[:30]

    def some_scores(text, labels):  # scores for some answers only, an unparseable one too
        i = texts.index(text)
        if i == 3:
            return {"label": None}
        return {"label": i % 3, "scores": [0.2, 0.3, 0.5]} if i >= 20 else {"label": i % 3, "confidence": 0.5}

    for client in (
        CallableClient(weak_on_green),
        CallableClient(embed_colour, returns="embeddings"),
        CallableClient(some_scores),
    ):
        whole = LMAnswers.from_outputs(client.run(texts, COLOURS), len(COLOURS))
        chunked = LMAnswers.ask(client, texts, COLOURS, Ledger(), chunk=7)
        for name in ("labels", "scores", "confidence", "embeddings"):
            a, b = getattr(whole, name), getattr(chunked, name)
            assert (a is None) == (b is None), name
            if a is not None:
                np.testing.assert_array_equal(b, a.astype(b.dtype))


def test_answers_in_chunks_open_the_box_once_and_ask_each_text_once(split):
    from exotune.ea.blackbox import Ledger
    from exotune.ea.model import LMAnswers

    texts = split[0].texts[:20] * 2  # every text again in a later chunk
    fn = counting(embed_colour)
    chunked = LMAnswers.ask(CallableClient(fn, returns="embeddings"), texts, COLOURS, Ledger(), chunk=7)
    assert fn.calls == len(COLOURS) + 20  # the label names once, then each distinct text once
    np.testing.assert_array_equal(chunked.embeddings[:20], chunked.embeddings[20:])

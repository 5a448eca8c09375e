"""One conformance suite that every specific small model passes, plus regions and the router."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import make_pipeline

from exotune.ea import SSMS, Router, SklearnSSM, make_ssm, register_ssm, wilson
from exotune.ea.regions import Regions
from exotune.errors import ConfigError, NotFittedError

from .ea_fakes import colour_task, embed, one_blas_thread  # noqa: F401

CASES = {name: name for name in SSMS}
CASES["sklearn-text-nb"] = SklearnSSM(make_pipeline(CountVectorizer(), MultinomialNB()))
CASES["sklearn-embedding-lr"] = SklearnSSM(LogisticRegression(), input_kind="embedding")


def inputs_for(ssm, data):
    return data.texts if ssm.input_kind == "text" else np.array([embed(t) for t in data.texts])


@pytest.mark.parametrize("spec", list(CASES.values()), ids=list(CASES))
def test_ssm_conformance(spec):
    data = colour_task(60)
    ssm = make_ssm(spec)
    X, y = inputs_for(ssm, data), np.array(data.labels)
    with pytest.raises(NotFittedError):
        ssm.predict_proba(X)
    unfitted = clone(ssm)
    assert ssm.fit(X, y) is ssm
    p = ssm.predict_proba(X)
    assert p.shape == (60, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert (ssm.predict(X) == y).mean() > 0.8
    assert list(ssm.classes_) == [0, 1, 2]
    assert not hasattr(unfitted, "model_") and unfitted.get_params().keys() == ssm.get_params().keys()
    w = np.where(y == 2, 3.0, 1.0)
    assert clone(ssm).fit(X, y, sample_weight=w).predict_proba(X).shape == (60, 3)


def test_registry_rejects_duplicates_and_unknown():
    with pytest.raises(ConfigError, match="already registered"):
        register_ssm("tfidf-lr", SklearnSSM)
    for bad in ("", "Has-Caps", "with space", "-dash-first", None):
        with pytest.raises(ConfigError, match="must match"):
            register_ssm(bad, SklearnSSM)
    with pytest.raises(ConfigError, match="must be a class"):
        register_ssm("an-instance", SklearnSSM())
    assert "an-instance" not in SSMS
    with pytest.raises(ConfigError, match="unknown SSM"):
        make_ssm("no-such-ssm")
    with pytest.raises(ConfigError, match="predict_proba"):
        make_ssm(42)


def test_registered_parameters_make_the_candidates():
    assert make_ssm("embedding-lr-128").n_components == 128 and make_ssm("embedding-lr-all").n_components is None
    raw = make_ssm("embedding-lr-raw")
    assert raw.encoder() is None and make_ssm("embedding-lr").encoder() is not None


def test_wilson_interval():
    lo, hi = wilson(8, 10)
    assert 0.44 < lo < 0.5 and 0.94 < hi < 0.98
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0


def test_regions_flag_where_lm_underfits():
    data = colour_task(90)
    y = np.array(data.labels)
    lm_ok = y != 2  # the LM never gets "green" right
    regions = Regions(n_clusters=3).fit(data.texts, y, lm_ok)
    clusters = regions.assign(data.texts)
    regions.mark(y, clusters, np.ones(len(y), dtype=bool), data.label_names)
    flagged = {r["name"] for r in regions.table_ if r["kind"] == "class" and r["underfit"]}
    assert flagged == {"green"}
    w = regions.weights(y, clusters, 2.0)
    assert (w[y == 2] == 3.0).all()
    # leave-one-out: a training row's own outcome does not feed its region accuracy
    acc = regions.lm_accuracy(y, clusters, own_y=y, own_correct=lm_ok)
    assert acc[y == 2, 0].max() < 0.1 and acc[y == 0, 0].min() > 0.9


def test_router_budget_and_policies():
    rng = np.random.default_rng(0)
    n = 200
    G = rng.normal(size=(n, 5))
    ssm_ok = (G[:, 0] > -0.5).astype(int)  # the gate can learn who is right
    lm_ok = rng.random(n) < 0.7
    F = np.column_stack([G, rng.normal(size=(n, 8))])
    r = Router("ssm-first", budget=0.2).fit(G, F, ssm_ok, lm_ok).calibrate(G, F, ssm_ok, lm_ok)
    assert r.share_ <= 0.2 and r.defer(G).mean() <= 0.2 + 0.01
    assert Router("ssm-first", budget=0.0).fit(G, F, ssm_ok, lm_ok).calibrate(G, F, ssm_ok, lm_ok).defer(G).sum() == 0
    assert Router("lm-first").fit(G, F, ssm_ok, lm_ok).defer(G).all()
    with pytest.raises(ConfigError, match="policy"):
        Router("both").fit(G, F, ssm_ok, lm_ok)
    with pytest.raises(ConfigError, match="budget"):
        Router(budget=1.5).fit(G, F, ssm_ok, lm_ok)
    with pytest.raises(NotFittedError):
        Router().defer(G)


def test_default_text_ssm_keeps_one_float32_weight_matrix():
    # the memory goal: SGD on float32 features holds (classes, features) float32 weights once,
    # where multinomial lbfgs held some 25 float64 copies of them
    data = colour_task(60)
    ssm = make_ssm("tfidf-lr").fit(data.texts, np.array(data.labels), sample_weight=np.ones(60))
    clf = ssm.model_[-1]
    assert clf.coef_.dtype == np.float32 and clf.coef_.shape[0] == 3
    assert ssm.model_[0].transform(data.texts[:2]).dtype == np.float32


def test_lsa_featurizer_is_float32_and_unit_norm():
    from exotune.ea.regions import LSAFeaturizer

    data = colour_task(120)  # >= 100 texts: n-grams seen once are left out
    lsa = LSAFeaturizer(n_components=4).fit(data.texts)
    f = lsa.transform(data.texts)
    assert f.dtype == np.float32 and f.shape == (120, 4)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    assert all(lsa.tfidf_.transform(data.texts).getnnz(axis=0) >= 2)


@pytest.mark.parametrize("name", [n for n in SSMS if make_ssm(n).encoder() is not None])
def test_encoded_fit_is_the_plain_fit(name):
    # EasyAdapter fits an SSM's encoder once and then only heads on encoded rows: the model a
    # user gets must be the one a plain fit gives
    data = colour_task(60)
    a = make_ssm(name)
    X, y = inputs_for(a, data), np.array(data.labels)
    a.fit(X, y)
    from exotune.ea.ssm import fit_encoder

    b = make_ssm(name)
    encoder = fit_encoder(b.encoder(), b._prep(X))
    b.fit_encoded(encoder, encoder.transform(b._prep(X)), y)
    np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), rtol=1e-6)
    np.testing.assert_allclose(
        b.predict_proba_encoded(encoder.transform(b._prep(X[:5]))), a.predict_proba(X[:5]), rtol=1e-6
    )
    with pytest.raises(ConfigError, match="rows"):
        make_ssm(name).fit_encoded(encoder, encoder.transform(b._prep(X)), y[:-1])


def test_scaler_encoder_fitted_in_chunks_equals_one_fit():
    from sklearn.preprocessing import StandardScaler

    from exotune.ea.ssm import fit_encoder

    X = np.random.default_rng(0).normal(size=(2500, 7)).astype(np.float32)
    chunked, whole = fit_encoder(StandardScaler(), X, chunk=1000), StandardScaler().fit(X)
    np.testing.assert_allclose(chunked.mean_, whole.mean_, rtol=1e-6)
    np.testing.assert_allclose(chunked.scale_, whole.scale_, rtol=1e-5)


def test_router_features_match_their_definition():
    from exotune.ea.router import full_features, gate_features

    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(6), size=40)
    acc = rng.random((40, 2))
    G = gate_features(P, acc)
    top = np.sort(P, axis=1)
    entropy = -(P * np.log(np.clip(P, 1e-12, 1))).sum(axis=1) / np.log(6)
    np.testing.assert_allclose(G, np.column_stack([top[:, -1], top[:, -1] - top[:, -2], entropy, acc]), atol=1e-12)
    scores = rng.dirichlet(np.ones(6), size=40).astype(np.float32)
    scores[::3] = np.nan  # the box gave no scores for these rows
    lm = rng.integers(-1, 6, size=40)
    F = full_features(P, acc, lm, scores, None)
    np.testing.assert_array_equal(F[:, :5], G)
    pred, has = P.argmax(axis=1), ~np.isnan(scores).any(axis=1)
    np.testing.assert_allclose(F[:, 10], np.where(has, np.nan_to_num(scores)[np.arange(40), pred], 0), rtol=1e-6)
    np.testing.assert_allclose(F[:, 11], np.where(has, np.nan_to_num(scores).max(axis=1), 0), rtol=1e-6)
    np.testing.assert_array_equal(F[:, 12], has)
    assert not np.isnan(F).any()
    np.testing.assert_array_equal(full_features(P, acc, lm, scores, None, gate=G), F)


def test_transform_in_chunks_equals_one_transform():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import StandardScaler

    from exotune.ea.ssm import transform_in_chunks

    texts = colour_task(50).texts
    vec = TfidfVectorizer().fit(texts)
    chunked = transform_in_chunks(vec, texts, chunk=7)
    assert chunked.format == "csr"
    np.testing.assert_allclose(chunked.toarray(), vec.transform(texts).toarray())
    X = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    scaler = StandardScaler().fit(X)
    np.testing.assert_array_equal(transform_in_chunks(scaler, X, chunk=7), scaler.transform(X))


def test_lm_first_never_costs_the_ssm_accuracy_on_validation():
    # a weak LM asked about everything: validation chooses how readily its answers are taken,
    # down to never, so lm-first is at least as good as the SSM alone there
    rng = np.random.default_rng(3)
    n = 400
    G = rng.normal(size=(n, 5))
    F = np.column_stack([G, rng.normal(size=(n, 8))])
    ssm_ok = (rng.random(n) < 0.9).astype(int)
    lm_ok = (rng.random(n) < 0.4).astype(int)
    fit_rows, val_rows = slice(0, 200), slice(200, None)
    r = Router("lm-first").fit(G[fit_rows], F[fit_rows], ssm_ok[fit_rows], lm_ok[fit_rows])
    r.calibrate(G[val_rows], F[val_rows], ssm_ok[val_rows], lm_ok[val_rows])
    assert r.val_curve_[-1]["share"] == 1.0 and r.share_ == 1.0
    assert r.val_curve_[-1]["accuracy"] >= ssm_ok[val_rows].mean()
    assert r.trust_lm_ in (0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
    keep = r.keep_ssm(F[val_rows])
    routed = np.where(keep, ssm_ok[val_rows], lm_ok[val_rows])
    assert routed.mean() == r.val_curve_[-1]["accuracy"]

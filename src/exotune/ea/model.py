"""EasyAdapter: a black-box LM, specific small models where it underfits, and a router."""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import StratifiedKFold

from exotune.data.text import TextLabelData
from exotune.ea.answers import LMAnswers, Routing
from exotune.ea.blackbox import Ledger
from exotune.ea.inputs import check_data, check_texts, encode_views, make_views, take_rows, view_of
from exotune.ea.regions import Regions
from exotune.ea.router import Router, full_features, gate_features, positive_proba
from exotune.ea.selection import accuracy, choose_ssms, fallback
from exotune.ea.ssm import full_proba, make_ssm, ssm_name
from exotune.errors import ConfigError, DataError, NotFittedError
from exotune.memory import release_memory


class EasyAdapter(BaseEstimator):
    """Easy Adaptation (arXiv 2512.17771). ``lm``: a black-box client that labels texts;
    ``embedder``: an optional client giving embeddings (the LM itself if it provides them);
    ``featurizer``: what the regions are clustered on: "auto" (the box's embeddings when fit
    fetches them for an SSM, else TF-IDF), "tfidf", "blackbox" or a scikit-learn transformer.
    ``select_ssms``: with several ``ssms``, keep those chosen out of fold (and on validation, see
    :mod:`exotune.ea.selection`; ``ssm_selection_`` says which and why); else average them all.

    ``lm`` and ``embedder`` are run-time objects (connections), not data: ``sklearn.base.clone``
    hands the copy the same clients, and ``save_pretrained`` keeps only what describes them."""

    #: constructor arguments that are run-time objects: shared by clone, never saved
    RUNTIME = ("lm", "embedder")

    def __init__(
        self,
        lm=None,
        embedder=None,
        ssms=("tfidf-lr",),
        featurizer="auto",
        n_clusters: int = 8,
        policy: str = "ssm-first",
        budget: float = 0.3,
        cv_folds: int = 3,
        underfit_weight: float = 1.0,
        per_region_ssm: bool = False,
        min_region_size: int = 50,
        confidence: float = 0.95,
        random_state: int = 0,
        select_ssms: bool = True,
    ):
        self.lm, self.embedder, self.ssms, self.featurizer = lm, embedder, ssms, featurizer
        self.n_clusters, self.policy, self.budget, self.cv_folds = n_clusters, policy, budget, cv_folds
        self.underfit_weight, self.per_region_ssm, self.min_region_size = (
            underfit_weight,
            per_region_ssm,
            min_region_size,
        )
        self.confidence, self.random_state, self.select_ssms = confidence, random_state, select_ssms

    def __sklearn_clone__(self) -> EasyAdapter:
        """An unfitted copy with the same hyperparameters (cloned as scikit-learn does) and the
        same clients: a client holds connections, locks and a running ledger, which are neither
        copied nor pickled."""
        params = self.get_params(deep=False)
        shared = {k: params.pop(k) for k in self.RUNTIME}
        return type(self)(**{k: clone(v, safe=False) for k, v in params.items()}, **shared)

    @classmethod
    def saved_params(cls) -> list[str]:
        """The hyperparameters a saved folder keeps: every constructor argument but the clients."""
        return [name for name in cls._get_param_names() if name not in cls.RUNTIME]

    # -- black-box calls -------------------------------------------------------------------------

    def _embedding_source(self):
        if self.embedder is not None:
            return self.embedder
        if self.lm is not None and "embeddings" in getattr(self.lm, "provides", ()):
            return self.lm
        return None

    def needs_embeddings(self) -> bool:
        """Whether an SSM or the regions' featurizer reads the box's embeddings."""
        kinds = {getattr(s, "input_kind", "text") for s in getattr(self, "ssms_", [make_ssm(s) for s in self.ssms])}
        regions = getattr(self, "regions_", None)  # once fitted, what "auto" chose
        return "embedding" in kinds or (regions.featurizer if regions is not None else self.featurizer) == "blackbox"

    def _embed(self, texts, ledger: Ledger, lm: LMAnswers | None = None) -> np.ndarray | None:
        """(N, D) float32 embeddings, or None when nothing reads them. ``lm``: the LM's answers
        for the same texts, whose embeddings are taken when the LM is the source (no second pass)."""
        if not self.needs_embeddings():
            return None
        src = self._embedding_source()
        if src is None:
            raise ConfigError("an SSM or the featurizer reads embeddings, but neither embedder nor lm provides them")
        if src is self.lm and lm is not None and lm.embeddings is not None:
            return lm.embeddings
        emb = LMAnswers.ask(src, texts, self.label_names_, ledger).embeddings
        if emb is None:
            raise ConfigError(f"{type(src).__name__} returned no embeddings")
        return emb

    def _ask_lm(self, texts, ledger: Ledger) -> LMAnswers:
        if self.lm is None:
            raise ConfigError("this EasyAdapter has no lm client; pass lm=... (from_pretrained(path, lm=...))")
        return LMAnswers.ask(self.lm, texts, self.label_names_, ledger)

    # -- the small models ------------------------------------------------------------------------

    def _fit_one(self, spec, i, views, y, w, rows):
        release_memory(collect=False)  # the previous model's scratch, before this one's
        ssm = make_ssm(spec)
        X, encoded = view_of(views, i, ssm)
        if encoded:  # the rows are passed on, not kept here: the SSM may let them go early
            ssm.fit_encoded(self.encoders_[i], take_rows(X, rows), y[rows], sample_weight=w[rows])
        else:
            ssm.fit(take_rows(X, rows), y[rows], sample_weight=w[rows])
        release_memory(collect=False)  # the fit's scratch, before predictions are made
        return ssm

    def _specs(self) -> list:
        """The SSMs in use: those kept by the selection (during fit), else all of ``ssms``."""
        return [self.ssms[i] for i in getattr(self, "kept_", range(len(self.ssms)))]

    def _models(self, views, y, w, clusters, rows):
        """Fit the SSMs on ``rows``, one at a time, lazily: the global ones (key i), then one
        specialist per large underfit cluster (key ("region", c))."""
        specs = self._specs()
        for i, spec in enumerate(specs):
            yield i, self._fit_one(spec, i, views, y, w, rows)
        if self.per_region_ssm:
            rows = np.arange(len(y))[rows]
            for c in np.flatnonzero(self.regions_.underfit_cluster_):
                idx = rows[clusters[rows] == c]
                if len(idx) >= self.min_region_size and len(np.unique(y[idx])) > 1:
                    yield ("region", int(c)), self._fit_one(specs[0], 0, views, y, w, idx)

    def _proba(self, models, views, clusters, rows, n_global: int) -> np.ndarray:
        """(len(rows), C): the global SSMs' mean probability, then each specialist averaged in on
        its cluster's rows. ``models`` yields (key, model): each is used and let go in turn."""
        c = len(self.label_names_)
        rows = np.arange(len(clusters))[rows] if isinstance(rows, slice) else np.asarray(rows)
        all_rows = len(rows) == len(clusters)
        P = np.zeros((len(rows), c))
        for key, m in models:
            i, sel = (key, slice(None)) if isinstance(key, int) else (0, np.flatnonzero(clusters[rows] == key[1]))
            X, encoded = view_of(views, i, m)
            X = take_rows(X, slice(None) if all_rows and isinstance(sel, slice) else rows[sel])
            if isinstance(key, int):
                P += full_proba(m, X, c, encoded) / n_global
            elif len(sel):
                P[sel] = (P[sel] + full_proba(m, X, c, encoded)) / 2
            del m, X  # let go before the next model is fitted
        return P

    def system_proba(self, system, views, clusters) -> np.ndarray:
        """(N, C): the probabilities of a fitted ``system`` ({"global": [...], "special": {cluster:
        model}}, as ``ssms_system_``) for every row of ``views`` in ``clusters``."""
        models = [*enumerate(system["global"]), *((("region", r), m) for r, m in system["special"].items())]
        return self._proba(models, views, clusters, slice(None), len(system["global"]))

    def _fit_system(self, views, y, w, clusters) -> dict:
        """Global SSMs on all training rows, plus one specialist per large underfit cluster."""
        system = {"global": [], "special": {}}
        for key, m in self._models(views, y, w, clusters, slice(None)):
            if isinstance(key, int):
                system["global"].append(m)
            else:
                system["special"][key[1]] = m
        return system

    def _oof(self, views, y, w, clusters) -> np.ndarray:
        """Out-of-fold probabilities: each row predicted by SSMs that never saw its label."""
        P = np.zeros((len(y), len(self.label_names_)), dtype=np.float32)  # half the memory; ranks the same
        for fit_idx, held_idx in self.oof_folds_:
            P[held_idx] = self._proba(
                self._models(views, y, w, clusters, fit_idx), views, clusters, held_idx, len(self._specs())
            )
        release_memory(collect=False)
        return P

    # -- fit ---------------------------------------------------------------------------------------

    def fit(self, train: TextLabelData, val: TextLabelData) -> EasyAdapter:
        """Probe the LM on train and val, find where it underfits, fit the SSMs (out of fold,
        then on all of train) and the router, and calibrate the LM budget on val."""
        from threadpoolctl import threadpool_limits

        # one BLAS thread: these products are small, so threads add time, and each thread's
        # buffer adds memory (measured on Banking77: -14 MB peak, fit 16 s -> 13 s)
        with threadpool_limits(limits=1, user_api="blas"):
            return self._fit(train, val)

    def _fit(self, train: TextLabelData, val: TextLabelData) -> EasyAdapter:
        check_data(train, "train")
        check_data(val, "val")
        if list(train.label_names) != list(val.label_names):
            raise DataError("train and val must share label_names (same labels, same order)")
        Router(self.policy, self.budget).validate()
        if not isinstance(self.cv_folds, int) or self.cv_folds < 2:
            raise ConfigError(f"cv_folds must be an integer >= 2, got {self.cv_folds!r}")
        self.label_names_ = list(train.label_names)
        self.kept_ = list(range(len(self.ssms)))  # all, until the selection keeps fewer
        self.ssm_selection_ = None
        self.ledgers_ = {"probe": Ledger(), "embed": Ledger()}
        t0 = time.perf_counter()
        n_tr = len(train)
        texts = list(train.texts) + list(val.texts)
        lm = self._ask_lm(texts, self.ledgers_["probe"])
        emb = self._embed(texts, self.ledgers_["embed"], lm)
        release_memory()  # the probe's per-answer objects are gone: give their pages back
        y, y_val = np.asarray(train.labels), np.asarray(val.labels)
        lm_ok = lm.labels[:n_tr] == y
        featurizer = self.featurizer
        if featurizer == "auto":  # the box's embeddings when fit has them anyway, else TF-IDF
            featurizer = "blackbox" if emb is not None else "tfidf"
        region_in = emb if featurizer == "blackbox" else texts
        self.regions_ = Regions(self.n_clusters, featurizer, self.confidence, self.random_state)
        self.regions_.fit(region_in[:n_tr], y, lm_ok)
        clusters, clusters_val = self.regions_.assign(region_in[:n_tr]), self.regions_.assign(region_in[n_tr:])
        release_memory()
        views_all = make_views(texts, emb)
        lm.embeddings = emb = region_in = None  # in views_all alone: encoding may let them go
        self.encoders_ = encode_views(self.ssms, views_all, n_tr)
        views = {k: take_rows(v, slice(0, n_tr)) for k, v in views_all.items()}
        views_val = {k: take_rows(v, slice(n_tr, None)) for k, v in views_all.items()}
        del views_all  # sparse slices are copies: the whole matrix need not stay beside them
        release_memory()
        folds = max(2, min(self.cv_folds, int(np.bincount(y).max())))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # classes smaller than the number of folds
            splitter = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            self.oof_folds_ = [(a, b) for a, b in splitter.split(np.zeros(n_tr), y)]
        # pass 1: where is the SSM better than the LM? pass 2: with weights on those regions
        w = np.ones(n_tr)
        singles = (
            self._select(views, views_val, y, y_val, w, clusters) if self.select_ssms and len(self.ssms) > 1 else None
        )
        P = self._oof(views, y, w, clusters) if singles is None or self.per_region_ssm else singles["oof"]
        self.regions_.mark(y, clusters, P.argmax(1) == y, self.label_names_)
        if self.underfit_weight > 0 and (self.regions_.underfit_class_.any() or self.regions_.underfit_cluster_.any()):
            w = self.regions_.weights(y, clusters, self.underfit_weight)
            del P  # not alive beside the second pass's
            P = self._oof(views, y, w, clusters)
        self._fit_router(P, clusters, y, lm_ok, lm)
        del P
        release_memory()
        self.ssms_system_ = self._fit_system(views, y, w, clusters)
        # calibrate the budget threshold on validation, with the SSMs a user will get
        Pv = self.system_proba(self.ssms_system_, views_val, clusters_val)
        b = None if singles is None else fallback(self.ssm_selection_, singles["val"], accuracy(Pv, y_val))
        if b is not None:  # one candidate alone beats the ensemble on validation: it alone, unweighted
            self.kept_ = [b]
            self.ssms_system_ = {"global": [singles["models"][b]], "special": {}}
            self.regions_.mark(y, clusters, singles["oofs"][b].argmax(1) == y, self.label_names_)
            self._fit_router(singles["oofs"][b], clusters, y, lm_ok, lm)
            Pv = singles["val_proba"][b]
        self.ssms_ = self.ssms_system_["global"]
        # each candidate alone, fitted on all of train (to compare; not saved); None without a selection
        self.ssm_candidates_ = None if singles is None else dict(zip(self._names(), singles["models"], strict=True))
        acc_v = self.regions_.lm_accuracy(Pv.argmax(1), clusters_val)
        Gv = gate_features(Pv, acc_v)
        Fv = full_features(
            Pv, acc_v, lm.labels[n_tr:], take_rows(lm.scores, slice(n_tr, None)), lm.confidence[n_tr:], gate=Gv
        )
        self.val_features_ = (Gv, Fv, Pv.argmax(1) == y_val, lm.labels[n_tr:] == y_val)
        self.router_.calibrate(*self.val_features_)
        del self.encoders_  # inside the fitted SSMs; fit's own bookkeeping
        self.fit_seconds_ = time.perf_counter() - t0
        self.val_accuracy_ = {
            "lm": float((lm.labels[n_tr:] == y_val).mean()),
            "ssm": accuracy(Pv, y_val),
            "ea": max(c["accuracy"] for c in self.router_.val_curve_ if c["share"] == self.router_.share_),
        }
        return self

    def _fit_router(self, P, clusters, y, lm_ok, lm) -> None:
        """The router learns only from out-of-fold predictions ``P`` of the training rows."""
        n_tr = len(y)
        acc = self.regions_.lm_accuracy(P.argmax(1), clusters, own_y=y, own_correct=lm_ok)
        G = gate_features(P, acc)
        F = full_features(P, acc, lm.labels[:n_tr], take_rows(lm.scores, slice(0, n_tr)), lm.confidence[:n_tr], gate=G)
        self.router_ = Router(self.policy, self.budget).fit(G, F, P.argmax(1) == y, lm_ok)
        self.router_rows_ = np.concatenate([b for _, b in self.oof_folds_])

    def _names(self) -> list[str]:
        return [ssm_name(s) for s in self.ssms]

    def _select(self, views, views_val, y, y_val, w, clusters) -> dict:
        """Score every candidate SSM alone (out of fold on train; fitted on all of train, on
        validation), keep those chosen out of fold (``kept_``, ``ssm_selection_``) and re-key the
        encoded views to the kept ones. Returns what a fall back to one candidate needs, and
        "oof", the kept ensemble's out-of-fold probabilities (pass 1)."""
        c, n = len(self.label_names_), len(self.ssms)
        oofs, models, val_proba = [], [], []
        for i, spec in enumerate(self.ssms):
            P = np.zeros((len(y), c), dtype=np.float32)
            for fit_idx, held_idx in self.oof_folds_:
                P[held_idx] = self._proba(
                    [(i, self._fit_one(spec, i, views, y, w, fit_idx))], views, clusters, held_idx, 1
                )
            oofs.append(P)
            models.append(self._fit_one(spec, i, views, y, w, slice(None)))
            X, encoded = view_of(views_val, i, models[-1])
            val_proba.append(full_proba(models[-1], X, c, encoded))
        kept, self.ssm_selection_ = choose_ssms(self._names(), oofs, y)
        self.kept_ = kept
        for d in (views, views_val, self.encoders_):
            moved = {j: d[i] for j, i in enumerate(kept) if i in d}
            for i in range(n):
                d.pop(i, None)
            d.update(moved)
        return {
            "oofs": oofs,
            "models": models,
            "val_proba": val_proba,
            "val": [accuracy(P, y_val) for P in val_proba],
            "oof": (sum(oofs[i] for i in kept) / len(kept)).astype(np.float32),
        }

    def recalibrate(self, budget: float, policy: str | None = None) -> EasyAdapter:
        """Another LM budget (and policy) without refitting: the budget only moves the routing
        threshold, which is chosen again on the validation features kept by ``fit``."""
        self._check_fitted()
        if not hasattr(self, "val_features_"):
            raise NotFittedError("recalibrate needs the validation features of fit(); a loaded adapter has none")
        policy = policy or self.policy
        Router(policy, budget).validate()
        self.policy, self.budget = policy, budget
        self.router_.policy, self.router_.budget = policy, budget
        self.router_.threshold_ = np.inf if policy == "lm-first" else -np.inf
        self.router_.calibrate(*self.val_features_)
        return self

    # -- inference ---------------------------------------------------------------------------------

    def _check_fitted(self):
        if not hasattr(self, "router_"):
            raise NotFittedError("this EasyAdapter is not fitted yet; call fit(train, val) or from_pretrained(path)")

    def route(self, texts, ask_all: bool = False) -> Routing:
        """Answer ``texts``: SSMs first or LM first per the policy. ``ask_all`` asks the LM about
        every input (to compare with the LM alone); routing decisions are unchanged by it."""
        self._check_fitted()
        texts = check_texts(texts)
        t0, ledger = time.perf_counter(), Ledger()
        n, c = len(texts), len(self.label_names_)
        if n == 0:
            e = np.zeros(0, dtype=int)
            return Routing(e, np.zeros((0, c)), e, e.astype(bool), e.astype(bool), e, ledger, 0.0)
        # when the LM is the embedder, its answers come with the embeddings: one pass, not two
        known = self._ask_lm(texts, ledger) if self.needs_embeddings() and self._embedding_source() is self.lm else None
        emb = self._embed(texts, ledger, known)
        views = make_views(texts, emb)
        clusters = self.regions_.assign(emb if self.regions_.featurizer == "blackbox" else texts)
        P = self.system_proba(self.ssms_system_, views, clusters)
        ssm_pred = P.argmax(1)
        acc = self.regions_.lm_accuracy(ssm_pred, clusters)
        asked = self.router_.defer(gate_features(P, acc))
        ask_idx = np.arange(n) if ask_all else np.flatnonzero(asked)
        labels, proba, used = ssm_pred.copy(), P.copy(), np.zeros(n, dtype=bool)
        lm_labels = np.full(n, -1)
        if len(ask_idx):
            lm = known.take(ask_idx) if known is not None else self._ask_lm([texts[i] for i in ask_idx], ledger)
            lm_labels[ask_idx] = lm.labels
            F = full_features(P[ask_idx], acc[ask_idx], lm.labels, lm.scores, lm.confidence)
            take_lm = ~self.router_.keep_ssm(F) & (lm.labels >= 0) & asked[ask_idx]
            rows = ask_idx[take_lm]
            used[rows] = True
            labels[rows] = lm.labels[take_lm]
            pi = 1 - np.clip(positive_proba(self.router_.chooser_, F[take_lm]), 0, 0.5)  # P(LM better) > 0.5 here
            onehot = np.eye(c)[lm.labels[take_lm]]
            proba[rows] = pi[:, None] * onehot + (1 - pi[:, None]) * P[rows]
        return Routing(labels, proba, ssm_pred, asked, used, lm_labels, ledger, time.perf_counter() - t0)

    def predict(self, texts) -> list[str]:
        """The label name of each text, as every task model's ``predict`` (indices:
        ``route(texts).labels``)."""
        return [self.label_names_[i] for i in self.route(texts).labels]

    def predict_proba(self, texts) -> np.ndarray:
        """(N, C) probabilities, columns in ``label_names_`` order."""
        return self.route(texts).proba

    def evaluate(self, data: TextLabelData, compare: bool = True) -> dict:
        """EA's metrics on ``data``; with ``compare``, also LM alone and the cost-quality curve
        (the LM is then asked about every input)."""
        from exotune.ea.report import evaluation

        self._check_fitted()
        data, classes = check_data(data, "data").aligned_to(self.label_names_)  # by name: any order, a subset
        return evaluation(self, data, compare, classes)

    def save_pretrained(self, path, extra_files: dict[str, dict] | None = None):
        """Write the folder; ``extra_files`` (name: JSON object) go in with the rest, checksummed."""
        from exotune.ea.io import save

        self._check_fitted()
        return save(self, path, extra_files)

    @classmethod
    def from_pretrained(cls, path, lm=None, embedder=None, trusted=()) -> EasyAdapter:
        from exotune.ea.io import load

        return load(cls, path, lm, embedder, trusted)

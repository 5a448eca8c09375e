"""The router: per input, answer locally or ask the LM, and whose answer to keep.

Two small logistic regressions, both learned on out-of-fold predictions (never on rows the SSM
was fit on): the *gate* estimates P(SSM right) from LM-free features; the *chooser*, trained on
rows where exactly one of SSM and LM is right, estimates P(SSM right rather than LM) once the LM
has answered. ``ssm-first`` sends the lowest-gate inputs to the LM, as many as ``budget``
allows and as validation accuracy rewards; ``lm-first`` asks the LM always. Validation also
sets how readily an asked LM's answer is taken (``trust_lm_``), so that a weak LM asked
anyway costs the SSM's accuracy nothing.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from exotune.errors import ConfigError, NotFittedError

POLICIES = ("ssm-first", "lm-first")
#: how readily an asked LM's answer replaces the SSM's: taken when the chooser's P(SSM right
#: rather than LM) is below this; 0.5 is the chooser's own call, 0 never takes the LM's
TRUST_LM = (0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
GATE_FEATURES = ["ssm_conf", "ssm_margin", "ssm_entropy", "lm_acc_class", "lm_acc_cluster"]
FULL_FEATURES = [
    *GATE_FEATURES,
    "agree",
    "lm_parsed",
    "ssm_p_at_lm",
    "lm_conf",
    "has_lm_conf",
    "lm_score_at_ssm",
    "lm_score_max",
    "has_lm_scores",
]


def gate_features(P: np.ndarray, region_acc: np.ndarray) -> np.ndarray:
    """(N, 5) from SSM probabilities P (N, C) and region LM accuracies (N, 2)."""
    c = P.shape[1]
    if c > 1:
        top2 = np.partition(P, c - 2, axis=1)[:, -2:]  # one (N, C) scratch, not a full sort
        first, second = top2.max(axis=1), top2.min(axis=1)
    else:
        first, second = P[:, 0], np.zeros(len(P))
    plogp = np.clip(P, 1e-12, 1)
    np.log(plogp, out=plogp)
    plogp *= P
    ent = -plogp.sum(axis=1) / np.log(max(c, 2))
    return np.column_stack([first, first - second, ent, region_acc])


def full_features(P, region_acc, lm_label, lm_scores=None, lm_conf=None, gate=None) -> np.ndarray:
    """(N, 13): the gate features (``gate``, when already computed) plus what the LM said.
    ``lm_label`` is -1 where unparseable; ``lm_scores`` (N, C) and ``lm_conf`` (N,) hold NaN
    where the box gave none."""
    n, c = P.shape
    rows = np.arange(n)
    lm_label = np.asarray(lm_label, dtype=int)
    parsed = lm_label >= 0
    ssm_pred = P.argmax(axis=1)
    conf = np.full(n, np.nan) if lm_conf is None else np.asarray(lm_conf, dtype=float)
    if lm_scores is None:
        at_ssm = top = np.zeros(n)
        has_scores = np.zeros(n, dtype=bool)
    else:  # per-row reads of the (N, C) scores: no (N, C) copies
        scores = np.asarray(lm_scores)
        has_scores = ~np.isnan(scores).any(axis=1)
        at_ssm = np.where(has_scores, scores[rows, ssm_pred], 0.0)
        top = np.where(has_scores, np.fmax.reduce(scores, axis=1), 0.0)
    return np.column_stack(
        [
            gate_features(P, region_acc) if gate is None else gate,
            (lm_label == ssm_pred).astype(float),
            parsed.astype(float),
            np.where(parsed, P[rows, np.clip(lm_label, 0, c - 1)], 0.0),
            np.nan_to_num(conf, nan=0.0),
            (~np.isnan(conf)).astype(float),
            at_ssm,
            top,
            has_scores.astype(float),
        ]
    )


def _fit_binary(X, target, C):
    """A scaled logistic regression, or a constant when ``target`` has one class (or no rows)."""
    target = np.asarray(target, dtype=int)
    if len(target) < 4 or target.min() == target.max():
        return float(target.mean()) if len(target) else 1.0
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000)).fit(X, target)


def positive_proba(model, X) -> np.ndarray:
    """P(class 1) for each row of ``X``: a fitted binary classifier's, or a constant's (a float)."""
    if isinstance(model, float):
        return np.full(len(X), model)
    if len(X) == 0:  # scikit-learn refuses empty input
        return np.zeros(0)
    return model.predict_proba(X)[:, list(model.classes_).index(1)]


class Router(BaseEstimator):
    trust_lm_ = 0.5  # until calibrate() chooses it (routers saved before it did keep this)

    def __init__(self, policy: str = "ssm-first", budget: float = 0.3, C: float = 1.0):
        self.policy, self.budget, self.C = policy, budget, C

    def validate(self) -> Router:
        """Check ``policy`` and ``budget``; a ConfigError names the one that is wrong."""
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if not 0.0 <= self.budget <= 1.0:
            raise ConfigError(f"budget (share of inputs that may go to the LM) must be in [0, 1], got {self.budget!r}")
        return self

    def fit(self, G, F, ssm_correct, lm_correct):
        """G, F: gate and full features of out-of-fold rows; *_correct: 0/1 per row."""
        self.validate()
        ssm_correct, lm_correct = np.asarray(ssm_correct, dtype=int), np.asarray(lm_correct, dtype=int)
        self.gate_ = _fit_binary(G, ssm_correct, self.C)
        split = ssm_correct != lm_correct  # only these rows say anything about whom to trust
        self.chooser_ = _fit_binary(F[split], ssm_correct[split], self.C)
        self.n_train_rows_ = len(ssm_correct)
        self.threshold_ = np.inf if self.policy == "lm-first" else -np.inf
        return self

    def _check(self):
        if not hasattr(self, "gate_"):
            raise NotFittedError("the router is not fitted yet; fit the EasyAdapter first")

    def gate_score(self, G) -> np.ndarray:
        """P(the SSM is right), before any LM call."""
        self._check()
        return positive_proba(self.gate_, G)

    def defer(self, G) -> np.ndarray:
        """Boolean mask: inputs that go to the LM."""
        self._check()
        if self.policy == "lm-first":
            return np.ones(len(G), dtype=bool)
        return self.gate_score(G) < self.threshold_

    def keep_ssm(self, F) -> np.ndarray:
        """Boolean mask over asked inputs: keep the SSM's answer (else the LM's)."""
        self._check()
        return positive_proba(self.chooser_, F) >= self.trust_lm_

    def curve(self, G, F, ssm_correct, lm_correct, shares=None) -> list[dict]:
        """Accuracy when the ``share`` lowest-gate inputs go to the LM (F, lm_correct for all rows)."""
        self._check()
        return _curve(self.gate_score(G), self.keep_ssm(F), ssm_correct, lm_correct, shares)

    def calibrate(self, G, F, ssm_correct, lm_correct) -> Router:
        """Choose on validation the gate threshold (the best accuracy with at most ``budget`` of
        the inputs asked; all of them for ``lm-first``) and how readily an asked LM's answer is
        taken (``trust_lm_``, from :data:`TRUST_LM`; ties keep the chooser's own call)."""
        self._check()
        self.validate()
        gate, p_keep = self.gate_score(G), positive_proba(self.chooser_, F)  # once, for every trust level
        chosen = None
        for trust in TRUST_LM:
            curve = _curve(gate, p_keep >= trust, ssm_correct, lm_correct)
            allowed = (
                [curve[-1]] if self.policy == "lm-first" else [c for c in curve if c["share"] <= self.budget + 1e-9]
            )
            point = max(allowed, key=lambda c: (c["accuracy"], -c["share"]))
            if chosen is None or point["accuracy"] > chosen[0]["accuracy"] + 1e-12:
                chosen = (point, trust, curve)
        best, self.trust_lm_, self.val_curve_ = chosen
        if self.policy == "lm-first":
            self.share_ = 1.0
            return self
        g = np.sort(gate)
        k = int(round(best["share"] * len(g)))
        if k == 0:
            self.threshold_ = -np.inf
        elif k >= len(g):
            self.threshold_ = np.inf
        else:
            self.threshold_ = float((g[k - 1] + g[k]) / 2)
        self.share_ = best["share"]
        return self


def _curve(gate, keep, ssm_correct, lm_correct, shares=None) -> list[dict]:
    """Accuracy when the ``share`` lowest-``gate`` inputs go to the LM and its answer is taken
    where ``keep`` (keep the SSM's) is False."""
    shares = np.linspace(0, 1, 21) if shares is None else np.asarray(shares)
    order = np.argsort(gate, kind="stable")
    routed = np.where(keep, ssm_correct, lm_correct)
    out = []
    for s in shares:
        k = int(round(s * len(order)))
        correct = np.asarray(ssm_correct, dtype=float).copy()
        correct[order[:k]] = routed[order[:k]]
        out.append({"share": float(s), "accuracy": float(correct.mean()) if len(correct) else float("nan")})
    return out

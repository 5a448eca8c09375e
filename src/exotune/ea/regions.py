"""Where the large model underfits: regions of the input space, and its accuracy in each.

Regions are the gold classes and k-means clusters of a cheap local representation. The LM's
accuracy in a region comes with a Wilson interval; a region is *underfit* when the interval's
upper end is below the small model's cross-validated accuracy there.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from exotune.errors import ConfigError, NotFittedError


def wilson(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n <= 0:
        return 0.0, 1.0
    z = {0.9: 1.6449, 0.95: 1.96, 0.99: 2.5758}.get(confidence)
    if z is None:
        from statistics import NormalDist

        z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = max(0.0, mid - half), min(1.0, mid + half)
    return (0.0 if k <= 0 else lo), (1.0 if k >= n else hi)  # exact at the ends, not 0.9999...


class LSAFeaturizer(TransformerMixin, BaseEstimator):
    """TF-IDF reduced by truncated SVD and L2-normalised: a cheap dense text representation."""

    def __init__(self, n_components: int = 100):
        self.n_components = n_components

    def fit(self, X, y=None):
        # float32 and n-grams seen twice: the SVD's working memory drops from ~85 MB to ~27 MB on
        # Banking77, and the clusters only need the common directions
        self.tfidf_ = TfidfVectorizer(
            sublinear_tf=True, ngram_range=(1, 2), min_df=2 if len(X) >= 100 else 1, dtype=np.float32
        ).fit(list(X))
        m = self.tfidf_.transform(list(X))
        k = max(1, min(self.n_components, m.shape[1] - 1, m.shape[0] - 1))
        self.svd_ = TruncatedSVD(n_components=k, random_state=0).fit(m)
        return self

    def transform(self, X):
        if not hasattr(self, "svd_"):
            raise NotFittedError("LSAFeaturizer is not fitted yet")
        return normalize(self.svd_.transform(self.tfidf_.transform(list(X))))


class Regions(BaseEstimator):
    """Class and cluster regions with the LM's accuracy in each. ``featurizer``: "tfidf", "blackbox"
    (the inputs are already embeddings) or any scikit-learn transformer of texts."""

    def __init__(self, n_clusters: int = 8, featurizer="tfidf", confidence: float = 0.95, random_state: int = 0):
        self.n_clusters, self.featurizer = n_clusters, featurizer
        self.confidence, self.random_state = confidence, random_state

    def _features(self, X):
        if self.featurizer_ is None:  # float32, as the box sent them: half the memory of a float64 copy
            return normalize(np.asarray(X, dtype=np.float32))
        return self.featurizer_.transform(X)

    def fit(self, X, y, lm_correct):
        y, lm_correct = np.asarray(y, dtype=int), np.asarray(lm_correct, dtype=float)
        if self.featurizer == "blackbox":
            self.featurizer_ = None
        elif self.featurizer == "tfidf":
            self.featurizer_ = LSAFeaturizer().fit(X)
        elif hasattr(self.featurizer, "transform"):
            self.featurizer_ = clone(self.featurizer).fit(list(X))
        else:
            raise ConfigError(f"featurizer must be 'tfidf', 'blackbox' or a transformer, got {self.featurizer!r}")
        feats = self._features(X)
        k = max(1, min(self.n_clusters, len(y) // 10 or 1))
        # copy_x=False: k-means centres our own fresh matrix in place (and restores it) instead
        # of copying it (14 MB for 9,000 embeddings)
        self.kmeans_ = KMeans(n_clusters=k, n_init=3, copy_x=False, random_state=self.random_state).fit(feats)
        clusters = self.kmeans_.labels_
        self.num_classes_ = int(y.max()) + 1
        self.prior_ = float(lm_correct.mean()) if len(lm_correct) else 0.5
        # (region kind, id) -> [LM correct count, size]
        self.class_n_ = np.bincount(y, minlength=self.num_classes_).astype(float)
        self.class_k_ = np.bincount(y, weights=lm_correct, minlength=self.num_classes_)
        self.cluster_n_ = np.bincount(clusters, minlength=k).astype(float)
        self.cluster_k_ = np.bincount(clusters, weights=lm_correct, minlength=k)
        self.underfit_class_ = np.zeros(self.num_classes_, dtype=bool)
        self.underfit_cluster_ = np.zeros(k, dtype=bool)
        self.table_: list[dict] = []
        return self

    def assign(self, X) -> np.ndarray:
        if not hasattr(self, "kmeans_"):
            raise NotFittedError("Regions is not fitted yet")
        return self.kmeans_.predict(self._features(X))

    def mark(self, y, clusters, ssm_correct, label_names=None) -> Regions:
        """Flag underfit regions given the SSM's out-of-fold correctness; build the report table."""
        y, clusters, ssm_correct = np.asarray(y), np.asarray(clusters), np.asarray(ssm_correct, dtype=float)
        rows = []
        for kind, ids, ks, ns, flags in (
            ("class", y, self.class_k_, self.class_n_, self.underfit_class_),
            ("cluster", clusters, self.cluster_k_, self.cluster_n_, self.underfit_cluster_),
        ):
            for r in range(len(ns)):
                if ns[r] == 0:
                    continue
                lo, hi = wilson(ks[r], ns[r], self.confidence)
                ssm = float(ssm_correct[ids == r].mean())
                flags[r] = hi < ssm - 1e-9
                name = label_names[r] if kind == "class" and label_names else f"cluster {r}"
                rows.append(
                    {
                        "kind": kind,
                        "region": int(r),
                        "name": name,
                        "n": int(ns[r]),
                        "lm_accuracy": float(ks[r] / ns[r]),
                        "lm_low": float(lo),
                        "lm_high": float(hi),
                        "ssm_cv_accuracy": ssm,
                        "underfit": bool(flags[r]),
                    }
                )
        self.table_ = rows
        return self

    def weights(self, y, clusters, emphasis: float) -> np.ndarray:
        """1 everywhere, 1 + ``emphasis`` in underfit regions (class or cluster)."""
        under = self.underfit_class_[np.asarray(y)] | self.underfit_cluster_[np.asarray(clusters)]
        return 1.0 + emphasis * under.astype(float)

    def lm_accuracy(self, classes, clusters, own_y=None, own_correct=None, strength: float = 2.0) -> np.ndarray:
        """(N, 2) smoothed LM accuracy of each row's class region and cluster. For training rows
        pass ``own_y``/``own_correct``: each row's own outcome is left out (no leak into the router)."""
        classes, clusters = np.asarray(classes, dtype=int), np.asarray(clusters, dtype=int)
        a, b = strength * self.prior_, strength * (1 - self.prior_)
        kc, nc = self.class_k_[classes].copy(), self.class_n_[classes].copy()
        kk, nk = self.cluster_k_[clusters].copy(), self.cluster_n_[clusters].copy()
        if own_y is not None:
            own = np.asarray(own_correct, dtype=float)
            same = np.asarray(own_y) == classes
            kc, nc = kc - own * same, nc - same
            kk, nk = kk - own, nk - 1
        return np.column_stack([(kc + a) / (nc + a + b), (kk + a) / (nk + a + b)])

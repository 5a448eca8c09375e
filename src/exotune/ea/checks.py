"""What a loaded EA folder holds, checked after skops built it: a file may hold only trusted
types and still be hostile (a threshold that is a string, a gate swapped for another trusted
estimator, arrays of the wrong length, classes that are not the adapter's labels). Each check
raises an ``ArtifactError`` naming the file and the field."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from exotune.ea.regions import LSAFeaturizer, Regions
from exotune.ea.router import FULL_FEATURES, GATE_FEATURES, POLICIES, Router
from exotune.errors import ArtifactError

MAX_SSMS = 256  # global SSMs plus per-region ones: a handful in practice


def number(value, where: str, low: float = -math.inf, high: float = math.inf, infinite: bool = False) -> float:
    """``value`` as a float: a real number (not a bool, not a string), not NaN, finite unless
    ``infinite``, within [low, high]."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = float(value)
        ok = not math.isnan(value) and (infinite or math.isfinite(value)) and low <= value <= high
    if not ok:
        raise ArtifactError(
            f"{where} must be a number in [{low}, {high}]{'' if infinite else ' (finite)'}, got {value!r:.80}"
        )
    return value


def _array(value, where: str, shape: tuple, kind: str = "f") -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype.kind not in kind:
        got = f"{type(value).__name__} {getattr(value, 'shape', '')} {getattr(value, 'dtype', '')}"
        raise ArtifactError(f"{where} must be an array of shape {shape} and kind {kind!r}, got {got}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ArtifactError(f"{where} holds NaN or infinite values")
    return value


def _binary_model(model, where: str, width: int) -> None:
    """A router's gate or chooser: a constant probability, or StandardScaler + LogisticRegression
    over ``width`` features with classes [0, 1]."""
    if isinstance(model, (float, int, np.floating)) and not isinstance(model, bool):
        number(model, where, 0.0, 1.0)
        return
    steps = getattr(model, "steps", None) if type(model) is Pipeline else None
    if (
        not steps
        or len(steps) != 2
        or type(steps[0][1]) is not StandardScaler
        or type(steps[1][1]) is not LogisticRegression
    ):
        raise ArtifactError(
            f"{where} must be a probability or StandardScaler + LogisticRegression, got {type(model).__name__}"
        )
    scaler, clf = steps[0][1], steps[1][1]
    for name in ("mean_", "scale_"):
        _array(getattr(scaler, name, None), f"{where}.{name}", (width,))
    _array(getattr(clf, "coef_", None), f"{where}.coef_", (1, width))
    _array(getattr(clf, "intercept_", None), f"{where}.intercept_", (1,))
    if list(getattr(clf, "classes_", [])) != [0, 1]:
        raise ArtifactError(f"{where}.classes_ must be [0, 1], got {getattr(clf, 'classes_', None)!r:.80}")


def check_router(router, file: Path) -> None:
    if type(router) is not Router:
        raise ArtifactError(f"{file} must hold a Router, got {type(router).__name__}")
    if router.policy not in POLICIES:
        raise ArtifactError(f"{file}: policy must be one of {POLICIES}, got {router.policy!r:.80}")
    number(router.budget, f"{file}: budget", 0.0, 1.0)
    number(getattr(router, "threshold_", None), f"{file}: threshold_", infinite=True)
    number(router.trust_lm_, f"{file}: trust_lm_", 0.0, 1.0)
    if hasattr(router, "share_"):
        number(router.share_, f"{file}: share_", 0.0, 1.0)
    _binary_model(getattr(router, "gate_", None), f"{file}: gate_", len(GATE_FEATURES))
    _binary_model(getattr(router, "chooser_", None), f"{file}: chooser_", len(FULL_FEATURES))


def check_regions(regions, file: Path, n_labels: int) -> None:
    if type(regions) is not Regions:
        raise ArtifactError(f"{file} must hold a Regions, got {type(regions).__name__}")
    featurizer = getattr(regions, "featurizer_", None)
    if featurizer is not None and not (
        isinstance(featurizer, LSAFeaturizer) or callable(getattr(featurizer, "transform", None))
    ):
        raise ArtifactError(f"{file}: featurizer_ must be a fitted transformer, got {type(featurizer).__name__}")
    if (featurizer is None) != (regions.featurizer == "blackbox"):
        raise ArtifactError(f"{file}: featurizer_ does not match featurizer={regions.featurizer!r:.80}")
    kmeans = getattr(regions, "kmeans_", None)
    if type(kmeans) is not KMeans or not isinstance(getattr(kmeans, "cluster_centers_", None), np.ndarray):
        raise ArtifactError(f"{file}: kmeans_ must be a fitted KMeans, got {type(kmeans).__name__}")
    k = _array(kmeans.cluster_centers_, f"{file}: kmeans_.cluster_centers_", kmeans.cluster_centers_.shape).shape[0]
    c = getattr(regions, "num_classes_", None)
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 1 <= c <= n_labels:
        raise ArtifactError(f"{file}: num_classes_ must be an integer in [1, {n_labels}], got {c!r:.80}")
    for name, size, kind in (
        ("class_n_", c, "f"),
        ("class_k_", c, "f"),
        ("cluster_n_", k, "f"),
        ("cluster_k_", k, "f"),
        ("underfit_class_", c, "b"),
        ("underfit_cluster_", k, "b"),
    ):
        _array(getattr(regions, name, None), f"{file}: {name}", (int(size),), kind)
    number(getattr(regions, "prior_", None), f"{file}: prior_", 0.0, 1.0)


def check_ssm(ssm, file: Path, n_labels: int) -> None:
    if not callable(getattr(ssm, "predict_proba", None)) or type(getattr(ssm, "model_", None)) is not Pipeline:
        raise ArtifactError(f"{file} must hold a fitted SSM, got {type(ssm).__name__}")
    classes = getattr(ssm, "classes_", None)
    if (
        not isinstance(classes, np.ndarray)
        or classes.ndim != 1
        or classes.dtype.kind not in "iu"
        or not len(classes)
        or classes.min() < 0
        or classes.max() >= n_labels
        or len(np.unique(classes)) != len(classes)
    ):
        raise ArtifactError(f"{file}: classes_ must be distinct label indices in [0, {n_labels}), got {classes!r:.80}")
    head_classes = getattr(ssm.model_[-1], "classes_", None)
    if head_classes is None or not np.array_equal(np.asarray(head_classes), classes):
        raise ArtifactError(f"{file}: the classifier's classes_ differ from the SSM's")


def check_config(config: dict, file: Path) -> None:
    """The parts of ea_config.json that decide what is loaded and how many."""
    labels = config["label_names"]
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise ArtifactError(f"{file}: label_names must be a list of at least 2 strings, got {labels!r:.80}")
    n = config["n_global_ssms"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SSMS:
        raise ArtifactError(f"{file}: n_global_ssms must be an integer in [1, {MAX_SSMS}], got {n!r:.80}")
    special = config["special_regions"]
    if (
        not isinstance(special, list)
        or len(special) > MAX_SSMS
        or not all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r < 1 << 20 for r in special)
    ):
        raise ArtifactError(f"{file}: special_regions must be a list of region numbers, got {special!r:.80}")
    params = config["params"]
    if not isinstance(params, dict):
        raise ArtifactError(f"{file}: params must be a JSON object, got {params!r:.80}")
    if params.get("policy") not in POLICIES:
        raise ArtifactError(f"{file}: params.policy must be one of {POLICIES}, got {params.get('policy')!r:.80}")
    number(params.get("budget"), f"{file}: params.budget", 0.0, 1.0)
    if not isinstance(params.get("ssms"), list) or not params["ssms"]:
        raise ArtifactError(f"{file}: params.ssms must be a non-empty list, got {params.get('ssms')!r:.80}")
    number(config["router"]["threshold"], f"{file}: router.threshold", infinite=True)

"""Save and load an EasyAdapter: JSON config, skops for scikit-learn parts; no pickle.

Loading checks every type in a skops file against the trusted ones (basic types, exotune's parts,
the registered SSMs, plus what the caller adds with ``trusted``) and refuses anything else,
instead of trusting all.
"""

from __future__ import annotations

import json
from pathlib import Path

from exotune import __version__
from exotune.artifacts import read_json, saved_config, verify_folder, write_folder
from exotune.ea.checks import check_config, check_regions, check_router, check_ssm
from exotune.ea.regions import LSAFeaturizer, Regions
from exotune.ea.router import Router
from exotune.ea.selection import check_selection
from exotune.ea.ssm import SSMS, SklearnSSM
from exotune.errors import ArtifactError

CONFIG = "ea_config.json"
TYPE = "easy-adaptation"

#: plain types the EA parts are made of, beyond skops' defaults
BASIC_TYPES = frozenset(
    {
        "builtins.float",
        "builtins.int",
        "builtins.str",
        "builtins.dict",
        "builtins.list",
        "builtins.tuple",
        "builtins.set",
        "builtins.bool",
        "collections.defaultdict",
        "collections.OrderedDict",
        "numpy.dtype",
        "numpy.float64",
        "numpy.int64",
        "numpy.int32",
        "numpy.ndarray",
        "numpy.bool_",
        "numpy.random.mtrand.RandomState",
        "sklearn.utils._bunch.Bunch",
        "scipy.sparse._csr.csr_matrix",
    }
)
#: exotune's own parts of a saved adapter, beside the registered SSMs
PARTS = (Router, Regions, LSAFeaturizer, SklearnSSM)


def type_name(cls: type) -> str:
    """A class's name as skops lists it: ``module.QualifiedName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def trusted_types() -> frozenset[str]:
    """The types a folder may hold without being named in ``trusted``: the basic ones, exotune's
    parts and every registered SSM class (registering a class is trusting it), as of now."""
    return BASIC_TYPES | {type_name(c) for c in (*PARTS, *SSMS.values())}


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return f"custom:{type(value).__name__}"  # a custom SSM / featurizer: its fitted form is in the skops files


def save(model, path, extra_files: dict[str, dict] | None = None) -> Path:
    import skops.io as sio

    system = model.ssms_system_
    files = {}
    for i, m in enumerate(system["global"]):
        files[f"ssm_{i}.skops"] = sio.dumps(m)
    for region, m in system["special"].items():
        files[f"ssm_region_{region}.skops"] = sio.dumps(m)
    files["router.skops"] = sio.dumps(model.router_)
    files["regions.skops"] = sio.dumps(model.regions_)
    config = {
        "type": TYPE,
        "version": __version__,
        "access": "black",
        "params": {k: _jsonable(getattr(model, k)) for k in model.saved_params()},
        "label_names": model.label_names_,
        "n_global_ssms": len(system["global"]),
        "special_regions": sorted(int(r) for r in system["special"]),
        "lm": model.lm.describe() if model.lm is not None else None,
        "val_accuracy": model.val_accuracy_,
        "regions": model.regions_.table_,
        "ssm_selection": getattr(model, "ssm_selection_", None),  # which SSMs were kept, and why
        "router": {
            "threshold": float(model.router_.threshold_),
            "share": model.router_.share_,
            "trust_lm": model.router_.trust_lm_,
            "val_curve": model.router_.val_curve_,
        },
    }
    return write_folder(path, {**(extra_files or {}), CONFIG: config, **files})


def _load_skops(path: Path, extra: frozenset):
    import skops.io as sio

    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    try:
        types = sio.get_untrusted_types(file=path)
    except Exception as err:  # skops raises many kinds on a damaged zip
        raise ArtifactError(f"{path} is not a readable skops file ({err})") from err
    bad = sorted(set(types) - trusted_types() - extra)
    if bad:
        raise ArtifactError(
            f"{path} holds types that are not trusted: {bad}; if you wrote this file, pass them in trusted=[...]"
        )
    try:
        return sio.load(path, trusted=list(types))
    except Exception as err:
        raise ArtifactError(f"{path} could not be loaded ({err})") from err


def load(cls, path, lm=None, embedder=None, trusted=()):
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path} is not an EasyAdapter folder (missing)")
    verify_folder(path)
    config = read_json(path / CONFIG)
    if config.get("type") != TYPE:
        raise ArtifactError(f"{path / CONFIG} is a {config.get('type')!r} artifact, not {TYPE!r}")
    with saved_config(path / CONFIG):
        check_config(config, path / CONFIG)
    extra = frozenset(trusted)
    n_labels = len(config["label_names"])
    params = {k: v for k, v in config["params"].items() if k in cls.saved_params()}
    ssms = [_load_skops(path / f"ssm_{i}.skops", extra) for i in range(config["n_global_ssms"])]
    special = {r: _load_skops(path / f"ssm_region_{r}.skops", extra) for r in config["special_regions"]}
    for name, m in [
        *((f"ssm_{i}.skops", m) for i, m in enumerate(ssms)),
        *((f"ssm_region_{r}.skops", m) for r, m in special.items()),
    ]:
        check_ssm(m, path / name, n_labels)
    router, regions = _load_skops(path / "router.skops", extra), _load_skops(path / "regions.skops", extra)
    check_router(router, path / "router.skops")
    check_regions(regions, path / "regions.skops", n_labels)
    if router.threshold_ != float(config["router"]["threshold"]):  # inf round-trips as Infinity
        raise ArtifactError(f"{path}: router.skops does not match {CONFIG}")
    if any(isinstance(s, str) and s.startswith("custom:") for s in params["ssms"]):
        params["ssms"] = tuple(ssms)  # refitting would clone the loaded SSMs
    if isinstance(params.get("featurizer"), str) and params["featurizer"].startswith("custom:"):
        params["featurizer"] = "tfidf"
    with saved_config(path / CONFIG):
        model = cls(lm=lm, embedder=embedder, **{**params, "ssms": tuple(params["ssms"])})
    model.label_names_ = list(config["label_names"])
    model.ssms_system_ = {"global": ssms, "special": special}
    model.ssms_ = ssms
    model.router_, model.regions_ = router, regions
    model.val_accuracy_ = config.get("val_accuracy", {})
    model.ssm_selection_ = check_selection(config.get("ssm_selection"), path / CONFIG)
    return model


def describe(path) -> str:
    return json.dumps(read_json(Path(path) / CONFIG), indent=2)

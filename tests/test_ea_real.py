"""EA on a Banking77 sample with a plain-callable "LM" right 60% of the time (marked ``real``)."""

from __future__ import annotations

import hashlib

import pytest

from exotune.data import load_dataset
from exotune.ea import CallableClient, EasyAdapter

from .ea_fakes import one_blas_thread  # noqa: F401

pytestmark = pytest.mark.real


def test_ea_beats_lm_and_ssm_on_banking77(shared_data):
    train = load_dataset("banking77", "train", shared_data)
    test = load_dataset("banking77", "test", shared_data).head(600, seed=0)
    tr, val = train.split(0.1, seed=0)
    tr, val = tr.head(1500, seed=0), val.head(400, seed=0)
    gold = dict(zip(train.texts + test.texts, train.labels + test.labels, strict=True))

    def lm(text, labels):  # deterministic by hash: right 60% of the time, else a random label
        h = int(hashlib.sha256(text.encode()).hexdigest(), 16)
        return labels[gold[text]] if h % 100 < 60 else labels[h % len(labels)]

    model = EasyAdapter(CallableClient(lm), cv_folds=3, budget=0.5).fit(tr, val)
    report = model.evaluate(test)
    lm_acc, ssm_acc, ea_acc = (report[k]["accuracy"] for k in ("lm", "ssm", "ea"))
    print(f"LM {lm_acc:.3f}  SSM {ssm_acc:.3f}  EA {ea_acc:.3f}  LM-call share {report['lm_call_share']:.2f}")
    assert 0.5 < lm_acc < 0.7
    assert ea_acc >= max(lm_acc, ssm_acc) - 0.01
    assert report["lm_call_share"] <= 0.5 + 0.05

"""The end of every ``exotune train``: fit, then rank 0 writes ``summary.json`` and prints it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def fit_and_report(args, model, train, val, train_cfg, test: Callable[[], dict] | None = None) -> int:
    """Train ``model`` into ``--output-dir`` (resuming with ``--resume``); ``test`` gives the
    test split's metrics for the summary. Under torchrun only rank 0 reports and writes."""
    from exotune import distributed
    from exotune.train import Trainer

    out = Path(args.output_dir)
    result = Trainer(train_cfg, out, progress=not args.quiet).fit(model, train, val, resume=args.resume)
    if not distributed.is_main():
        return 0
    summary = result.summary()
    if test is not None:
        summary["test"] = test()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0

"""The run folder of ``exotune train``: refused when it holds a run (unless resumed or started
over), and what its model card says about the data."""

from __future__ import annotations

import shutil
from pathlib import Path

from exotune.errors import ConfigError

RUN_ENTRIES = ("best", "last", "logs", "tensorboard", "summary.json")  # what train writes into OUTPUT_DIR


def check_output_dir(args) -> None:
    """A run folder that holds anything is refused unless the run resumes (``--resume``) or
    starts over (``--overwrite``: the previous run's entries are removed, other files kept);
    checked before any model loads."""
    from exotune import distributed
    from exotune.callbacks import check_report_to

    check_report_to(getattr(args, "report_to", None) or ())
    out = Path(args.output_dir)
    if args.resume or not out.is_dir() or not any(out.iterdir()):
        return
    if not getattr(args, "overwrite", False):
        raise ConfigError(f"--output-dir {out} is not empty; --resume continues the run in it, --overwrite starts over")
    if distributed.is_main():
        for name in RUN_ENTRIES:
            entry = out / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()


def data_info(args, train, val) -> dict:
    """What a model card says about the data: its name and the sizes of train and validation."""
    source = next(
        (getattr(args, k, None) for k in ("dataset", "file", "images", "videos", "sketches") if getattr(args, k, None)),
        None,
    )
    info = {
        "name": Path(source).name if source and getattr(args, "dataset", None) is None else source,
        "train_examples": len(train),
        "validation_examples": len(val),
    }
    if getattr(args, "val_file", None):
        info["validation_file"] = Path(args.val_file).name
    return {k: v for k, v in info.items() if v is not None}

"""Model cards: the ``README.md`` every adapter and EA folder carries, in the layout of a
Hugging Face model repository (YAML front matter, then Markdown), so a folder can be uploaded
as is. The card is rendered from the folder's config (what it adapts, access level, box
fingerprint, library version) and from what the run knows (``run_info``: the command, the
data, the metrics), which the CLI and the Trainer fill in while a run lasts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from exotune import __version__

CARD_NAME = "README.md"
# Hugging Face's id of the packaged default backbone (what ``base_model`` names)
HUB_IDS = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
PIPELINES = {
    "classification": "text-classification",
    "retrieval": "sentence-similarity",
    "image-classification": "image-classification",
}
_RUN: ContextVar[dict | None] = ContextVar("exotune_run_info", default=None)


def run_info() -> dict:
    """What the current run has said about itself (a copy)."""
    return dict(_RUN.get() or {})


@contextmanager
def card_context(**info) -> Iterator[None]:
    """Inside, cards written carry ``info`` (merged over the outer context's)."""
    token = _RUN.set({**run_info(), **info})
    try:
        yield
    finally:
        _RUN.reset(token)


def update_run_info(**info) -> None:
    """Add to the current run's information (e.g. the Trainer's metrics at its best epoch)."""
    _RUN.set({**run_info(), **info})


def card_for(files: dict) -> str | None:
    """The card of a folder about to hold ``files``: rendered from its config (a JSON object
    under a ``*config.json`` name with a ``type``), or None when it holds none (a checkpoint)."""
    config = next(
        (
            v
            for k, v in files.items()
            if k.endswith("config.json") and isinstance(v, dict) and isinstance(v.get("type"), str)
        ),
        None,
    )
    return None if config is None else model_card(config, run_info())


def _yaml(value) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON scalar or flow list is valid YAML


def _task_of(config: dict) -> str:
    task = config.get("task")
    if isinstance(task, dict) and isinstance(task.get("type"), str):
        return task["type"]
    return "classification" if config.get("label_names") else str(config.get("type"))


def _adapts(config: dict) -> list[tuple[str, str]]:
    """(field, value) rows on what the folder adapts, from whatever its config records."""
    rows = [("adapter type", str(config.get("type"))), ("access level", str(config.get("access", "?")))]
    for key in sorted(k for k in config if k.endswith("_fingerprint")):
        rows.append((key.replace("_", " "), f"`{config[key]}`"))
        spec = config.get(key.replace("_fingerprint", "_spec"))
        if isinstance(spec, dict):
            rows.append((key.replace("_fingerprint", " digest").replace("_", " "), f"`{spec.get('model_digest')}`"))
            rows.append(
                (
                    key.replace("_fingerprint", " output").replace("_", " "),
                    f"{spec.get('modality')}, {spec.get('output_dim')} dimensions",
                )
            )
        source = config.get(key.replace("_fingerprint", "_source"))
        if isinstance(source, dict) and source:
            rows.append(
                (
                    key.replace("_fingerprint", " source").replace("_", " "),
                    ", ".join(f"{k}: {v}" for k, v in source.items()),
                )
            )
    dga = config.get("dga")
    if isinstance(dga, dict):
        for side in ("input_adapter", "output_adapter", "entry_tokens"):
            part = dga.get(side)
            if isinstance(part, dict):
                rows.append(
                    (
                        side.replace("_", " "),
                        str(part.get("type") or part.get("name") or json.dumps(part, sort_keys=True)[:80]),
                    )
                )
    if isinstance(config.get("whitebox"), dict):
        rows.append(("white-box method", str(config["whitebox"].get("mode"))))
        rows.append(("base model", str(config.get("base_model"))))
    if isinstance(config.get("lm"), dict):
        rows.append(
            (
                "large model (API)",
                ", ".join(f"{k}: {v}" for k, v in sorted(config["lm"].items()) if isinstance(v, (str, int, float)))[
                    :200
                ],
            )
        )
    labels = (config.get("task") or {}).get("labels") if isinstance(config.get("task"), dict) else None
    labels = labels or config.get("label_names")
    if isinstance(labels, list):
        rows.append(
            ("classes", f"{len(labels)}: " + ", ".join(map(str, labels[:20])) + (" ..." if len(labels) > 20 else ""))
        )
    return rows


def _metrics(config: dict, info: dict) -> dict[str, dict]:
    metrics = {k: v for k, v in (info.get("metrics") or {}).items() if isinstance(v, dict)}
    if "val_accuracy" in config and "validation" not in metrics:  # an EA folder records its own
        metrics["validation"] = {"accuracy": config["val_accuracy"]}
    return metrics


def model_card(config: dict, info: dict | None = None) -> str:
    """A model card for an adapter config; ``info``: command, data and metrics of the run."""
    info = info or {}
    task = _task_of(config)
    version = config.get("library_version") or config.get("version") or __version__
    front = {"library_name": "exotune", "tags": ["exotune", str(config.get("type")), str(config.get("access")), task]}
    if task in PIPELINES:
        front["pipeline_tag"] = PIPELINES[task]
    source = config.get("box_source")
    backbone = source.get("backbone") if isinstance(source, dict) else None
    if backbone in HUB_IDS or (isinstance(backbone, str) and backbone.count("/") == 1 and not backbone.startswith("/")):
        front["base_model"] = HUB_IDS.get(backbone, backbone)
    data = info.get("data") or {}
    if data.get("name"):
        front["datasets"] = [str(data["name"])]
    metrics = _metrics(config, info)
    names = sorted({m for split in metrics.values() for m in split})
    if names:
        front["metrics"] = names
    lines = [
        "---",
        *(f"{k}: {_yaml(v)}" for k, v in front.items()),
        "---",
        "",
        f"# {config.get('type')} adapter ({task})",
        "",
        "An adapter trained with exotune from outside a hidden model: it holds only what was trained, "
        "never the model's weights. It loads against the same box (the fingerprint below is checked).",
        "",
        "## What it adapts",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in _adapts(config)]
    lines += ["", "## Data", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in data.items()] or ["- not recorded"]
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| split | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for split, values in metrics.items():
            cells = [f"{values[n]:.4f}" if isinstance(values.get(n), float) else str(values.get(n, "")) for n in names]
            shown = (
                f"{split} (best epoch {info['best_epoch']})"
                if split == "validation" and info.get("best_epoch")
                else split
            )
            lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    else:
        lines.append("- not recorded")
    lines += ["", "## Training command", ""]
    lines += ["```bash", info["command"], "```"] if info.get("command") else ["- not recorded (trained from Python)"]
    lines += ["", "## Library", "", f"exotune {version}", ""]
    return "\n".join(lines)

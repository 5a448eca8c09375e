"""``exotune ea fit | predict | report``: argument groups and command bodies."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from exotune.cards import card_context
from exotune.cli.boxes import DEVICE_CHOICES, PRECISIONS
from exotune.cli.common import seed_number
from exotune.cli.data import add_data_args, add_split_files_args, add_texts_args, labelled_splits, load_data, read_texts
from exotune.cli.runs import data_info
from exotune.errors import ArtifactError, ConfigError

LM_KINDS = ("openai-chat", "openai-embeddings", "served-box", "box")
RETURNS = ("labels", "scores", "embeddings")
LM_FILE = "lm.json"  # how the CLI reached the LM: kind, URL, model, answer form (never a key, never a path)
LM_SAVED = ("lm", "base_url", "model", "returns", "label_template")
#: the environment variable that holds the secret, per kind: only ever from the user's flag
DEFAULT_KEY_ENV = {
    "served-box": "EXOTUNE_TOKEN",
    "openai-chat": "OPENAI_API_KEY",
    "openai-embeddings": "OPENAI_API_KEY",
}


def _add_lm_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("the black-box LM" + ("" if required else " (default: as at fit time)"))
    g.add_argument(
        "--lm",
        choices=LM_KINDS,
        required=required,
        help="what kind of API serves the LM; box: a text box loaded here (--model), answering as a "
        "served box at level black would",
    )
    g.add_argument(
        "--base-url",
        help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1; "
        "served-box: the root of an 'exotune serve', e.g. http://127.0.0.1:8000",
    )
    g.add_argument(
        "--model",
        help="model name as the server knows it (not for served-box); box: a local folder "
        "or model id (default: the packaged all-MiniLM-L6-v2)",
    )
    g.add_argument(
        "--returns", choices=RETURNS, default=None, help="served-box, box: what the box answers with (default: labels)"
    )
    g.add_argument(
        "--device",
        default="auto",
        help=f"box: where it runs, {DEVICE_CHOICES} (default: auto, a CUDA GPU when there is one); a "
        "served box runs where its owner chose",
    )
    g.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="box: the probe's box calls in fp32 or under bf16 / fp16 autocast (default: fp32); a "
        "served box's is its owner's (exotune serve --precision)",
    )
    g.add_argument(
        "--api-key-env",
        default=None,
        help="environment variable holding the API key or bearer token "
        "(default: OPENAI_API_KEY; served-box: EXOTUNE_TOKEN)",
    )
    g.add_argument("--cache", default=None, help="SQLite response cache (default: OUTPUT_DIR.responses.sqlite)")
    g.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="requests in flight at once (default: 4; served-box: 1, it computes one batch at a time)",
    )
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default: 60)")
    g.add_argument("--max-retries", type=int, default=4, help="retries on 429/5xx/timeouts (default: 4)")
    if not required:
        g.add_argument(
            "--trust-folder-lm",
            action="store_true",
            help="connect to the base URL and model the adapter's lm.json names (a folder someone "
            "else made is not followed otherwise; the key's variable and the cache path are "
            "never taken from it)",
        )


HELP = "Easy Adaptation: a black-box LM plus small local models and a router"


def add_parser(sub) -> None:
    from exotune.ea.router import POLICIES
    from exotune.ea.ssm import SSMS

    ea = sub.add_parser("ea", help=HELP)
    cmds = ea.add_subparsers(dest="ea_command", required=True, metavar="EA_COMMAND")
    p = cmds.add_parser("fit", help="probe the LM, train SSMs and the router, save the adapter")
    add_data_args(p)
    add_split_files_args(p)
    _add_lm_args(p, required=True)
    p.add_argument("--output-dir", required=True, help="where the EA adapter goes")
    p.add_argument(
        "--label-template",
        default="{}",
        help="text a class name is shown to the LM as, after '_' becomes ' ' (card_arrival -> "
        "'card arrival'), e.g. 'a question about {}' (default: '{}'); kept for predict and report",
    )
    p.add_argument(
        "--ssm", nargs="+", default=["tfidf-lr"], choices=sorted(SSMS), help="small models (default: tfidf-lr)"
    )
    p.add_argument(
        "--policy",
        default="ssm-first",
        choices=POLICIES,
        help="who answers first: the small models (the LM only where they are unsure) or the LM",
    )
    p.add_argument("--budget", type=float, default=0.3, help="largest share of inputs sent to the LM (default: 0.3)")
    p.add_argument("--clusters", type=int, default=8, help="k-means regions (default: 8)")
    p.add_argument(
        "--cv-folds",
        type=int,
        default=3,
        help="folds of the out-of-fold predictions the router learns from (default: 3)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="validation share carved from train when no --val-file is given (default: 0.1)",
    )
    p.add_argument("--max-train", type=int, default=None, help="train on a random sample of this many examples")
    p.add_argument("--seed", type=seed_number, default=0, help="seed of the split, the sampling and the models")
    p = cmds.add_parser("predict", help="label texts with a saved EA adapter")
    p.add_argument("--adapter", required=True, help="folder written by 'ea fit'")
    _add_lm_args(p, required=False)
    add_texts_args(p)
    p = cmds.add_parser("report", help="LM alone vs SSM alone vs EA, regions table, cost-quality curve")
    p.add_argument("--adapter", required=True, help="folder written by 'ea fit'")
    _add_lm_args(p, required=False)
    add_data_args(p, split_default="test")
    p.add_argument("--out-dir", default=None, help="where report.json/.md/.png go (default: ADAPTER-report)")
    p.add_argument("--no-compare", action="store_true", help="do not ask the LM about every input")


def _folder_lm(adapter: Path) -> dict:
    """What ``adapter/lm.json`` (checked with the folder) says about the LM, validated."""
    from exotune.artifacts import read_json

    file = adapter / LM_FILE
    if not file.is_file():
        return {}
    saved = read_json(file, max_bytes=1 << 16)
    for key, allowed in (("lm", LM_KINDS), ("returns", RETURNS)):
        if saved.get(key) is not None and saved[key] not in allowed:
            raise ArtifactError(f"{file}: {key} must be one of {allowed}, got {saved[key]!r:.80}")
    for key in ("base_url", "model"):
        value = saved.get(key)
        if value is not None and (not isinstance(value, str) or not value or len(value) > 2048):
            raise ArtifactError(f"{file}: {key} must be a non-empty string, got {value!r:.80}")
    template = saved.get("label_template")
    if template is not None and (not isinstance(template, str) or "{}" not in template or len(template) > 512):
        raise ArtifactError(f"{file}: label_template must be a short string holding '{{}}', got {template!r:.80}")
    if saved.get("base_url") and not saved["base_url"].startswith(("http://", "https://")):
        raise ArtifactError(f"{file}: base_url must be an http(s) URL, got {saved['base_url']!r:.80}")
    return {k: saved.get(k) for k in LM_SAVED}


def _lm_settings(args, adapter: Path | None) -> dict:
    """The LM's settings: the user's flags first. From an adapter's lm.json come the kind of API,
    its answer form and the label template; its base URL and model only with
    ``--trust-folder-lm``; the secret's variable and the cache path never."""
    saved = _folder_lm(adapter) if adapter else {}
    cfg = {k: getattr(args, k, None) for k in (*LM_SAVED, "api_key_env", "cache")}
    for key in ("lm", "returns", "label_template"):
        cfg[key] = cfg[key] or saved.get(key)
    asked = {k: saved[k] for k in ("base_url", "model") if cfg[k] is None and saved.get(k)}
    if asked and not getattr(args, "trust_folder_lm", False):
        shown = ", ".join(f"{k}={v!r}" for k, v in asked.items())
        raise ConfigError(
            f"{adapter / LM_FILE} asks to send the LM's requests with {shown} (lm: {cfg['lm']}); "
            "a folder is not followed silently: pass --trust-folder-lm to accept that, or give "
            "--base-url/--model yourself (the API key is always read from --api-key-env, "
            f"default {DEFAULT_KEY_ENV.get(cfg['lm'], 'OPENAI_API_KEY')}, never from the folder)"
        )
    cfg.update(asked)
    if cfg["lm"] != "box" and (args.device != "auto" or args.precision != "fp32"):
        raise ConfigError(
            f"--device and --precision place a box loaded here (--lm box); --lm {cfg['lm']} computes "
            "where and how its owner chose (a served box: exotune serve --device, --precision)"
        )
    if cfg["lm"] == "box":
        if cfg["base_url"]:
            raise ConfigError("--lm box loads the box here (--model names it); --base-url is for a served one")
    elif cfg["lm"] == "served-box":
        if not cfg["base_url"]:
            raise ConfigError("--lm served-box needs --base-url (the root of an 'exotune serve')")
    elif not cfg["lm"] or not cfg["model"]:
        raise ConfigError("name the LM with --lm and --model (no lm.json beside the adapter to take them from)")
    return cfg


def make_client(cfg: dict, args):
    import os

    from exotune.ea.cache import ResponseCache
    from exotune.ea.clients import OpenAIChatClient, OpenAIEmbeddingClient, ServedBoxClient

    common = {
        "cache": ResponseCache(cfg["cache"]),
        "timeout": args.timeout,
        "max_retries": args.max_retries,
        "label_template": cfg["label_template"] or "{}",
    }
    if args.concurrency is not None:  # else each client's own default
        common["max_concurrency"] = args.concurrency
    if cfg["lm"] == "box":
        from exotune.boxes import load_box
        from exotune.devices import resolve_device

        resolve_device(args.device)  # a GPU that is not there is refused before the model loads
        box = load_box(cfg["model"], access="black", device=args.device, precision=args.precision)
        return ServedBoxClient(box=box, returns=cfg["returns"] or "labels", **common)
    if cfg["lm"] == "served-box":
        key_env = cfg["api_key_env"] or DEFAULT_KEY_ENV["served-box"]
        return ServedBoxClient(
            cfg["base_url"], os.environ.get(key_env), returns=cfg["returns"] or "labels", key_env=key_env, **common
        )
    cls = OpenAIChatClient if cfg["lm"] == "openai-chat" else OpenAIEmbeddingClient
    return cls(
        cfg["model"], base_url=cfg["base_url"], api_key_env=cfg["api_key_env"] or DEFAULT_KEY_ENV[cfg["lm"]], **common
    )


def rounded(value, digits: int = 4):
    """Floats (inside dicts too) to ``digits`` places: 0.30000000000000004 prints as 0.3."""
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    return round(value, digits) if isinstance(value, float) else value


def drop_if_unused(client, path: Path, existed: bool) -> None:
    """After a failed fit: remove the response cache this run created when it holds no answer
    (nothing was paid for); one holding answers is kept, and said so, for the next run."""
    cache = client.cache
    if existed or not path.exists():
        return
    held = len(cache)
    cache.close()
    if held:
        print(f"kept {held} paid answers in {path}: a re-run takes them from there", file=sys.stderr)
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def cmd_fit(args) -> int:
    from exotune.ea.model import EasyAdapter

    if args.images:
        raise ConfigError(
            "ea fit takes labelled texts (--dataset or --file); images are not supported at the black level yet"
        )
    out = Path(args.output_dir)
    args.cache = args.cache or str(out.with_name(out.name + ".responses.sqlite"))
    cfg = _lm_settings(args, None)
    train, val, test = labelled_splits(args, want_test=False)
    client, existed = make_client(cfg, args), Path(cfg["cache"]).exists()
    model = EasyAdapter(
        client,
        ssms=tuple(args.ssm),
        n_clusters=args.clusters,
        policy=args.policy,
        budget=args.budget,
        cv_folds=args.cv_folds,
        random_state=args.seed,
    )
    print(
        f"EA: probing {cfg['model'] or cfg['base_url']} on {len(train)} + {len(val)} examples, then training ...",
        file=sys.stderr,
    )
    try:
        model.fit(train, val)
    except BaseException:
        drop_if_unused(client, Path(cfg["cache"]), existed)
        raise
    with card_context(data=data_info(args, train, val)):  # what the model card says of the data
        model.save_pretrained(out, extra_files={LM_FILE: {k: cfg[k] for k in LM_SAVED}})  # checksummed with the rest
    summary = {
        "adapter": str(out),
        "val_accuracy": rounded(model.val_accuracy_),
        "lm_call_share": rounded(model.router_.share_),
        "fit_seconds": round(model.fit_seconds_, 1),
        "probe": rounded(model.ledgers_["probe"].to_dict()),
    }
    if cfg["lm"] == "box":  # run-time choices: in the summary, not in the adapter
        from exotune.devices import resolve_device

        summary.update(device=str(resolve_device(args.device)), precision=args.precision)
    if test is not None:  # scored once, after everything was chosen on validation
        report = model.evaluate(test, compare=False)
        summary["test"] = rounded({**report["ea"], "lm_call_share": report["lm_call_share"], "examples": len(test)})
    print(json.dumps(summary, indent=2))
    return 0


def _load(args):
    from exotune.ea.model import EasyAdapter

    adapter = Path(args.adapter)
    model = EasyAdapter.from_pretrained(adapter)  # checks every file, lm.json included, before it is read
    cfg = _lm_settings(args, adapter)
    cfg["cache"] = cfg["cache"] or str(adapter.with_name(adapter.name + ".responses.sqlite"))
    model.lm = make_client(cfg, args)
    return model


def cmd_predict(args) -> int:
    texts = read_texts(args)
    model = _load(args)
    r = model.route(texts)
    for text, y, used in zip(texts, r.labels, r.used_lm, strict=True):
        print(f"{model.label_names_[y]}\t{'lm' if used else 'ssm'}\t{text}")
    return 0


def cmd_report(args) -> int:
    from exotune.ea.report import markdown, write_report

    model = _load(args)
    data = load_data(args, args.split)
    report = model.evaluate(data, compare=not args.no_compare)
    out = write_report(report, args.out_dir or f"{args.adapter.rstrip('/')}-report")
    print(markdown(report).split("\n\n| region")[0])
    print(f"report written to {out}", file=sys.stderr)
    return 0


EA_COMMANDS = {"fit": cmd_fit, "predict": cmd_predict, "report": cmd_report}


def run(args) -> int:
    return EA_COMMANDS[args.ea_command](args)

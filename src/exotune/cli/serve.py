"""``exotune serve``: arguments -> a configured app -> uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from exotune.boxes.spec import ENTRY_MODES
from exotune.cli.boxes import PRECISIONS
from exotune.cli.common import entry_points_arg, port_number, positive_int
from exotune.cli.configs import ENTRY_TOKENS_MAX
from exotune.errors import ConfigError
from exotune.serve.config import OWNER_SECRET_ENV, default_secret_file, owner_secret

TOKENS_ENV = "EXOTUNE_TOKENS"
KINDS = ("text", "image", "clip")


HELP = "serve a box over HTTP at a chosen access level"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help=HELP,
        description="Serve a backbone as a box: dark-gray and light-gray expose forward and "
        "input gradients, black only outputs. Tokens come from --tokens-file or "
        f"${TOKENS_ENV} (comma-separated); without one it refuses to start "
        "unless --no-auth is given.",
    )
    add_serve_args(p)


def add_serve_args(p: argparse.ArgumentParser) -> None:
    from exotune.boxes.spec import ACCESS_LEVELS

    p.add_argument(
        "--model",
        default=None,
        help="local folder or model id of a text encoder (default: the packaged all-MiniLM-L6-v2); "
        "with --kind image, a ViT or DINOv2 checkpoint; with --kind clip, a CLIP, SigLIP or BLIP one",
    )
    p.add_argument(
        "--model-name",
        default=None,
        help="the model's name on the OpenAI-compatible routes (/v1/embeddings, /v1/models) "
        "(default: the last part of --model, else all-MiniLM-L6-v2)",
    )
    p.add_argument(
        "--kind",
        default="text",
        choices=KINDS,
        help="text: a text encoder; image: an image box (ViT, DINOv2, a CLIP image tower) taking "
        "pixels; clip: a CLIP model's two towers under /text and /image, one token set "
        "(image and clip: dark-gray or light-gray)",
    )
    p.add_argument("--level", default="dark-gray", choices=ACCESS_LEVELS, help="access level (default: dark-gray)")
    p.add_argument(
        "--device",
        default="auto",
        help="where the model's weights live: auto, cpu, cuda or cuda:<index> (default: auto, a CUDA GPU "
        "when there is one)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="the weights' format; inputs and answers stay float32 on the wire, and the spec's digest is "
        "that of the weights as loaded, so adapters match either way (default: float32)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="autocast over weights in --dtype for the calls made without gradients: encode, scores, "
        "/v1/embeddings, forwards that keep no graph (with --stateless, training forwards too; "
        "their backward recomputes in --dtype); bf16 or fp16 answer faster, close to fp32 "
        "(default: fp32)",
    )
    p.add_argument(
        "--entry-points",
        type=entry_points_arg,
        default=None,
        help="light-gray: 'all' or comma-separated layer indices that accept tokens",
    )
    p.add_argument(
        "--entry-tokens-max",
        type=positive_int,
        default=ENTRY_TOKENS_MAX,
        help=f"tokens each entry point accepts (default: {ENTRY_TOKENS_MAX})",
    )
    p.add_argument(
        "--entry-mode",
        choices=ENTRY_MODES,
        default="replace",
        help="light-gray: entry tokens overwrite the hidden states at their positions ('replace', "
        "VPT-deep), are added to them ('add'), shift every position by their sum ('shift'), or scale "
        "every position by 1 + the first and shift it by the others ('affine') (default: replace)",
    )
    p.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="TCP port to listen on (default: 8000)")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--tokens-file", help=f"file with one bearer token per line (else ${TOKENS_ENV})")
    auth.add_argument(
        "--no-auth", action="store_true", help="serve without tokens: anyone who reaches the port may call"
    )
    p.add_argument("--stateless", action="store_true", help="keep no graphs: backward sends the inputs again")
    p.add_argument("--max-batch", type=int, default=None, help="texts or sequences per call (default: the box's)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per sequence (default: the box's)")
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=_default_batch_wait_ms(),
        help="gather concurrent requests of a route for up to this long into one box call of at most "
        "--max-batch rows (encode, scores, embed, forward, and backward with --stateless; "
        "0: each request alone; default: %(default)g, see the README's remote section)",
    )
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body (default: 16)")
    for flag, kind, default, text in _hardening_flags():
        p.add_argument(
            flag, type=kind, default=default, help=text + ("" if default is None else f" (default: {default:g})")
        )
    p.add_argument("--rate", type=float, default=50.0, help="requests per second per token (default: 50)")
    p.add_argument("--burst", type=int, default=100, help="requests a token may make at once (default: 100)")
    p.add_argument("--grad-budget", type=int, default=None, help="backward calls per token (default: unlimited)")
    p.add_argument(
        "--quota-store",
        default=None,
        metavar="redis://HOST:PORT/DB",
        help="count rate limits and gradient budgets in this Redis, shared by every replica behind a "
        "load balancer (keys are hashes of the tokens; budgets outlive a replica's restart). "
        "Default: in this process, so N replicas would give a token N times its --rate and "
        "--grad-budget",
    )
    p.add_argument(
        "--quota-fallback",
        default="refuse",
        choices=("refuse", "local"),
        help="when the quota store cannot be reached: 'refuse' gradient calls with 503 (default), or "
        "count them in each replica until it is back ('local': up to N times a budget meanwhile); "
        "the rate limit is then counted in each replica",
    )
    p.add_argument("--handle-ttl", type=float, default=300.0, help="seconds a forward graph waits for its backward")
    p.add_argument("--max-handles", type=int, default=256, help="forward graphs kept at once (default: 256)")
    p.add_argument("--max-handle-mb", type=float, default=1024.0, help="memory those graphs may hold (default: 1024)")
    p.add_argument(
        "--owner-secret-file",
        default=None,
        help="file holding the owner secret, created with a random one if missing (default: "
        f"${OWNER_SECRET_ENV} if set, else {default_secret_file()}). The secret keys the spec's "
        "model digest (every --kind), hides which layers entry points are and, for --kind text "
        "and the text tower of --kind clip, sets the secret input basis. "
        "Keep the file and reuse it: the same secret after a restart keeps adapters trained "
        "against this box valid; another secret makes the box refuse them",
    )
    p.add_argument(
        "--no-basis",
        action="store_true",
        help="hand out token embeddings in the model's own coordinates, not the secret basis "
        "(the digest stays keyed); adapters trained with the basis are then refused. --kind text "
        "and clip (its text tower); refused for --kind image (pixels have no basis)",
    )


def _default_batch_wait_ms() -> float:
    from exotune.serve.config import ServeConfig

    return ServeConfig().batch_wait_ms


def _hardening_flags() -> list[tuple[str, type, float | None, str]]:
    """(flag, type, default, help) of the limits against a hostile caller; defaults from the configs."""
    from exotune.serve.config import ListenConfig, ServeConfig

    serve, listen = ServeConfig(), ListenConfig()
    return [
        (
            "--max-tokens-per-request",
            int,
            None,
            "texts x tokens one request may ask for, counted before tokenizing "
            "as UTF-8 bytes + 2 per text, capped at max-length (default: max-batch x max-length)",
        ),
        (
            "--max-response-mb",
            float,
            serve.max_response_bytes / 2**20,
            "largest answer, refused before the work is done",
        ),
        (
            "--fair-unit-tokens",
            int,
            serve.fair_unit_tokens,
            "tokens the box works on for one bearer token before "
            "another's turn: a small request waits about one such unit behind a large one "
            "(default: 512 on a CPU, 8192 on a GPU)",
        ),
        (
            "--box-workers",
            int,
            serve.box_workers,
            "box calls at once (more than 1 only for a box safe across threads, as the text box is)",
        ),
        (
            "--max-inflight",
            int,
            serve.max_inflight_per_token,
            "requests per bearer token in progress at once; more wait",
        ),
        ("--body-timeout", float, serve.body_timeout_s, "seconds a request body may take to arrive (else 408)"),
        (
            "--header-timeout",
            float,
            listen.header_timeout_s,
            "seconds a request line and headers may take to arrive; slower connections are closed",
        ),
        ("--keep-alive-timeout", float, listen.keep_alive_s, "seconds an idle connection stays open"),
        (
            "--max-connections",
            int,
            listen.max_connections,
            "connections open at once; new ones beyond are closed on accept",
        ),
        (
            "--login-failures",
            int,
            serve.login_failures,
            "wrong tokens one client address may send per --login-window "
            "before 429 (behind a proxy every client shares its address)",
        ),
        ("--login-window", float, serve.login_window_s, "seconds of that window"),
    ]


def _serve_tokens(args) -> list[str]:
    if args.tokens_file:
        path = Path(args.tokens_file)
        if not path.is_file():
            raise ConfigError(f"--tokens-file {path} does not exist")
        lines = path.read_text(encoding="utf-8").splitlines()
        return [t.strip() for t in lines if t.strip() and not t.strip().startswith("#")]
    if args.no_auth:
        return []
    return [t.strip() for t in os.environ.get(TOKENS_ENV, "").split(",") if t.strip()]


def build_server(args):
    """Parsed ``serve`` arguments -> the app to run (without running it)."""

    from exotune.boxes import load_box
    from exotune.serve import ServeConfig, create_app
    from exotune.serve.auth import TokenGate

    tokens = _serve_tokens(args)
    if not tokens and not args.no_auth:
        raise ConfigError(
            f"refusing to serve without a token: put tokens in --tokens-file or ${TOKENS_ENV}, "
            "or pass --no-auth explicitly"
        )
    try:  # every setting is checked before the model loads (which takes a while)
        TokenGate(tokens, 1.0, 1, None)
    except ConfigError as err:
        raise ConfigError(
            f"{err}; check {'--tokens-file ' + args.tokens_file if args.tokens_file else '$' + TOKENS_ENV}"
        ) from None
    config = ServeConfig(
        stateless=args.stateless,
        no_auth=args.no_auth,
        max_batch=args.max_batch,
        max_length=args.max_length,
        max_body_bytes=int(args.max_body_mb * 2**20),
        rate_per_s=args.rate,
        burst=args.burst,
        grad_budget=args.grad_budget,
        handle_ttl_s=args.handle_ttl,
        max_handles=args.max_handles,
        max_handle_bytes=int(args.max_handle_mb * 2**20),
        max_tokens_per_request=args.max_tokens_per_request,
        max_response_bytes=int(args.max_response_mb * 2**20),
        fair_unit_tokens=args.fair_unit_tokens,
        box_workers=args.box_workers,
        max_inflight_per_token=args.max_inflight,
        batch_wait_ms=args.batch_wait_ms,
        body_timeout_s=args.body_timeout,
        login_failures=args.login_failures,
        login_window_s=args.login_window,
        quota_store=args.quota_store,
        quota_fallback=args.quota_fallback,
    )
    from exotune.devices import resolve_device

    resolve_device(args.device)  # a GPU that is not there is refused before the model loads
    points = {}
    if args.entry_points:
        if args.level != "light-gray":
            raise ConfigError(f"--entry-points needs --level light-gray, got {args.level}")
        points = {"entry_points": args.entry_points, "entry_tokens_max": args.entry_tokens_max}
        if args.entry_mode != "replace":
            points["entry_mode"] = args.entry_mode
    elif args.entry_mode != "replace":
        raise ConfigError("--entry-mode sets how entry points take tokens: give --entry-points")
    placed = {"device": args.device, "dtype": args.dtype, "precision": args.precision}
    if args.kind != "text":
        return _vision_server(args, tokens, config, {**points, **placed})
    kwargs = {"access": args.level, "owner_secret": served_secret(args), "basis": not args.no_basis, **points, **placed}
    name = args.model_name or (Path(args.model.rstrip("/")).name if args.model else "all-MiniLM-L6-v2")
    return create_app(load_box(args.model, **kwargs), tokens, config, name)


def served_secret(args) -> str:
    """The owner secret ``--owner-secret-file`` (or its defaults) names; says where it came from."""
    secret, origin = owner_secret(args.owner_secret_file)
    print(f"owner secret {origin}", file=sys.stderr)
    return secret


def _vision_server(args, tokens, config, points: dict):
    """An image box (``--kind image``) or a CLIP model's two towers (``--kind clip``); ``points``:
    the box options (entry points, device, dtype, precision)."""
    from exotune.boxes.loading import load_clip_boxes, load_image_box
    from exotune.serve import create_app, create_towers_app

    if args.kind == "image" and args.no_basis:
        raise ConfigError(
            "--no-basis turns off the secret basis of token embeddings (--kind text, and the text tower of "
            "--kind clip); --kind image takes pixels, which have none: leave --no-basis out"
        )
    if args.level not in ("dark-gray", "light-gray"):
        raise ConfigError(
            f"--kind {args.kind} serves at dark-gray or light-gray (pixels in, gradients back), not {args.level}"
        )
    if not args.model:
        raise ConfigError(
            f"--kind {args.kind} needs --model: a ViT or DINOv2 checkpoint (--kind image) "
            "or a CLIP, SigLIP or BLIP one (--kind clip)"
        )
    options = {"access": args.level, "owner_secret": served_secret(args), **points}
    if args.kind == "image":
        return create_app(load_image_box(args.model, **options), tokens, config)
    if args.no_basis:  # the text tower's token embeddings; the image tower's pixels have no basis
        options["text_options"] = {"basis": False}
    text, image = load_clip_boxes(args.model, **options)
    return create_towers_app({"text": text, "image": image}, tokens, config)


MALLOC_ARENAS = 2


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """At most ``n`` glibc malloc arenas (as ``MALLOC_ARENA_MAX=n``; a value set there wins).

    Requests run in a pool of threads and glibc gives threads arenas of their own, up to 8 per
    core; with tensors of many sizes freed across them, memory fragments. Measured on the
    served MiniLM, 150 s of soak: resident memory 2.9 GB and still climbing with the default,
    1.7 GB and flat after 100 s with 2 arenas, at the same latency. No-op off glibc.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-8, n))  # -8: M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def listen_config(args):
    from exotune.serve.config import ListenConfig

    return ListenConfig(
        keep_alive_s=args.keep_alive_timeout, header_timeout_s=args.header_timeout, max_connections=args.max_connections
    )


def run_server(app, host: str, port: int, listen=None) -> None:  # pragma: no cover - blocks; tests replace it
    try:
        import uvicorn
    except ImportError as err:
        from exotune.errors import MissingDependencyError

        raise MissingDependencyError("exotune serve needs uvicorn: pip install 'exotune[serve]'") from err
    from exotune.serve.listen import uvicorn_config

    limit_malloc_arenas()  # before uvicorn starts the threads that would each take an arena
    uvicorn.Server(uvicorn_config(app, host, port, listen)).run()


def run(args) -> int:
    listen = listen_config(args)  # checked before the model loads
    app = build_server(args)
    services = getattr(app.state, "services", None) or {"": app.state.service}
    if args.no_auth and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving without auth on {args.host}: anyone who reaches it may call", file=sys.stderr)
    for prefix, service in services.items():
        spec = service.spec
        print(
            f"serving a {spec.access} {spec.modality} box (dim {spec.output_dim}) on "
            f"http://{args.host}:{args.port}{'/' + prefix if prefix else ''}/v1/",
            file=sys.stderr,
        )
    for route in getattr(app.state, "prompt_routes", []):
        print(f"  with the owner's prompt under http://{args.host}:{args.port}{route}/v1/", file=sys.stderr)
    if getattr(app.state, "model_name", None):
        print(
            f"OpenAI-compatible: base URL http://{args.host}:{args.port}/v1, model {app.state.model_name!r}",
            file=sys.stderr,
        )
    run_server(app, args.host, args.port, listen)
    return 0

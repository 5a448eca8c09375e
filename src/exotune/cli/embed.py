"""``exotune embed``: the embeddings of an adapted text encoder (a classifier's adapted box, a
retriever's query tower) for a file of texts, written as .npy, .jsonl or .parquet."""

from __future__ import annotations

import sys

from exotune.cli.boxes import adapter_box, add_box_args
from exotune.cli.common import positive_int
from exotune.cli.data import read_texts
from exotune.errors import ConfigError

HELP = "embed texts with a trained text adapter (classifier or retriever) into .npy, .jsonl or .parquet"


def add_parser(sub) -> None:
    p = sub.add_parser("embed", help=HELP)
    p.add_argument("--adapter", required=True, help="adapter folder written by train (a text classifier or retriever)")
    add_box_args(p)
    p.add_argument(
        "--input-file", required=True, help="texts: one per line, or a .csv, .tsv or .jsonl file (its --text-column)"
    )
    p.add_argument("--text-column", default="text", help="text column of a .csv, .tsv or .jsonl --input-file")
    p.add_argument("--output", required=True, help="where the embeddings go: .npy, .jsonl or .parquet (needs pyarrow)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts per call to the box")
    p.add_argument("--normalize", action="store_true", help="L2-normalise each embedding")
    p.add_argument("--quiet", action="store_true", help="no progress")


def load_text_encoder(folder: str, box):
    """The text model an adapter folder holds, by its config's type, on ``box``."""
    from exotune.artifacts import CONFIG_NAME, read_json
    from exotune.tasks.classification import TextClassifier
    from exotune.tasks.retrieval import ADAPTER_TYPE as RETRIEVER
    from exotune.tasks.retrieval import DualEncoder

    models = {TextClassifier.adapter_type: TextClassifier, RETRIEVER: DualEncoder}
    kind = read_json(f"{folder}/{CONFIG_NAME}").get("type")  # the folder is verified by adapter_box
    if kind not in models:
        raise ConfigError(
            f"{folder} holds a {kind!r} adapter; embed takes a text classifier or retriever ({', '.join(models)})"
        )
    return models[kind].from_pretrained(folder, box)


def run(args) -> int:
    from exotune.cli.outputs import check_embeddings_output, write_embeddings

    check_embeddings_output(args.output)
    texts = read_texts(args)
    model = load_text_encoder(args.adapter, adapter_box(args))
    vectors = model.encode(texts, batch_size=args.batch_size, normalize=args.normalize, progress=not args.quiet)
    out = write_embeddings(args.output, texts, vectors)
    print(f"{len(texts)} embeddings of {vectors.shape[1]} dimensions written to {out}", file=sys.stderr)
    return 0

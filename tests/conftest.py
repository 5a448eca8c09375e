"""Shared fixtures: a tiny random BERT box built in the test, and the real datasets."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub: nothing may be downloaded in tests

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
WORDS = ["the", "a", "is", "was", "very", "car", "sky", "leaf", "fast", "slow", "big", "small",
         "red", "blue", "green", "colour", "today", "and", "it", "of"]


def build_tiny_backbone(folder: Path, hidden: int = 16, layers: int = 2, seed: int = 0) -> Path:
    """Write a randomly initialised BERT with its own WordPiece vocabulary to ``folder``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # positional: the vocabulary file in every transformers version
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def tiny_box(tiny_backbone):
    from exotune.boxes import load_box

    return load_box(str(tiny_backbone), pooling="mean", normalize=False)


def backbone_module(box):
    """Test-only access to the hidden module, to check it is never changed."""
    return box._TextEncoderBox__model


def colour_data(n: int = 120, seed: int = 0):
    """A synthetic task: the colour word in a sentence is the label."""
    import random

    from exotune.data import TextLabelData

    rng = random.Random(seed)
    colours = ["red", "blue", "green"]
    nouns = ["car", "sky", "leaf"]
    adjs = ["fast", "slow", "big", "small", "very"]
    texts, labels = [], []
    for _ in range(n):
        y = rng.randrange(3)
        words = [rng.choice(["the", "a"]), rng.choice(nouns), "is", rng.choice(adjs), colours[y]]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return TextLabelData(texts, labels, colours, "colours")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "banking77").is_dir():
        pytest.skip(f"shared datasets not at {SHARED_DATA}")
    return SHARED_DATA

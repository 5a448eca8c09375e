"""Shared fixtures: a tiny random BERT box built in the test, and the real datasets."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub: nothing may be downloaded in tests
# a bare OSError/ValueError reaching the CLI's guard keeps its traceback here: an error on user
# input must be one of exotune's own, so a real bug is never hidden behind a one-line message
os.environ.setdefault("EXOTUNE_DEBUG", "1")
# exotune serve keeps its generated owner secret under $XDG_CONFIG_HOME: never the user's own
os.environ["XDG_CONFIG_HOME"] = __import__("tempfile").mkdtemp(prefix="exotune-test-config-")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
WORDS = [
    "the",
    "a",
    "is",
    "was",
    "very",
    "car",
    "sky",
    "leaf",
    "fast",
    "slow",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "colour",
    "today",
    "and",
    "it",
    "of",
]


def build_tiny_backbone(folder: Path, hidden: int = 16, layers: int = 2, seed: int = 0) -> Path:
    """Write a randomly initialised BERT with its own WordPiece vocabulary to ``folder``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # positional: the vocabulary file in every transformers version
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, and stay fast on a machine busy with other work
    (a module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# -- images: tiny CLIP / ViT / DINOv2 built in the test, and drawn captioned images -------------
# (the tiny CLIP and the drawings live in the package: exotune bench vision --quick runs on them)

from exotune.bench.tiny_clip import (  # noqa: E402, F401  (the tests import them from here)
    CLIP_WORDS,
    COLOURS,
    SHAPES,
    VISION,
    build_tiny_clip,
    draw_shape,
    tiny_clip_tokenizer,
    write_shapes,
)


def tiny_vision(kind: str = "vit", seed: int = 0):
    """A randomly initialised ViT or DINOv2 (hidden 32, 2 layers, 32x32 images, patch 8)."""
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    torch.manual_seed(seed)
    if kind == "dinov2":
        return Dinov2Model(Dinov2Config(**VISION)).eval()
    return ViTModel(ViTConfig(**VISION), add_pooling_layer=False).eval()


@pytest.fixture(scope="module")
def clip():
    """A tiny random CLIPModel and its tokenizer (``build_tiny_clip``)."""
    return build_tiny_clip()


@pytest.fixture
def pair(clip):
    """The tiny CLIP as a (text, image) pair of boxes."""
    from exotune.boxes import clip_boxes

    return clip_boxes(*clip)


@pytest.fixture
def tiny_image_box():
    from exotune.boxes.image import VisionEncoderBox

    return VisionEncoderBox(tiny_vision())


# -- open_clip's layout without the package ------------------------------------------------------


class StandInOpenCLIP(nn.Module):
    """A tiny model with open_clip's CLIP layout and ``encode_text`` / ``encode_image`` code path:
    full-context positional embedding, causal mask, pooling at the largest token id."""

    def __init__(self, vocab: int = 40, width: int = 16, context: int = 12) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.context_length, self.vocab_size = context, vocab
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.1)
        layer = nn.TransformerEncoderLayer(width, 2, 32, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, 1)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, 8))
        self.visual = nn.Sequential(nn.Conv2d(3, 4, 8, 8), nn.Flatten(), nn.Linear(64, 8))
        self.visual.image_size = 32
        self.register_buffer("attn_mask", torch.full((context, context), float("-inf")).triu(1), persistent=False)

    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.ln_final(self.transformer(x, mask=self.attn_mask))
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def encode_image(self, image):
        return self.visual(image)


def stand_in_tokenizer(texts, context_length=12):
    """open_clip's tokenizer contract: (B, context_length) ids, start 38, end 39 (the largest), pad 0."""
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [38, *[2 + (sum(map(ord, w)) % 30) for w in t.split()][: context_length - 2], 39]
        out[i, : len(ids)] = torch.tensor(ids)
    return out

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


# -- images: tiny CLIP / ViT / DINOv2 built in the test, and a synthetic captioned image set -----

SHAPES = ["circle", "square", "triangle"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230)}
CLIP_WORDS = ["a", "an", "photo", "of", "the", "image", *SHAPES, *COLOURS, "small", "big", "dog", "cat"]
VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
)


def tiny_clip_tokenizer(eos_last: bool = True):
    """A word-level tokenizer with CLIP's layout: <start> words <end>, padded; built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(CLIP_WORDS)}}
    vocab["<start>"] = len(vocab)
    vocab["<end>"] = len(vocab)  # the last id, as CLIP's end-of-text token
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<start> $A <end>", special_tokens=[("<start>", vocab["<start>"]), ("<end>", vocab["<end>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="<start>", eos_token="<end>"
    )


def build_tiny_clip(folder: Path | None = None, seed: int = 0, legacy_eos: bool = False):
    """A randomly initialised CLIPModel (hidden 32, 2 layers, 32x32 images, patch 8) and its
    tokenizer; saved with a preprocessor config to ``folder`` when given."""
    import json

    from transformers import CLIPConfig, CLIPModel

    tokenizer = tiny_clip_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<end>")
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            pad_token_id=0,
            bos_token_id=eos - 1,
            eos_token_id=2 if legacy_eos else eos,
        ),
        vision_config=VISION,
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(
            json.dumps(
                {
                    "image_processor_type": "CLIPImageProcessor",
                    "do_resize": True,
                    "size": {"shortest_edge": 32},
                    "do_center_crop": True,
                    "crop_size": {"height": 32, "width": 32},
                    "resample": 3,
                    "image_mean": [0.48145466, 0.4578275, 0.40821073],
                    "image_std": [0.26862954, 0.26130258, 0.27577711],
                }
            )
        )
    return model, tokenizer


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


def draw_shape(shape: str, colour: str, seed: int = 0, size: int = 32):
    """A PIL image: one filled shape in one colour on a grey background, jittered by ``seed``."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    r = rng.randint(8, 12)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def write_shapes(folder: Path, per_pair: int = 1, seed: int = 0) -> list[tuple[str, str, str]]:
    """Draw ``per_pair`` images of every (colour, shape) into ``folder``; (file name, colour, shape)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(per_pair):
        for colour in COLOURS:
            for shape in SHAPES:
                name = f"{colour}-{shape}-{k}.png"
                draw_shape(shape, colour, seed=seed * 1000 + len(rows)).save(folder / name)
                rows.append((name, colour, shape))
    return rows


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

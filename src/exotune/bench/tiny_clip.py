"""A tiny random CLIP and tiny drawn images (and videos, as folders of frames): what ``exotune
bench vision --quick`` runs on (and the tests build their image-text models and images from).

The model is a real ``transformers`` ``CLIPModel`` (hidden 32, 2 layers, 32x32 images, patch 8)
with a word-level tokenizer in CLIP's layout, randomly initialised from a seed: no download.
The images are one filled shape in one colour on grey, jittered by a seed; their captions name
the colour and the shape. Sketches (``--task sketch-retrieval``) are black outlines on white, each
drawn from one photo of its class.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SHAPES = ["circle", "square", "triangle"]
SKETCH_SHAPES = (*SHAPES, "diamond", "bar")  # the drawn sketch classes (--task sketch-retrieval)
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230)}
CLIP_WORDS = ["a", "an", "photo", "of", "the", "image", *SHAPES, *COLOURS, "small", "big", "dog", "cat"]
VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
)
PREPROCESSOR = {
    "image_processor_type": "CLIPImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 32},
    "do_center_crop": True,
    "crop_size": {"height": 32, "width": 32},
    "resample": 3,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}


def tiny_clip_tokenizer():
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
    tokenizer; saved with a preprocessor config to ``folder`` when given. ``legacy_eos``: the
    config names id 2 as end-of-text, as older CLIP configs do."""
    import torch
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
        (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return model, tokenizer


def draw_shape(shape: str, colour: str, seed: int = 0, size: int = 32):
    """A PIL image: one filled shape in one colour on a grey background, jittered by ``seed``."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    r = rng.randint(8, 12)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape in ("square", "bar"):
        draw.rectangle(_box(shape, cx, cy, r), fill=fill)
    else:
        draw.polygon(_corners(shape, cx, cy, r), fill=fill)
    return img


def _box(shape: str, cx: int, cy: int, r: int) -> tuple[int, int, int, int]:
    return (cx - r, cy - r // 3, cx + r, cy + r // 3) if shape == "bar" else (cx - r, cy - r, cx + r, cy + r)


def _corners(shape: str, cx: int, cy: int, r: int) -> list[tuple[int, int]]:
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    return [(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)]  # a triangle


def draw_sketch(shape: str, seed: int = 0, size: int = 32):
    """A PIL image: a black outline of ``shape`` on white (a ring: a thick circle), jittered by ``seed``."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    r = rng.randint(8, 12)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    black = (0, 0, 0)
    if shape in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=black, width=2 if shape == "circle" else 4)
    elif shape in ("square", "bar"):
        draw.rectangle(_box(shape, cx, cy, r), outline=black, width=2)
    else:
        draw.polygon(_corners(shape, cx, cy, r), outline=black)
    return img


def shape_sketches(photos: int = 3, per_photo: int = 2, seed: int = 0, name: str = "shape-sketches"):
    """Drawn sketches and photos in memory (a ``SketchPhotoData`` of PIL images): ``photos``
    photos of every shape in ``SKETCH_SHAPES`` (filled, coloured), and ``per_photo`` sketches
    (outlines) of each, paired with it."""
    from exotune.data.sketches import SketchPhotoData

    sketches, sketch_labels, pairs, images, labels = [], [], [], [], []
    for label, shape in enumerate(SKETCH_SHAPES):
        for k in range(photos):
            colour = list(COLOURS)[k % len(COLOURS)]
            for _ in range(per_photo):
                sketches.append(draw_sketch(shape, seed=seed * 1000 + len(sketches)))
                sketch_labels.append(label)
                pairs.append(len(images))
            images.append(draw_shape(shape, colour, seed=seed * 1000 + len(images)))
            labels.append(label)
    return SketchPhotoData(sketches, sketch_labels, images, labels, list(SKETCH_SHAPES), pairs, name)


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


def shape_captions(per_pair: int = 1, seed: int = 0, name: str = "shapes"):
    """Captioned drawn images in memory (an ``ImageCaptionData`` of PIL images): ``per_pair``
    images of every (colour, shape), each captioned "a photo of a <colour> <shape>"."""
    from exotune.data.images import ImageCaptionData

    images, captions = [], []
    for k in range(per_pair):
        for colour in COLOURS:
            for shape in SHAPES:
                images.append(draw_shape(shape, colour, seed=seed * 1000 + k * 100 + len(images)))
                captions.append(f"a photo of a {colour} {shape}")
    return ImageCaptionData(images, captions, list(range(len(images))), name)


def shape_videos(folder: Path, per_pair: int = 1, seed: int = 0, frames: int = 3, name: str = "shape-videos"):
    """Captioned drawn videos (a ``VideoCaptionData`` of frame folders written under ``folder``):
    ``per_pair`` videos of every (colour, shape), the shape jittered from frame to frame, each
    captioned "a <colour> <shape>"."""
    from exotune.data.videos import VideoCaptionData

    videos, captions = [], []
    for k in range(per_pair):
        for colour in COLOURS:
            for shape in SHAPES:
                video = folder / f"{colour}-{shape}-{seed}-{k}"
                video.mkdir(parents=True, exist_ok=True)
                for i in range(frames):
                    draw_shape(shape, colour, seed=(seed * 1000 + len(videos)) * 100 + i).save(video / f"{i:03d}.png")
                videos.append(str(video))
                captions.append(f"a {colour} {shape}")
    return VideoCaptionData(videos, captions, list(range(len(videos))), name)

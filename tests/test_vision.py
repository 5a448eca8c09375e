"""Image and image-text boxes: CLIP / ViT / DINOv2 boxes, pixel adapters, image-text retrieval,
image classification, image data, the CLI. Every model is a tiny random one built here."""

from __future__ import annotations

import csv
import json
import math
import warnings

import pytest
import torch
from torch import nn

from exotune.boxes import (
    BoxSpec,
    ImageSpec,
    VisionEncoderBox,
    clip_boxes,
    load_clip_boxes,
    load_image_box,
)
from exotune.boxes.base import model_digest
from exotune.boxes.image import to_pixels
from exotune.cli import main
from exotune.data import ImageCaptionData, load_image_captions, load_image_folder
from exotune.errors import (
    AccessError,
    BackboneNotFoundError,
    BoxLimitError,
    ConfigError,
    DataError,
    SpecMismatchError,
)
from exotune.graybox import (
    DGAConfig,
    EntryTokensConfig,
    GrayBoxModel,
    PixelConvConfig,
    PixelResidualConfig,
)
from exotune.tasks.classification import ClassificationConfig
from exotune.tasks.image_classification import ImageClassifier
from exotune.tasks.image_text import ImageTextConfig, ImageTextRetriever
from exotune.tasks.metrics import image_text_recalls
from exotune.train import TrainConfig, Trainer

from .conftest import (
    COLOURS,
    SHAPES,
    StandInOpenCLIP,
    build_tiny_clip,
    draw_shape,
    stand_in_tokenizer,
    tiny_vision,
    write_shapes,
)

IMAGE_SIZE = (3, 32, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


def features(out) -> torch.Tensor:
    """``get_*_features`` returns a tensor, or (newer transformers) an output with pooler_output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def modules_of(box) -> list[nn.Module]:
    """Test-only access to the modules an image box hides."""
    return [v for v in vars(box).values() if isinstance(v, nn.Module)]


@pytest.fixture
def light_pair(clip):
    return clip_boxes(*clip, entry_points="all", entry_tokens_max=4)


def write_captions(folder, name: str, per_pair: int, seed: int):
    """Shapes drawn into ``folder/name`` and ``folder/name.csv`` of (image, caption) rows."""
    rows = write_shapes(folder / name, per_pair, seed)
    with open(folder / f"{name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows([f"{name}/{file}", f"a {colour} {shape}"] for file, colour, shape in rows)
    return folder / f"{name}.csv"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A synthetic captioned image set: 54 training images (6 per colour and shape), 9 test ones."""
    root = tmp_path_factory.mktemp("shapes")
    train = load_image_captions(write_captions(root, "train", 6, seed=0))
    test = load_image_captions(write_captions(root, "test", 1, seed=1))
    return root, train, test


# -- specs ----------------------------------------------------------------------------------


def test_image_spec_round_trips_and_text_fingerprints_stay(pair, tiny_box):
    text, image = pair
    spec = image.spec
    assert spec.input_kind == "pixels" and spec.input_shape == IMAGE_SIZE and spec.image_size == (32, 32)
    assert spec.token_dim == 32 and spec.entry_dim == 32 and spec.image.resize == 32
    assert BoxSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    # a CLIP pair: one backbone digest, one embedding width
    assert text.spec.model_digest == image.spec.model_digest and text.spec.output_dim == image.spec.output_dim == 16
    assert text.spec.pooling == "eos" and text.spec.fingerprint() != spec.fingerprint()
    # fields added for images stay out of text specs, so earlier adapters keep their fingerprints
    assert not {"token_dim", "image"} & set(tiny_box.spec.to_dict())
    with pytest.raises(ConfigError, match="ImageSpec"):
        ImageSpec(mean=(0.5,), std=(0.0,))
    with pytest.raises(ConfigError, match="input_shape"):
        BoxSpec("image", "pixels", (None, 32), 16, "dark-gray", "d", image=ImageSpec((0.5,), (0.5,)))


# -- the boxes compute what the models compute --------------------------------------------------


@pytest.mark.parametrize("legacy_eos", [False, True], ids=["eos-id", "argmax"])
def test_clip_boxes_match_the_model(legacy_eos):
    model, tokenizer = build_tiny_clip(legacy_eos=legacy_eos)
    text, image = clip_boxes(model, tokenizer)
    captions = ["a red circle", "the big blue square of a photo", "an image"]
    batch = text.embed(captions)
    expected = features(model.get_text_features(**tokenizer(captions, padding=True, return_tensors="pt")))
    torch.testing.assert_close(text.forward(batch.embeds, batch.mask), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(text.encode(captions), expected, rtol=0, atol=1e-6)
    pixels = torch.randn(2, *IMAGE_SIZE)
    torch.testing.assert_close(
        image.forward(pixels), features(model.get_image_features(pixel_values=pixels)), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_vision_boxes_match_the_model(kind):
    model = tiny_vision(kind)
    box = VisionEncoderBox(model)
    pixels = torch.randn(2, *IMAGE_SIZE)
    hidden = model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(box.forward(pixels), hidden[:, 0], rtol=0, atol=1e-6)
    mean = VisionEncoderBox(model, pooling="mean")
    torch.testing.assert_close(mean.forward(pixels), hidden[:, 1:].mean(1), rtol=0, atol=1e-6)
    assert box.spec.output_dim == 32 and box.spec.image.mean == (0.5, 0.5, 0.5)
    with pytest.raises(BoxLimitError, match=r"pixels must have shape \(batch, 3, 32, 32\)"):
        box.forward(torch.randn(2, 3, 16, 16))


def test_preprocessing_follows_the_spec(pair):
    from PIL import Image

    _, image = pair
    grey = Image.new("RGB", (64, 48), (128, 128, 128))
    pixels = image.preprocess([grey])
    assert pixels.shape == (1, *IMAGE_SIZE)
    spec = image.spec.image
    for c in range(3):
        torch.testing.assert_close(pixels[0, c], torch.full((32, 32), (128 / 255 - spec.mean[c]) / spec.std[c]))
    # shorter side to 32, then the centre: a 64x32 image keeps its middle half
    wide = Image.new("RGB", (64, 32), (0, 0, 0))
    wide.paste((255, 255, 255), (16, 0, 48, 32))
    torch.testing.assert_close(
        to_pixels([wide], image.spec)[0, 0], torch.full((32, 32), (1 - spec.mean[0]) / spec.std[0])
    )


def test_unreadable_image_names_the_file(pair, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        pair.image.preprocess([bad])
    with pytest.raises(DataError, match="missing.png: file not found"):
        pair.image.preprocess([str(tmp_path / "missing.png")])


# -- the pixel adapter ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "adapter",
    [
        PixelConvConfig(kernel_size=1),
        PixelConvConfig(),
        PixelConvConfig(kernel_size=5),
        PixelResidualConfig(),
        PixelResidualConfig(activation="none", channels=2),
    ],
    ids=["conv-1", "conv-3", "conv-5", "residual", "residual-affine"],
)
def test_pixel_adapter_at_identity_leaves_outputs_unchanged(pair, adapter):
    images = [draw_shape(s, c, seed=i) for i, (s, c) in enumerate(zip(SHAPES, COLOURS, strict=True))]
    model = GrayBoxModel(pair.image, DGAConfig(adapter, None))
    assert torch.equal(model.encode(images), pair.image.encode(images))


def test_pixel_conv_is_affine_and_validated():
    with pytest.raises(ConfigError, match="odd"):
        PixelConvConfig(kernel_size=2)
    with pytest.raises(ConfigError, match="channels"):
        PixelResidualConfig(channels=0)
    with pytest.raises(ConfigError, match="activation"):
        PixelResidualConfig(activation="relu6")
    assert DGAConfig.variant("both", modality="image").input_adapter == PixelConvConfig()
    with pytest.raises(ConfigError, match="text-shift"):
        GrayBoxModel(VisionEncoderBox(tiny_vision()), DGAConfig())


# -- entry points (LGA) ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vit", "dinov2", "clip"])
def test_vision_entry_points(kind, clip):
    if kind == "clip":
        box = clip_boxes(*clip, image_options={"entry_points": [1], "entry_tokens_max": 3}).image
        plain = clip_boxes(*clip).image
    else:
        model = tiny_vision(kind)
        box, plain = VisionEncoderBox(model, entry_points=[1], entry_tokens_max=3), VisionEncoderBox(model)
    assert box.spec.access == "light-gray" and [e.name for e in box.spec.entry_points] == ["layer.1"]
    pixels = torch.randn(2, *IMAGE_SIZE)
    torch.testing.assert_close(box.forward(pixels), plain.forward(pixels))
    a = box.forward(pixels, {"layer.1": torch.randn(2, 32)})
    assert a.shape == plain.forward(pixels).shape and not torch.allclose(a, plain.forward(pixels))
    assert all(not layer._forward_pre_hooks for m in modules_of(box) for layer in m.modules())
    with pytest.raises(BoxLimitError, match="at most 3"):
        box.forward(pixels, {"layer.1": torch.randn(4, 32)})
    with pytest.raises(ConfigError, match="unknown entry point 'layer.0'"):
        box.forward(pixels, {"layer.0": torch.randn(2, 32)})
    with pytest.raises(AccessError):
        plain.forward(pixels, {"layer.1": torch.randn(2, 32)})


def test_clip_text_entry_points(light_pair, pair):
    text = light_pair.text
    batch = text.embed(["a red circle", "a blue square"])
    torch.testing.assert_close(text.forward(batch.embeds, batch.mask), pair.text.forward(batch.embeds, batch.mask))
    out = text.forward(batch.embeds, batch.mask, {"layer.0": torch.randn(2, 32), "layer.1": torch.randn(2, 32)})
    assert out.shape == (2, 16) and not torch.allclose(out, pair.text.forward(batch.embeds, batch.mask))
    with pytest.raises(BoxLimitError, match="max_length"):
        long = text.embed(["a " * 20])
        text.forward(long.embeds, long.mask, {"layer.0": torch.randn(3, 32)})


def test_gradients_reach_only_adapters_and_entry_tokens(clip, light_pair, shapes):
    _, train, _ = shapes
    backbone = clip[0]  # test-only: the model behind both boxes
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    lga = EntryTokensConfig(tokens=2)
    model = ImageTextRetriever(
        *light_pair,
        DGAConfig.variant("both", entry_tokens=lga),
        DGAConfig.variant("both", entry_tokens=lga, modality="image"),
    )
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.loss(train.subset(range(12))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters())
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    opt.step()
    assert {k.split(".")[0] for k in model.state_dict()} == {"text_tower", "image_tower", "log_scale"}
    assert any(".entry_tokens." in k for k in model.state_dict()) and any(".conv." in k for k in model.state_dict())
    # the backbone stays bit-identical
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())
    assert model_digest(backbone) == light_pair.text.spec.model_digest == light_pair.image.spec.model_digest


# -- image-text retrieval ------------------------------------------------------------------------


def test_recall_metric_values():
    texts = torch.eye(3)[[0, 1, 2, 2]]  # four captions; the last two describe image 2 and image 0
    images = torch.eye(3)
    m = image_text_recalls(texts, images, [0, 1, 2, 0])
    assert m["t2i_recall@1"] == 0.75 and m["t2i_recall@5"] == 1.0  # caption 3 finds image 2 first
    assert m["i2t_recall@1"] == 1.0  # image 0 still has its own first caption at the top
    assert m["mean_recall"] == pytest.approx((0.75 + 1 + 1 + 1 + 1 + 1) / 6)


def test_training_lowers_loss_and_raises_recall(pair, shapes):
    _, train, test = shapes
    torch.manual_seed(0)
    model = ImageTextRetriever(*pair, config=ImageTextConfig(temperature=0.07))
    batch = train.subset(range(0, len(train), 2))
    before = model.evaluate(test)
    with torch.no_grad():
        loss_before = float(model.loss(batch))
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        opt.zero_grad()
        model.loss(train.subset(torch.randperm(len(train), generator=g)[:27].tolist())).backward()
        opt.step()
    with torch.no_grad():
        assert float(model.loss(batch)) < loss_before - 0.3
    after = model.evaluate(test)
    assert after["t2i_recall@1"] > before["t2i_recall@1"] and after["i2t_recall@1"] > before["i2t_recall@1"]
    assert after["mean_recall"] > before["mean_recall"]


def test_batch_with_several_captions_per_image(pair):
    data = ImageCaptionData(
        [draw_shape("circle", "red"), draw_shape("square", "blue")],
        ["a red circle", "a big red circle", "a blue square"],
        [0, 0, 1],
    )
    model = ImageTextRetriever(*pair)
    torch.manual_seed(0)
    with torch.no_grad():
        losses = {float(model.loss(data)) for _ in range(8)}
    assert all(math.isfinite(v) for v in losses) and len(losses) == 2  # image 0 draws either caption


def test_retriever_save_load_round_trip(clip, pair, shapes, tmp_path):
    _, train, test = shapes
    torch.manual_seed(1)
    model = ImageTextRetriever(*pair, DGAConfig(), DGAConfig(PixelResidualConfig(), None))
    result = Trainer(
        TrainConfig(epochs=2, batch_size=27, lr=1e-2, select_metric="mean_recall", patience=None),
        tmp_path / "run",
        progress=False,
    ).fit(model, *train.split(0.2))
    assert result.steps > 0 and "val_t2i_recall@1" in result.history[0]
    folder = tmp_path / "run" / "best"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "adapter_config.json",  # README.md: the card
        "adapter_model.safetensors",
        "checksums.sha256",
    ]
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["type"] == "dga-image-text-retriever" and cfg["dga"]["input_adapter"]["type"] == "pixel-residual"
    loaded = ImageTextRetriever.from_pretrained(folder, *pair)
    assert loaded.evaluate(test) == model.evaluate(test)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    other = clip_boxes(*build_tiny_clip(seed=1))
    with pytest.raises(SpecMismatchError, match="model_digest"):
        ImageTextRetriever.from_pretrained(folder, *other)
    with pytest.raises(SpecMismatchError, match="text box"):
        ImageTextRetriever.from_pretrained(folder, other.text, pair.image)


# -- image classification --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shape_folder(tmp_path_factory):
    """Nine drawn shapes per colour, one sub-folder per colour."""
    root = tmp_path_factory.mktemp("folder")
    for colour in COLOURS:
        (root / colour).mkdir()
        for i in range(9):
            draw_shape(SHAPES[i % 3], colour, seed=i).save(root / colour / f"{i}.png")
    return root


def test_zero_shot_at_step_0_is_clip(pair, shape_folder):
    data = load_image_folder(shape_folder)
    assert data.label_names == sorted(COLOURS) and len(data) == 27
    model = ImageClassifier(pair.image, data.label_names, text_box=pair.text)
    images = nn.functional.normalize(pair.image.encode(data.images), dim=-1)
    classes = nn.functional.normalize(pair.text.encode([f"a photo of a {c}." for c in data.label_names]), dim=-1)
    expected = (images @ classes.T).argmax(-1)
    assert torch.equal(model.predict_proba(data.images).argmax(-1), expected)


def test_an_image_classifier_can_start_at_the_class_means(pair, shape_folder):
    """``prototype_start="class-means"``: the head starts at the images' class means (step 0:
    the nearest class mean), not at the class names through the text tower."""
    data = load_image_folder(shape_folder)
    config = ClassificationConfig(label_template="a photo of a {}.", prototype_start="class-means")
    model = ImageClassifier(pair.image, data.label_names, config=config, text_box=pair.text)
    model.start_head(data)
    images = nn.functional.normalize(pair.image.encode(data.images), dim=-1)
    labels = torch.tensor(data.labels)
    means = torch.stack([nn.functional.normalize(images[labels == c].mean(0), dim=0) for c in range(3)])
    assert torch.allclose(model.head.prototypes, means, atol=1e-5)


def test_image_classifier_trains_saves_and_loads(pair, shape_folder, tmp_path):
    data = load_image_folder(shape_folder)
    model = ImageClassifier(
        pair.image, data.label_names, DGAConfig.variant("both", modality="image"), text_box=pair.text
    )
    train, val = data.split(0.34, seed=0)
    Trainer(TrainConfig(epochs=2, batch_size=9, lr=1e-2, patience=None), tmp_path / "run", progress=False).fit(
        model, train, val
    )
    loaded = ImageClassifier.from_pretrained(tmp_path / "run" / "best", pair.image)  # no text tower needed
    assert loaded.evaluate(data) == model.evaluate(data)
    with pytest.raises(ConfigError, match="text_box"):
        ImageClassifier(pair.image, data.label_names)
    linear = ImageClassifier(
        VisionEncoderBox(tiny_vision()), data.label_names, None, ClassificationConfig(head="linear")
    )
    assert linear.predict(data.images[:2])[0] in data.label_names


# -- data ------------------------------------------------------------------------------------------


def test_caption_formats(tmp_path):
    write_shapes(tmp_path / "img", 1)
    names = sorted(p.name for p in (tmp_path / "img").iterdir())
    (tmp_path / "c.jsonl").write_text(
        "\n".join(json.dumps({"image": f"img/{n}", "caption": [f"{n} one", f"{n} two"]}) for n in names)
    )
    jsonl = load_image_captions(tmp_path / "c.jsonl")
    assert len(jsonl) == 18 and len(jsonl.images) == 9 and jsonl.caption_image[:2] == [0, 0]
    coco = {
        "images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
        "annotations": [{"image_id": i, "id": i, "caption": f"cap {i}"} for i in range(9)],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert len(load_image_captions(tmp_path / "coco.json", tmp_path / "img")) == 9
    karpathy = {
        "images": [
            {
                "filename": n,
                "filepath": "img",
                "split": ["train", "restval", "test"][i % 3],
                "sentences": [{"raw": "a"}, {"raw": "b"}],
            }
            for i, n in enumerate(names)
        ]
    }
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    assert len(load_image_captions(tmp_path / "k.json", split="train").images) == 6
    assert len(load_image_captions(tmp_path / "k.json", split="test")) == 6
    train, held = jsonl.split(0.34)
    assert not set(train.images) & set(held.images) and len(held) == 2 * len(held.images)


def test_missing_and_corrupt_images(tmp_path):
    write_shapes(tmp_path, 1)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    rows = "image,caption\nred-circle-0.png,a red circle\nbroken.png,broken\nnowhere.png,missing\n"
    (tmp_path / "c.csv").write_text(rows)
    with pytest.raises(DataError, match=r"broken.png: not a readable image .*c.csv, line 3"):
        load_image_captions(tmp_path / "c.csv")
    with pytest.warns(UserWarning, match="skipped 2"):
        data = load_image_captions(tmp_path / "c.csv", skip_bad=True)
    assert data.skipped == 2 and data.captions == ["a red circle"]
    (tmp_path / "c.csv").write_text("image,caption\nnowhere.png,missing\n")
    with pytest.raises(DataError, match="nowhere.png: file not found"):
        load_image_captions(tmp_path / "c.csv")
    (tmp_path / "c.csv").write_text("picture,caption\nx.png,a\n")
    with pytest.raises(DataError, match="line 2: no column 'image'"):
        load_image_captions(tmp_path / "c.csv")


def test_image_folder_errors(tmp_path, shape_folder):
    (tmp_path / "only").mkdir()
    draw_shape("circle", "red").save(tmp_path / "only" / "a.png")
    with pytest.raises(DataError, match="at least 2 class folders"):
        load_image_folder(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.jpg"):
        load_image_folder(tmp_path)
    with warnings.catch_warnings(), pytest.raises(DataError, match="no readable images left"):
        warnings.simplefilter("ignore")
        load_image_folder(tmp_path, skip_bad=True)


# -- loading checkpoints -------------------------------------------------------------------------


def test_load_from_local_folders(tmp_path, clip):
    folder = tmp_path / "clip"
    model, tokenizer = build_tiny_clip(folder)
    text, image = load_clip_boxes(str(folder))
    reference = clip_boxes(model, tokenizer)
    assert image.spec == reference.image.spec and text.spec == reference.text.spec
    assert load_image_box(str(folder)).spec == image.spec
    vit = tmp_path / "vit"
    tiny_vision().save_pretrained(vit)
    box = load_image_box(str(vit))
    assert isinstance(box, VisionEncoderBox) and box.spec.output_dim == 32
    with pytest.raises(ConfigError, match="not an image-text pair.*CLIP"):
        load_clip_boxes(str(vit))


def test_offline_or_missing_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(BackboneNotFoundError, match="exotune-tests/no-such-clip"):
        load_clip_boxes("exotune-tests/no-such-clip")
    with pytest.raises(BackboneNotFoundError, match="does not exist"):
        load_image_box(str(tmp_path / "nothing" / "here"))


# -- open_clip -------------------------------------------------------------------------------------


def test_open_clip_layout_with_a_stand_in_model():
    from exotune.boxes.open_clip import open_clip_boxes

    model = StandInOpenCLIP()
    text, image = open_clip_boxes(model, stand_in_tokenizer)
    captions = ["a red circle", "the big blue square"]
    batch = text.embed(captions)
    assert batch.embeds.shape[1] == 6  # trimmed to the longest text; padded back inside the box
    with torch.no_grad():
        torch.testing.assert_close(
            text.forward(batch.embeds, batch.mask), model.encode_text(stand_in_tokenizer(captions))
        )
        pixels = torch.randn(2, *IMAGE_SIZE)
        torch.testing.assert_close(image.forward(pixels), model.encode_image(pixels))
    assert text.spec.model_digest == image.spec.model_digest and text.spec.output_dim == 8
    adapted = GrayBoxModel(text)  # shift + extra token: the box takes the longer sequence
    assert adapted(captions).shape == (2, 8)
    with pytest.raises(ConfigError, match="no entry points"):
        open_clip_boxes(model, stand_in_tokenizer, entry_points="all")


def test_open_clip_library(tmp_path):
    open_clip = pytest.importorskip("open_clip", reason="the 'open-clip' extra (open_clip_torch) is not installed")
    from exotune.boxes.open_clip import load_open_clip_boxes

    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    (tmp_path / "exotune-tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "exotune-tiny.json")
    text, image = load_open_clip_boxes("exotune-tiny")
    model = ImageTextRetriever(text, image)
    images = [draw_shape("circle", "red"), draw_shape("square", "blue")]
    data = ImageCaptionData(images, ["a red circle", "a blue square"], [0, 1])
    model.loss(data).backward()
    assert all(p.grad is not None for p in model.trainable_parameters())
    assert set(model.evaluate(data)) >= {"t2i_recall@1", "i2t_recall@10"}


# -- command line --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip-ckpt")
    build_tiny_clip(folder)
    return folder


def test_cli_image_retrieval(clip_folder, shapes, tmp_path, capsys):
    root, _, _ = shapes
    common = ["--task", "image-retrieval", "--images", str(root), "--backbone", str(clip_folder)]
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *common,
                "--captions",
                str(root / "train.csv"),
                "--epochs",
                "1",
                "--batch-size",
                "27",
                "--output-dir",
                str(run),
                "--quiet",
                "--entry-points",
                "1",
                "--temperature",
                "0.07",
            ]
        )
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and "val_mean_recall" in summary["history"][0]
    config = json.loads((run / "best" / "adapter_config.json").read_text())
    assert config["access"] == "light-gray" and config["task"]["temperature"] == 0.07
    capsys.readouterr()
    test = ["--captions", str(root / "test.csv")]
    assert main(["eval", *common, *test, "--adapter", str(run / "best"), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) >= {"t2i_recall@1", "i2t_recall@5", "mean_recall"}
    assert main(["eval", *common, *test, "--zero-shot"]) == 0
    assert "text-to-image R@1" in capsys.readouterr().out


def test_cli_image_classification(clip_folder, shape_folder, tmp_path, capsys):
    common = ["--task", "image-classification", "--images", str(shape_folder), "--backbone", str(clip_folder)]
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *common,
                "--epochs",
                "1",
                "--batch-size",
                "9",
                "--output-dir",
                str(run),
                "--quiet",
                "--pixel-adapter",
                "pixel-residual",
                "--kernel-size",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", *common, "--adapter", str(run / "best")]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["eval", *common, "--zero-shot", "--json"]) == 0
    assert "accuracy" in json.loads(capsys.readouterr().out)


def test_cli_image_training_is_repeatable_with_a_seed(clip_folder, shape_folder, tmp_path, capsys):
    from safetensors.torch import load_file

    common = [
        "train",
        "--task",
        "image-classification",
        "--images",
        str(shape_folder),
        "--backbone",
        str(clip_folder),
        "--epochs",
        "1",
        "--batch-size",
        "9",
        "--quiet",
        "--entry-tokens",
        "2",
    ]
    runs = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert main([*common, "--seed", seed, "--output-dir", str(tmp_path / name)]) == 0
        runs.append(load_file(tmp_path / name / "best" / "adapter_model.safetensors"))
    capsys.readouterr()
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])  # same seed: the same adapter
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])  # another seed: another start


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--task", "image-retrieval", "--images", "{images}", "--backbone", "{clip}"], "needs --captions"),
        (["--task", "image-classification", "--images", "{images}"], "needs --backbone"),
        (["--task", "image-classification", "--images", "{images}", "--backbone", "{vit}"], "--head linear"),
        (
            [
                "--task",
                "image-retrieval",
                "--images",
                "{images}",
                "--captions",
                "{images}/no.csv",
                "--backbone",
                "{clip}",
            ],
            "no.csv: file not found",
        ),
        (["--task", "classification", "--images", "{images}"], "--images is for --task image-retrieval"),
        (
            ["--task", "image-classification", "--images", "{images}", "--backbone", "{clip}", "--kernel-size", "2"],
            "odd",
        ),
        (
            ["--task", "image-classification", "--images", "{images}", "--remote", "http://127.0.0.1:9"],
            "could not reach http://127.0.0.1:9",
        ),
    ],
    ids=[
        "no-captions",
        "no-backbone",
        "vit-prototypes",
        "missing-captions",
        "images-for-text",
        "even-kernel",
        "remote-unreachable",
    ],
)
def test_cli_image_errors(argv, fragment, clip_folder, shape_folder, tmp_path, capsys):
    vit = tmp_path / "vit"
    tiny_vision().save_pretrained(vit)
    values = {"images": shape_folder, "clip": clip_folder, "vit": vit}
    argv = [a.format(**values) for a in argv]
    assert main(["train", *argv, "--output-dir", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err

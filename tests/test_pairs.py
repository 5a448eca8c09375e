"""SigLIP and BLIP pairs: each loads from a folder with the library's own loader and runs as the
model's own forward (SigLIP's max-length padding and last-position pooling, BLIP's [CLS] and
projections), entry tokens land where each model puts them, the image-text loss follows the
family unless the user chooses, and a trained adapter reloads and refuses the other family."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from exotune.boxes.loading import is_clip, load_clip_boxes, load_image_box
from exotune.boxes.pairs import siglip_boxes
from exotune.data.images import ImageCaptionData
from exotune.errors import ConfigError, SpecMismatchError
from exotune.graybox import DGAConfig, EntryTokensConfig
from exotune.tasks.image_text import ImageTextConfig, ImageTextRetriever

from .conftest import build_tiny_clip, draw_shape
from .pair_models import PAIR_FAMILIES, build_pair

TEXTS = ["the car is red", "a blue sky is big and very slow today", "green"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pairs")
    for family in PAIR_FAMILIES:
        build_pair(family, root / family)
    return {f: root / f for f in PAIR_FAMILIES}


def images() -> list:
    return [draw_shape("circle", "red"), draw_shape("square", "blue", seed=1), draw_shape("triangle", "green")]


def own_features(family: str, model, tokenizer, pixels):
    """Text and image features as the model's own pipeline computes them."""
    with torch.no_grad():
        if family == "siglip":  # SigLIP was trained on texts padded to the full context, no mask
            ids = tokenizer(TEXTS, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
            return (
                model.get_text_features(input_ids=ids).pooler_output,
                model.get_image_features(pixel_values=pixels).pooler_output,
            )
        enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
        text = model.text_encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        image = model.vision_model(pixel_values=pixels)
        return model.text_proj(text.last_hidden_state[:, 0]), model.vision_proj(image.last_hidden_state[:, 0])


@pytest.mark.parametrize("family", PAIR_FAMILIES)
def test_pair_loads_by_folder_and_runs_as_the_models_own_forward(folders, family):
    from transformers import AutoTokenizer

    folder = folders[family]
    text, image = load_clip_boxes(str(folder))
    assert is_clip(str(folder)) and load_image_box(str(folder)).spec == image.spec
    assert text.spec.model_digest == image.spec.model_digest  # one model, one digest
    model, tokenizer = build_pair(family)  # the same weights, in memory
    pixels = image.preprocess(images())
    expected_text, expected_image = own_features(family, model, AutoTokenizer.from_pretrained(str(folder)), pixels)
    torch.testing.assert_close(text.encode(TEXTS), expected_text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat([text.encode([t]) for t in TEXTS]), expected_text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(image.encode(images()), expected_image, atol=1e-5, rtol=1e-4)
    if family == "blip":  # the retrieval model's own image-text scores
        with torch.no_grad():
            enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
            score = model(**enc, pixel_values=pixels, use_itm_head=False).itm_score  # (images, texts)
        t, v = (torch.nn.functional.normalize(x, dim=-1) for x in (text.encode(TEXTS), image.encode(images())))
        torch.testing.assert_close(v @ t.T, score, atol=1e-5, rtol=1e-4)


def test_each_family_says_its_conventions(folders):
    text, image = load_clip_boxes(str(folders["siglip"]))
    assert (text.spec.pooling, text.spec.insert_at, image.spec.pooling) == ("last", 0, "model")
    assert text.spec.pair_loss == image.spec.pair_loss and text.spec.pair_loss.kind == "sigmoid"
    assert text.spec.pair_loss.scale == pytest.approx(10.0) and text.spec.pair_loss.bias == pytest.approx(-5.0)
    text, image = load_clip_boxes(str(folders["blip"]))
    assert (text.spec.pooling, text.spec.insert_at, image.spec.pooling) == ("cls", 1, "cls")
    assert text.spec.pair_loss is None and image.spec.output_dim == text.spec.output_dim == 16
    assert text.spec.text_max_length == 16


def layer_inputs(layer, run):
    """The hidden states (B, T, H) that ``layer``'s forward gets during ``run()`` (after the
    box's hooks have put the entry tokens in)."""
    seen, forward = [], layer.forward

    def spy(*args, **kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach())
        return forward(*args, **kwargs)

    layer.forward = spy
    try:
        run()
    finally:
        del layer.forward
    return seen[0]


@pytest.mark.parametrize(("family", "at"), [("siglip", 0), ("blip", 1)])
def test_entry_tokens_land_where_the_model_puts_them(family, at):
    model, tokenizer = build_pair(family)
    text, image = load_pair(family, model, tokenizer)
    tokens = {"layer.1": torch.randn(2, 32)}
    text_layers = (model.text_model if family == "siglip" else model.text_encoder).encoder
    text_layer = getattr(text_layers, "layers", None) or text_layers.layer
    batch = text.embed(TEXTS[:2])
    hidden = layer_inputs(text_layer[1], lambda: text.forward(batch.embeds, batch.mask, tokens))
    torch.testing.assert_close(hidden[:, at : at + 2], tokens["layer.1"].expand(2, 2, 32))
    # SigLIP runs every text at its full context; BLIP at the batch's length plus the slots
    assert hidden.shape[1] == (16 if family == "siglip" else batch.embeds.shape[1] + 2)
    pixels = image.preprocess(images()[:2])
    hidden = layer_inputs(model.vision_model.encoder.layers[1], lambda: image.forward(pixels, tokens))
    torch.testing.assert_close(hidden[:, at : at + 2], tokens["layer.1"].expand(2, 2, 32))
    assert hidden.shape[1] == 16 + at + 2  # 16 patches, [CLS] for BLIP, the two slots


def load_pair(family, model, tokenizer):
    from exotune.boxes.pairs import PAIRS

    return PAIRS[family].build(model, tokenizer, entry_points=[1], entry_tokens_max=2)


def test_siglip_padding_is_the_pad_token_whatever_the_user_sends():
    text, _ = siglip_boxes(*build_pair("siglip"))
    batch = text.embed(TEXTS)
    noisy = batch.embeds.clone()
    noisy[batch.mask == 0] = 5.0  # a user's adapter may move the padded positions too
    torch.testing.assert_close(text.forward(noisy, batch.mask), text.forward(batch.embeds, batch.mask))


def test_a_checkpoint_of_another_architecture_or_family_is_refused(folders, tmp_path):
    other = tmp_path / "blip-captioning"
    shutil.copytree(folders["blip"], other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["BlipForConditionalGeneration"]}))
    with pytest.raises(ConfigError, match="BlipForImageTextRetrieval"):
        load_clip_boxes(str(other))


def captions() -> ImageCaptionData:
    return ImageCaptionData(
        images=images(),
        captions=["a red circle", "a blue square", "a green triangle", "red"],
        caption_image=[0, 1, 2, 0],
    )


def test_the_loss_follows_the_family_unless_the_user_chooses():
    siglip = siglip_boxes(*build_pair("siglip"))
    model = ImageTextRetriever(*siglip)
    assert model.config.loss == "sigmoid"  # resolved, so that it is saved so
    assert model.log_scale.exp().item() == pytest.approx(10.0) and model.logit_bias.item() == pytest.approx(-5.0)
    assert not model.log_scale.requires_grad and not model.logit_bias.requires_grad  # the model's own: fixed
    own = ImageTextRetriever(*siglip, config=ImageTextConfig(logit_bias=-2.0))
    assert own.logit_bias.requires_grad and own.logit_bias.item() == -2.0 and own.log_scale.exp().item() == 10.0
    assert ImageTextRetriever(*siglip, config=ImageTextConfig(loss="infonce")).config.loss == "infonce"
    blip = load_pair("blip", *build_pair("blip"))
    assert ImageTextRetriever(*blip).config.loss == "infonce"
    chosen = ImageTextRetriever(*blip, config=ImageTextConfig(loss="sigmoid"))
    assert chosen.log_scale.requires_grad and chosen.logit_bias.item() == -10.0  # the user's own, SigLIP's start
    with pytest.raises(ConfigError, match="loss must be one of"):
        ImageTextConfig(loss="softmax")
    with pytest.raises(ConfigError, match="logit_scale must be > 0"):
        ImageTextConfig(logit_scale=0.0)


def test_sigmoid_loss_is_siglips():
    model = ImageTextRetriever(*siglip_boxes(*build_pair("siglip")))
    t = torch.nn.functional.normalize(torch.randn(3, 32), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    owner = torch.tensor([0, 1, 0])  # two captions of image 0: both positives
    expected = 0.0
    for i in range(3):
        for j in range(2):
            z = 1.0 if owner[i] == j else -1.0
            expected -= math.log(torch.sigmoid(z * (10.0 * (t[i] @ v[j]) - 5.0)).item())
    assert model.sigmoid_loss(t, v, owner).item() == pytest.approx(expected / 3, rel=1e-5)


@pytest.mark.parametrize("family", PAIR_FAMILIES)
def test_one_training_step_then_save_and_load(folders, family, tmp_path):
    pair = load_clip_boxes(str(folders[family]), entry_points="all", entry_tokens_max=2)
    lga = [DGAConfig.variant("both", entry_tokens=EntryTokensConfig(tokens=2), modality=m) for m in ("text", "image")]
    model = ImageTextRetriever(*pair, *lga)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    loss = model.loss(captions())
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("entry" in k for k in changed) and any(k.startswith("text_tower") for k in changed)
    assert ("logit_bias" in before) == (family == "siglip") and "logit_bias" not in changed
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["task"]
    assert saved["loss"] == ("sigmoid" if family == "siglip" else "infonce")
    loaded = ImageTextRetriever.from_pretrained(tmp_path / "adapter", *pair)
    torch.testing.assert_close(loaded.encode_texts(TEXTS), model.encode_texts(TEXTS))
    other = load_clip_boxes(
        str(folders["blip" if family == "siglip" else "siglip"]), entry_points="all", entry_tokens_max=2
    )
    with pytest.raises(SpecMismatchError):
        ImageTextRetriever.from_pretrained(tmp_path / "adapter", *other)


def test_cli_trains_a_siglip_pair_with_its_loss_or_the_chosen_one(folders, tmp_path, capsys):
    from exotune.cli import main

    from .conftest import write_shapes

    rows = write_shapes(tmp_path / "img", 1)
    (tmp_path / "c.csv").write_text("image,caption\n" + "".join(f"{f},a {c} {s}\n" for f, c, s in rows))
    common = [
        "train",
        "--task",
        "image-retrieval",
        "--images",
        str(tmp_path / "img"),
        "--captions",
        str(tmp_path / "c.csv"),
        "--backbone",
        str(folders["siglip"]),
        "--epochs",
        "1",
        "--quiet",
        "--entry-points",
        "all",
    ]
    for loss, expected in ((None, "sigmoid"), ("infonce", "infonce")):
        run = tmp_path / f"run-{expected}"
        assert main([*common, "--output-dir", str(run), *(["--loss", loss] if loss else [])]) == 0
        assert json.loads((run / "best" / "adapter_config.json").read_text())["task"]["loss"] == expected
    capsys.readouterr()


def test_clip_pairs_keep_their_specs():
    from exotune.boxes import clip_boxes

    text, image = clip_boxes(*build_tiny_clip())
    assert text.spec.pair_loss is None and "pair_loss" not in text.spec.to_dict()  # fingerprints unchanged
    assert ImageTextRetriever(text, image).config.loss == "infonce"

"""SigLIP and BLIP pairs served as two towers (``exotune serve --kind clip``): the served specs
are the owner's keyed ones, remote gradients equal local ones, DGA and LGA train a few steps
through ``connect()`` on both towers, and a saved adapter reloads on the served pair and is
refused by another backbone (the other family, or the same family with other weights)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")

from exotune.boxes.loading import load_clip_boxes  # noqa: E402
from exotune.boxes.remote import connect  # noqa: E402
from exotune.errors import ConfigError, SpecMismatchError  # noqa: E402
from exotune.graybox import DGAConfig, EntryTokensConfig  # noqa: E402
from exotune.tasks.image_text import ImageTextRetriever  # noqa: E402

from .pair_models import PAIR_FAMILIES, build_pair  # noqa: E402
from .test_pairs import TEXTS, captions  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
LIGHT = ["--level", "light-gray", "--entry-points", "all", "--entry-tokens-max", "2"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("served-pairs")
    built = {f: root / f for f in PAIR_FAMILIES}
    for family, folder in built.items():
        build_pair(family, folder)
    built["siglip-other"] = root / "siglip-other"  # the same family, other weights
    build_pair("siglip", built["siglip-other"], seed=1)
    built["secret"] = root / "secret"
    return built


def served(folders, name: str, *extra: str):
    """The pair ``exotune serve --kind clip`` serves from ``folders[name]``, connected in-process."""
    from fastapi.testclient import TestClient

    from exotune.cli import build_parser
    from exotune.cli.serve import build_server

    argv = ["serve", "--model", str(folders[name]), "--kind", "clip", "--no-auth", *LIGHT, *extra]
    app = build_server(build_parser().parse_args([*argv, "--owner-secret-file", str(folders["secret"])]))
    return connect("http://testserver", client=TestClient(app))


def configs(lga: bool) -> list[DGAConfig]:
    tokens = EntryTokensConfig(tokens=2) if lga else None
    return [DGAConfig.variant("both", entry_tokens=tokens, modality=m) for m in ("text", "image")]


@pytest.mark.parametrize("family", PAIR_FAMILIES)
@pytest.mark.parametrize("stateless", [False, True])
def test_served_pair_gives_the_local_pairs_gradients(folders, family, stateless, capsys):
    far = served(folders, family, *(["--stateless"] if stateless else []))
    secret = folders["secret"].read_text().strip()
    local = load_clip_boxes(str(folders[family]), owner_secret=secret, entry_points="all", entry_tokens_max=2)
    assert far.text.spec == local.text.spec and far.image.spec == local.image.spec  # pair_loss included
    models = [ImageTextRetriever(*pair, *configs(lga=True)) for pair in (local, far)]
    models[1].load_state_dict(models[0].state_dict())
    for model in models:
        torch.manual_seed(5)  # InfoNCE draws each image's target caption
        model.loss(captions()).backward()
    for (k, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters(), strict=True):
        if a.requires_grad:
            # BLIP's tiny towers give gradients of very different sizes: tolerances scale with each
            # tensor's largest gradient, so that summation order alone cannot fail the comparison
            scale = float(a.grad.abs().max())
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4 * scale + 1e-6, msg=k)
    capsys.readouterr()


@pytest.mark.parametrize("family", PAIR_FAMILIES)
@pytest.mark.parametrize("lga", [False, True], ids=["dga", "lga"])
def test_dga_and_lga_train_through_a_served_pair_and_reload(folders, family, lga, tmp_path, capsys):
    far = served(folders, family)
    model = ImageTextRetriever(*far, *configs(lga))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        loss = model.loss(captions())
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert {"text_tower", "image_tower"} <= changed  # both towers' adapters learnt
    assert any("entry" in k and not torch.equal(v, before[k]) for k, v in model.state_dict().items()) == lga
    model.save_pretrained(tmp_path / "adapter")
    loaded = ImageTextRetriever.from_pretrained(tmp_path / "adapter", *far)
    torch.testing.assert_close(loaded.encode_texts(TEXTS), model.encode_texts(TEXTS))
    others = ["blip" if family == "siglip" else "siglip"] + (["siglip-other"] if family == "siglip" else [])
    for other in others:
        with pytest.raises(SpecMismatchError):
            ImageTextRetriever.from_pretrained(tmp_path / "adapter", *served(folders, other))
    capsys.readouterr()


# -- the model's own scale: BLIP's learned temperature, SigLIP's logit scale and bias ----------


def blip_with_temperature(folder, temp: float = 0.05):
    """A BLIP retrieval checkpoint that keeps its learned temperature ``temp`` (as the original
    BLIP retrieval model does; the transformers class drops it on load)."""
    model, tokenizer = build_pair("blip")
    model.register_buffer("temp", torch.tensor(temp))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_blip_states_its_learned_temperature_and_the_task_starts_from_it(folders, tmp_path):
    import math

    from exotune.boxes.pairs import blip_boxes
    from exotune.tasks.image_text import ImageTextConfig

    pair = load_clip_boxes(str(blip_with_temperature(tmp_path / "blip-temp")))
    assert pair.text.spec.pair_loss == pair.image.spec.pair_loss
    assert pair.text.spec.pair_loss.kind == "softmax" and pair.text.spec.pair_loss.scale == pytest.approx(20.0)
    model = ImageTextRetriever(*pair)
    assert model.log_scale.item() == pytest.approx(math.log(20.0)) and model.log_scale.requires_grad
    assert model.config.temperature == pytest.approx(0.05) and model.config.loss == "infonce"  # saved resolved
    chosen = ImageTextRetriever(*pair, config=ImageTextConfig(temperature=0.1))
    assert chosen.log_scale.item() == pytest.approx(math.log(10.0))  # the user's choice wins
    in_memory = build_pair("blip")[0]
    in_memory.register_buffer("temp", torch.tensor(0.05))
    assert blip_boxes(in_memory, build_pair("blip")[1]).text.spec.pair_loss.scale == pytest.approx(20.0)
    plain = load_clip_boxes(str(folders["blip"]))  # a checkpoint without one: no scale stated, the default
    assert plain.text.spec.pair_loss is None and "pair_loss" not in plain.text.spec.to_dict()
    assert ImageTextRetriever(*plain).config.temperature == pytest.approx(0.02)
    assert plain.text.spec.model_digest != pair.text.spec.model_digest  # the temperature is the model's
    with pytest.raises(ConfigError, match="temperature must be"):
        ImageTextConfig(temperature=0.0)


def test_served_pairs_carry_their_models_scale(folders, tmp_path, capsys):
    import math

    folders = {**folders, "blip-temp": blip_with_temperature(tmp_path / "blip-temp", temp=0.04)}
    blip = ImageTextRetriever(*served(folders, "blip-temp"))
    assert blip.log_scale.item() == pytest.approx(math.log(25.0)) and blip.config.loss == "infonce"
    siglip = ImageTextRetriever(*served(folders, "siglip"))
    assert siglip.config.loss == "sigmoid" and not siglip.log_scale.requires_grad
    assert siglip.log_scale.exp().item() == pytest.approx(10.0) and siglip.logit_bias.item() == pytest.approx(-5.0)
    capsys.readouterr()


def test_a_siglip2_checkpoint_is_refused_by_name(tmp_path):
    import transformers as hf

    from exotune.boxes.loading import load_image_box

    if not hasattr(hf, "Siglip2Model"):
        pytest.skip("this transformers has no Siglip2Model")
    from .conftest import VISION

    text = dict(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    vision = {k: v for k, v in VISION.items() if k != "image_size"}
    config = hf.Siglip2Config(text_config=text, vision_config={**vision, "num_hidden_layers": 1})
    hf.Siglip2Model(config).save_pretrained(tmp_path / "siglip2")
    for load in (load_clip_boxes, load_image_box):
        with pytest.raises(ConfigError, match=r"SigLIP2 \(siglip2\).*NaFlex.*supported image-text families: CLIP"):
            load(str(tmp_path / "siglip2"))

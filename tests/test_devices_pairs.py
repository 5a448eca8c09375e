"""Devices and precision for image-text pairs (CLIP, SigLIP, BLIP, open_clip's layout) and the
image tasks on the command line: the whole model placed and cast once, the specs unchanged,
float32 answers, autocast only for calls without gradients."""

from __future__ import annotations

import json

import pytest
import torch

from exotune.boxes import clip_boxes
from exotune.boxes.loading import load_clip_boxes, load_image_box
from exotune.boxes.open_clip import open_clip_boxes
from exotune.boxes.pairs import PAIRS
from exotune.cli import main
from exotune.errors import ConfigError

from .conftest import StandInOpenCLIP, build_tiny_clip, draw_shape, stand_in_tokenizer
from .pair_models import build_pair

pytestmark = pytest.mark.usefixtures("one_thread")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
TEXTS = ["the car is red", "a blue sky"]
LIGHT = {"entry_points": "all", "entry_tokens_max": 2}
BUILDERS = {
    "clip": lambda **o: clip_boxes(*build_tiny_clip(), **o),
    "siglip": lambda **o: PAIRS["siglip"].build(*build_pair("siglip"), **o),
    "blip": lambda **o: PAIRS["blip"].build(*build_pair("blip"), **o),
    "open_clip": lambda **o: open_clip_boxes(StandInOpenCLIP(), stand_in_tokenizer, **o),
}


def close(a: torch.Tensor, b: torch.Tensor, least: float = 0.99) -> bool:
    return bool(torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min() > least)


@pytest.mark.parametrize("family", BUILDERS)
def test_a_bf16_pair_keeps_its_specs_and_answers_in_float32(family):
    fp32, bf16 = BUILDERS[family](), BUILDERS[family](device="cpu", dtype="bf16")
    assert bf16.text.spec == fp32.text.spec and bf16.image.spec == fp32.image.spec  # adapters match either
    assert bf16.text.device == bf16.image.device == torch.device("cpu")
    batch, want = bf16.text.embed(TEXTS), fp32.text.embed(TEXTS)
    assert batch.embeds.dtype == torch.float32
    embeds = batch.embeds.clone().requires_grad_(True)
    out = bf16.text.forward(embeds, batch.mask)
    out.sum().backward()
    assert out.dtype == embeds.grad.dtype == torch.float32
    assert close(out.detach(), fp32.text.forward(want.embeds, want.mask))
    pixels = torch.randn(2, *fp32.image.spec.input_shape, generator=torch.Generator().manual_seed(0))
    x = pixels.clone().requires_grad_(True)
    seen = bf16.image.forward(x)
    seen.sum().backward()
    assert seen.dtype == x.grad.dtype == torch.float32
    assert close(seen.detach(), fp32.image.forward(pixels))


@pytest.mark.parametrize("family", ["clip", "siglip", "blip"])
def test_a_bf16_light_pair_takes_float32_entry_tokens(family):
    fp32, bf16 = BUILDERS[family](**LIGHT), BUILDERS[family](dtype="bfloat16", **LIGHT)
    for name, box in (("text", bf16.text), ("image", bf16.image)):
        spec = box.spec
        tokens = {p.name: torch.randn(2, spec.entry_dim, requires_grad=True) for p in spec.entry_points}
        if name == "text":
            batch = box.embed(TEXTS)
            out = box.forward(batch.embeds, batch.mask, tokens)
            want = fp32.text.forward(batch.embeds, batch.mask, tokens)
        else:
            pixels = torch.randn(2, *spec.input_shape, generator=torch.Generator().manual_seed(1))
            out, want = box.forward(pixels, tokens), fp32.image.forward(pixels, tokens)
        out.sum().backward()
        assert out.dtype == torch.float32 and all(t.grad.dtype == torch.float32 for t in tokens.values())
        assert close(out.detach(), want.detach())


@pytest.mark.parametrize("family", BUILDERS)
def test_pair_precision_autocasts_only_calls_without_gradients(family):
    exact, fast = BUILDERS[family](), BUILDERS[family](precision="bf16")
    assert fast.text.precision == fast.image.precision == "bf16"
    quick, want = fast.text.encode(TEXTS), exact.text.encode(TEXTS)
    assert quick.dtype == torch.float32 and not torch.equal(quick, want) and close(quick, want)
    batch = fast.text.embed(TEXTS)
    trained = fast.text.forward(batch.embeds.requires_grad_(True), batch.mask)  # a training forward: float32
    assert torch.allclose(trained, exact.text.forward(batch.embeds, batch.mask))
    pixels = torch.randn(2, *exact.image.spec.input_shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fast.image.forward(pixels), exact.image.forward(pixels))  # gradients on: fp32
    with torch.no_grad():
        quick = fast.image.forward(pixels)
    assert not torch.equal(quick, exact.image.forward(pixels)) and close(quick, exact.image.forward(pixels))


def test_a_tower_may_take_its_own_precision_but_not_its_own_device():
    model, tokenizer = build_tiny_clip()
    pair = clip_boxes(model, tokenizer, image_options={"precision": "bf16"})
    assert pair.text.precision == "fp32" and pair.image.precision == "bf16"
    for options in ({"image_options": {"device": "cpu"}}, {"text_options": {"dtype": "bf16"}}):
        with pytest.raises(ConfigError, match="place the whole model that both towers share"):
            clip_boxes(model, tokenizer, **options)
    with pytest.raises(ConfigError, match="unknown open_clip box options"):
        open_clip_boxes(StandInOpenCLIP(), stand_in_tokenizer, pooling="mean")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip-ckpt")
    build_tiny_clip(folder)
    return folder


def test_loaders_take_device_dtype_and_precision(clip_folder):
    plain = load_clip_boxes(str(clip_folder))
    pair = load_clip_boxes(str(clip_folder), device="cpu", dtype="bfloat16", precision="bf16")
    assert pair.text.spec == plain.text.spec and pair.text.precision == "bf16"
    assert close(pair.text.encode(TEXTS), plain.text.encode(TEXTS))
    image = load_image_box(str(clip_folder), device="cpu", precision="bf16")
    assert image.spec == plain.image.spec and image.precision == "bf16"


@no_cuda
@pytest.mark.parametrize("family", BUILDERS)
def test_a_pair_on_a_missing_gpu_is_refused_before_anything_runs(family):
    with pytest.raises(ConfigError, match="asks for a CUDA GPU"):
        BUILDERS[family](device="cuda:0")


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["image", "clip"])
def test_serve_places_image_and_clip_boxes(kind, tmp_path, monkeypatch):
    import exotune.boxes.loading
    from exotune.cli import build_parser
    from exotune.cli.serve import build_server

    seen = {}

    def spy(name, **options):
        seen.update(options)
        pair = clip_boxes(*build_tiny_clip(), **options)
        return pair.image if kind == "image" else pair

    monkeypatch.setattr(exotune.boxes.loading, "load_image_box" if kind == "image" else "load_clip_boxes", spy)
    monkeypatch.setenv("EXOTUNE_OWNER_SECRET", "an owner's secret for this test")
    build_server(
        build_parser().parse_args(
            [
                "serve",
                "--kind",
                kind,
                "--model",
                "x",
                "--no-auth",
                "--device",
                "cpu",
                "--dtype",
                "bfloat16",
                "--precision",
                "bf16",
            ]
        )
    )
    assert seen == {
        "access": "dark-gray",
        "device": "cpu",
        "dtype": "bfloat16",
        "precision": "bf16",
        "owner_secret": "an owner's secret for this test",
    }


@pytest.fixture(scope="module")
def shape_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    for colour in ("red", "blue"):
        (root / colour).mkdir()
        for i in range(5):
            draw_shape(["circle", "square"][i % 2], colour, seed=i).save(root / colour / f"{i}.png")
    return root


def test_image_tasks_take_device_and_precision(clip_folder, shape_folder, tmp_path, capsys):
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
                "4",
                "--output-dir",
                str(run),
                "--quiet",
                "--device",
                "cpu",
                "--precision",
                "bf16",
            ]
        )
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["device"] == "cpu"
    capsys.readouterr()
    assert main(["eval", *common, "--adapter", str(run / "best"), "--precision", "bf16", "--json"]) == 0
    assert "accuracy" in json.loads(capsys.readouterr().out)
    assert (
        main(
            [
                "predict",
                "--task",
                "image-classification",
                "--backbone",
                str(clip_folder),
                "--adapter",
                str(run / "best"),
                "--input",
                str(shape_folder / "red"),
                "--device",
                "cpu",
                "--precision",
                "bf16",
            ]
        )
        == 0
    )
    assert len(capsys.readouterr().out.strip().splitlines()) == 5


@no_cuda
@pytest.mark.parametrize("command", ["train", "eval", "predict"])
def test_image_tasks_on_a_missing_gpu_say_so(command, tmp_path, capsys):
    task = "image-classification"
    argv = {
        "train": ["--task", task, "--images", str(tmp_path), "--output-dir", str(tmp_path / "run")],
        "eval": ["--task", task, "--images", str(tmp_path), "--zero-shot"],
        "predict": ["--task", task, "--adapter", str(tmp_path), "--input", str(tmp_path)],
    }[command]
    assert main([command, *argv, "--backbone", "x", "--device", "cuda:0"]) == 2
    err = capsys.readouterr().err
    assert "asks for a CUDA GPU" in err and "Traceback" not in err

"""The device paths on a real CUDA GPU (skipped without one; benchmarks/gpu/check.sh runs them)."""

import pytest
import torch

from exotune.boxes import load_box
from exotune.graybox import DGAConfig
from exotune.tasks.classification import ClassificationConfig, TextClassifier
from exotune.train import TrainConfig, Trainer

from .conftest import backbone_module, colour_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
FAST = dict(batch_size=16, lr=2e-2, patience=None)


def test_box_on_the_gpu_answers_on_the_callers_device(tiny_backbone):
    box = load_box(str(tiny_backbone), device="cuda")
    assert box.device.type == "cuda"
    assert next(backbone_module(box).parameters()).device.type == "cuda"
    batch = box.embed(["a red car", "the sky is blue"])
    assert batch.embeds.device.type == "cuda"
    embeds = batch.embeds.cpu().requires_grad_(True)  # the user's side on the CPU
    out = box.forward(embeds, batch.mask.cpu())
    assert out.device.type == "cpu"
    out.sum().backward()
    assert embeds.grad is not None and embeds.grad.device.type == "cpu"
    assert box.encode(["a red car"]).device.type == "cpu"


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_the_gpu(tiny_backbone, precision, tmp_path):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    box = load_box(str(tiny_backbone), device="cuda", precision=precision)
    train, val = colour_data(64, seed=0), colour_data(30, seed=1)
    model = TextClassifier(box, train.label_names, DGAConfig(), ClassificationConfig(head="linear"))
    result = Trainer(TrainConfig(epochs=2, **FAST), tmp_path, progress=False, device="cuda", precision=precision).fit(
        model, train, val
    )
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in model.parameters())
    assert result.summary()["device"].startswith("cuda") and result.summary()["precision"] == precision
    again = TextClassifier.from_pretrained(tmp_path / "best", load_box(str(tiny_backbone)))  # on the CPU, fp32
    assert again.evaluate(val)["accuracy"] == pytest.approx(model.evaluate(val)["accuracy"], abs=0.1)


def test_user_on_the_gpu_with_a_box_on_the_cpu(tiny_backbone):
    box = load_box(str(tiny_backbone), device="cpu")
    train, val = colour_data(48, seed=0), colour_data(20, seed=1)
    model = TextClassifier(box, train.label_names, DGAConfig())
    Trainer(TrainConfig(epochs=1, **FAST), progress=False, device="cuda:0").fit(model, train, val)
    assert model.encoder.device.type == "cuda" and box.device.type == "cpu"


def test_a_served_box_on_the_gpu(tiny_backbone):
    from .serve_helpers import input_grads, make_app, remote

    local = load_box(str(tiny_backbone))
    with remote(make_app(load_box(str(tiny_backbone), device="cuda", dtype="bfloat16"))) as box:
        out, grad, _ = input_grads(box, local, ["a red car", "the sky is very blue today"])
        want, want_grad, _ = input_grads(local, local, ["a red car", "the sky is very blue today"])
        assert torch.nn.functional.cosine_similarity(out, want).min() > 0.99
        assert torch.nn.functional.cosine_similarity(grad.flatten(1), want_grad.flatten(1)).min() > 0.95


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_image_text_training_on_the_gpu(precision, tmp_path):
    """A CLIP pair on the GPU, the user's side there too: the losses' targets follow the logits."""
    from exotune.boxes import clip_boxes
    from exotune.data.images import ImageCaptionData
    from exotune.tasks.image_text import ImageTextRetriever

    from .conftest import build_tiny_clip, write_shapes

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    rows = write_shapes(tmp_path / "img", 1)
    images = [str(tmp_path / "img" / f) for f, _, _ in rows]
    data = ImageCaptionData(
        captions=[f"a {c} {s}" for _, c, s in rows], caption_image=list(range(len(rows))), images=images, name="shapes"
    )
    text, image = clip_boxes(*build_tiny_clip(), device="cuda", precision=precision)
    model = ImageTextRetriever(text, image)
    Trainer(
        TrainConfig(epochs=1, batch_size=6, lr=1e-2, patience=None, select_metric="mean_recall"),
        progress=False,
        device="cuda",
        precision=precision,
    ).fit(model, data, data)
    assert all(p.device.type == "cuda" for p in model.parameters()) and text.device.type == "cuda"
    assert 0 <= model.evaluate(data)["mean_recall"] <= 1

"""Devices and precision: resolving a device, a box's weights on its device and in its format,
autocast training and inference, and adapters that do not depend on either."""

import json

import pytest
import torch

from exotune.boxes import load_box
from exotune.cli import boxes as cli_boxes
from exotune.cli import main
from exotune.devices import (
    DEVICE_CHOICES,
    PRECISIONS,
    autocast,
    grad_scaler,
    parse_dtype,
    resolve_device,
)
from exotune.errors import ConfigError
from exotune.graybox import DGAConfig
from exotune.tasks.classification import ClassificationConfig, TextClassifier
from exotune.train import TrainConfig, Trainer

from .conftest import backbone_module, colour_data

FAST = dict(batch_size=16, lr=2e-2, patience=None)
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


# -- resolving a device ---------------------------------------------------------------------------


def test_auto_and_cpu_without_cuda(monkeypatch):
    fake_gpus(monkeypatch, 0)
    assert resolve_device("auto") == resolve_device(None) == resolve_device("CPU") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_is_a_clear_error(monkeypatch, name):
    fake_gpus(monkeypatch, 0)
    with pytest.raises(ConfigError, match="asks for a CUDA GPU.*--device cpu"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["gpu", "cpu:1", "cuda:x", "cuda:-1", "mps", ""])
def test_malformed_device_names(name):
    with pytest.raises(ConfigError, match="device must be one of"):
        resolve_device(name)


def test_gpu_index_beyond_the_machine(monkeypatch):
    fake_gpus(monkeypatch, 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="has 2 CUDA GPU"):
        resolve_device("cuda:2")


@pytest.mark.parametrize(("gpus", "expected"), [(2, torch.device("cuda", 1)), (1, torch.device("cpu"))])
def test_auto_under_torchrun_takes_the_local_rank_gpu(monkeypatch, gpus, expected):
    fake_gpus(monkeypatch, gpus)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resolve_device("auto") == expected  # one GPU per rank, or none (as distributed.setup)


def test_dtypes_and_precisions():
    assert parse_dtype("bfloat16") is parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype(None) is None and parse_dtype(torch.float16) is torch.float16
    for bad in ("int8", "float64"):
        with pytest.raises(ConfigError, match="dtype must be one of"):
            parse_dtype(bad)
    with pytest.raises(ConfigError, match="precision must be one of"):
        autocast("fp8", "cpu")
    assert not grad_scaler("bf16", "cpu").is_enabled() and grad_scaler("fp16", "cpu").is_enabled()


def test_the_command_line_knows_the_same_choices():
    assert cli_boxes.PRECISIONS == PRECISIONS and cli_boxes.DEVICE_CHOICES == DEVICE_CHOICES


# -- the box: its device and format ---------------------------------------------------------------


@no_cuda
def test_a_cuda_box_without_cuda_is_refused_before_anything_runs(tiny_backbone):
    with pytest.raises(ConfigError, match="asks for a CUDA GPU"):
        load_box(str(tiny_backbone), device="cuda:0")


def test_a_bf16_box_has_the_same_spec_and_answers_in_float32(tiny_backbone):
    fp32 = load_box(str(tiny_backbone), device="cpu")
    bf16 = load_box(str(tiny_backbone), dtype="bfloat16")
    assert bf16.spec == fp32.spec  # the digest is of the weights as loaded: adapters match either box
    assert backbone_module(bf16).embeddings.word_embeddings.weight.dtype == torch.bfloat16
    assert fp32.device == bf16.device == torch.device("cpu")
    batch = bf16.embed(["a red car", "the sky is blue today"])
    assert batch.embeds.dtype == torch.float32
    embeds = batch.embeds.clone().requires_grad_(True)
    out = bf16.forward(embeds, batch.mask)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert embeds.grad is not None and embeds.grad.dtype == torch.float32
    want = fp32.forward(fp32.embed(["a red car", "the sky is blue today"]).embeds, batch.mask)
    assert torch.nn.functional.cosine_similarity(out.detach(), want).min() > 0.99


def test_inference_precision_autocasts_only_calls_without_gradients(tiny_backbone):
    fp32 = load_box(str(tiny_backbone))
    bf16 = load_box(str(tiny_backbone), precision="bf16")
    texts = ["a red car", "the sky is very blue", "a small green leaf"]
    seen = []
    layer = backbone_module(bf16).encoder.layer[0].attention.self.query
    hook = layer.register_forward_hook(lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).dtype))
    fast, exact = bf16.encode(texts), fp32.encode(texts)
    assert seen == [torch.bfloat16] and fast.dtype == torch.float32
    assert not torch.equal(fast, exact)
    assert torch.nn.functional.cosine_similarity(fast, exact).min() > 0.99
    batch = bf16.embed(texts)
    out = bf16.forward(batch.embeds.requires_grad_(True), batch.mask)  # a training forward: float32
    hook.remove()
    assert seen[-1] == torch.float32
    assert torch.allclose(out, fp32.forward(batch.embeds, batch.mask))
    with pytest.raises(ConfigError, match="precision must be one of"):
        load_box(str(tiny_backbone), precision="half")


def test_an_image_box_in_bf16_keeps_its_spec_and_answers_in_float32():
    from exotune.boxes.image import VisionEncoderBox

    from .conftest import tiny_vision

    fp32, bf16 = VisionEncoderBox(tiny_vision()), VisionEncoderBox(tiny_vision(), device="cpu", dtype="bf16")
    fast = VisionEncoderBox(tiny_vision(), precision="bf16")
    assert bf16.spec == fp32.spec == fast.spec and bf16.device == torch.device("cpu")
    pixels = torch.randn(2, *fp32.spec.input_shape, generator=torch.Generator().manual_seed(0))
    x = pixels.clone().requires_grad_(True)
    out = bf16.forward(x)
    out.sum().backward()
    assert out.dtype == x.grad.dtype == torch.float32
    want = fp32.forward(pixels)
    assert torch.nn.functional.cosine_similarity(out.detach(), want).min() > 0.98
    assert torch.equal(fast.forward(pixels), want)  # with gradients on: fp32
    with torch.no_grad():
        quick = fast.forward(pixels)
    assert not torch.equal(quick, want) and torch.nn.functional.cosine_similarity(quick, want).min() > 0.98


@no_cuda
def test_an_image_box_on_a_missing_gpu_is_refused():
    from exotune.boxes.image import VisionEncoderBox

    from .conftest import tiny_vision

    with pytest.raises(ConfigError, match="asks for a CUDA GPU"):
        VisionEncoderBox(tiny_vision(), device="cuda")


def test_the_device_anchor_follows_the_model_and_is_not_saved(tiny_box):
    model = TextClassifier(tiny_box, ["red", "blue"], DGAConfig())
    assert model.encoder.device == torch.device("cpu")
    assert not any("anchor" in k for k in model.state_dict())


# -- training and adapters ------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_keeps_float32_tensors(tiny_box, precision, tmp_path):
    train, val = colour_data(64, seed=0), colour_data(30, seed=1)
    model = TextClassifier(tiny_box, train.label_names, DGAConfig(), ClassificationConfig(head="linear"))
    seen = []
    hook = (
        backbone_module(tiny_box)
        .encoder.layer[0]
        .attention.self.query.register_forward_hook(
            lambda m, i, o: (
                seen.append((o[0] if isinstance(o, tuple) else o).dtype) if torch.is_grad_enabled() else None
            )
        )
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = Trainer(TrainConfig(epochs=2, **FAST), tmp_path, progress=False, device="cpu", precision=precision).fit(
        model, train, val
    )
    hook.remove()
    want = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert seen and set(seen) == {want}  # the box's training forwards ran under autocast
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())  # it trained
    assert result.summary()["precision"] == precision and result.summary()["device"] == "cpu"
    saved = (tmp_path / "best" / "adapter_config.json").read_text()
    assert precision not in saved and "device" not in json.loads(saved)


def test_adapters_cross_precisions(tiny_backbone, tmp_path):
    """An adapter trained in bf16 loads and runs in fp32, and one trained in fp32 in bf16."""
    train, val = colour_data(64, seed=0), colour_data(40, seed=1)
    for trained, other in (("bf16", "fp32"), ("fp32", "bf16")):
        box = load_box(str(tiny_backbone), precision=trained)
        model = TextClassifier(box, train.label_names, DGAConfig())
        Trainer(TrainConfig(epochs=2, **FAST), tmp_path / trained, progress=False, precision=trained).fit(
            model, train, val
        )
        again = TextClassifier.from_pretrained(
            tmp_path / trained / "best", load_box(str(tiny_backbone), precision=other)
        )
        mine, theirs = model.predict_proba(val.texts), again.predict_proba(val.texts)
        assert (mine.argmax(-1) == theirs.argmax(-1)).float().mean() >= 0.9
        assert (mine - theirs).abs().max() < 0.1


def saved_scaler(run) -> dict:
    from exotune.artifacts import read_tensors, unflatten_state

    meta = json.loads((run / "last" / "trainer_state.json").read_text())
    return unflatten_state(meta["skeleton"], read_tensors(run / "last" / "checkpoint.safetensors"))["scaler"]


def test_fp16_resume_continues_from_the_saved_gradient_scaler(tiny_box, tmp_path, monkeypatch):
    import exotune.train

    train, val = colour_data(64, seed=0), colour_data(30, seed=1)

    def quick(precision, device):  # doubles every step: a state that differs from a fresh scaler's
        return torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1, enabled=precision == "fp16")

    monkeypatch.setattr(exotune.train, "grad_scaler", quick)
    cfg = dict(FAST, patience=None)
    model = TextClassifier(tiny_box, train.label_names, DGAConfig())
    Trainer(TrainConfig(epochs=1, **cfg), tmp_path, progress=False, precision="fp16").fit(model, train, val)
    first = saved_scaler(tmp_path)
    assert first["growth_interval"] == 1 and first["scale"] != 1024.0
    monkeypatch.undo()  # the resumed run's own scaler starts fresh (65536, every 2000 steps) ...
    again = TextClassifier(tiny_box, train.label_names, DGAConfig())
    Trainer(TrainConfig(epochs=2, **cfg), tmp_path, progress=False, precision="fp16").fit(
        again, train, val, resume=True
    )
    second = saved_scaler(tmp_path)
    assert second["growth_interval"] == 1  # ... and continues from the saved one: its state, not a fresh one's
    for precision in ("bf16", "fp32"):  # no scaler there: its state is left aside, and none is saved
        Trainer(TrainConfig(epochs=3, **cfg), tmp_path, progress=False, precision=precision).fit(
            again, train, val, resume=True
        )
        assert saved_scaler(tmp_path) == {}


def test_a_malformed_scaler_state_is_refused():
    from exotune.devices import grad_scaler, restore_scaler
    from exotune.errors import ArtifactError

    good = {"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 100, "_growth_tracker": 3}
    scaler = grad_scaler("fp16", "cpu")
    restore_scaler(scaler, good, "ckpt")
    assert scaler.get_scale() == 512.0
    for bad in ({**good, "scale": float("inf")}, {**good, "growth_interval": 1.5}, {"scale": 1.0}, [1, 2]):
        with pytest.raises(ArtifactError, match="ckpt: the gradient scaler"):
            restore_scaler(grad_scaler("fp16", "cpu"), bad, "ckpt")


def test_trainer_refuses_a_bad_precision_or_device():
    with pytest.raises(ConfigError, match="precision must be one of"):
        Trainer(precision="bfloat8")
    with pytest.raises(ConfigError, match="device must be one of"):
        Trainer(device="tpu")


# -- the command line -----------------------------------------------------------------------------


@no_cuda
def test_train_with_cuda_on_a_machine_without_it_says_so(tiny_backbone, tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"the car is {c},{c}\n" for c in ("red", "blue") * 6))
    code = main(
        [
            "train",
            "--file",
            str(path),
            "--backbone",
            str(tiny_backbone),
            "--epochs",
            "1",
            "--quiet",
            "--output-dir",
            str(tmp_path / "run"),
            "--device",
            "cuda",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "asks for a CUDA GPU" in err and "Traceback" not in err


def test_train_then_eval_records_device_and_precision(tiny_backbone, tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"the car is {c},{c}\n" for c in ("red", "blue") * 6))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--file",
                str(path),
                "--backbone",
                str(tiny_backbone),
                "--epochs",
                "1",
                "--quiet",
                "--output-dir",
                str(run),
                "--device",
                "cpu",
                "--precision",
                "bf16",
                "--val-fraction",
                "0.34",
            ]
        )
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["device"] == "cpu"
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--file",
                str(path),
                "--backbone",
                str(tiny_backbone),
                "--adapter",
                str(run / "best"),
                "--precision",
                "fp32",
                "--device",
                "auto",
                "--json",
            ]
        )
        == 0
    )
    assert "accuracy" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_serve_places_and_casts_the_box(tiny_backbone, tmp_path, monkeypatch):
    import exotune.boxes
    from exotune.cli import build_parser
    from exotune.cli.serve import build_server

    seen = {}

    def spy(name, **kwargs):
        seen.update(kwargs)
        return load_box(name, **kwargs)

    monkeypatch.setattr(exotune.boxes, "load_box", spy)
    serve = ["serve", "--model", str(tiny_backbone), "--no-auth", "--owner-secret-file", str(tmp_path / "secret")]
    build_server(build_parser().parse_args([*serve, "--device", "cpu", "--dtype", "bfloat16"]))
    assert seen["device"] == "cpu" and seen["dtype"] == "bfloat16" and seen["precision"] == "fp32"


def test_served_precision_autocasts_only_the_no_gradient_routes(tiny_backbone, tmp_path):
    """``exotune serve --precision bf16``: encode (and scores) under autocast over float32 weights;
    a training forward and its backward exact."""
    pytest.importorskip("fastapi")
    from exotune.cli import build_parser
    from exotune.cli.serve import build_server

    from .serve_helpers import input_grads, remote

    args = build_parser().parse_args(
        [
            "serve",
            "--model",
            str(tiny_backbone),
            "--no-auth",
            "--no-basis",
            "--owner-secret-file",
            str(tmp_path / "secret"),
            "--precision",
            "bf16",
        ]
    )
    local, texts = load_box(str(tiny_backbone)), ["a red car", "the sky is very blue today"]
    with remote(build_server(args), token=None) as box:
        fast, exact = box.encode(texts), local.encode(texts)
        assert not torch.equal(fast, exact) and torch.nn.functional.cosine_similarity(fast, exact).min() > 0.99
        out, grad, _ = input_grads(box, local, texts)
        want, want_grad, _ = input_grads(local, local, texts)
        assert torch.allclose(out, want, atol=1e-5) and torch.allclose(grad, want_grad, atol=1e-5)


@no_cuda
def test_serve_on_a_missing_gpu_is_refused_before_the_model_loads(tiny_backbone, tmp_path, monkeypatch):
    import exotune.boxes
    from exotune.cli import build_parser
    from exotune.cli.serve import build_server

    monkeypatch.setattr(exotune.boxes, "load_box", lambda *a, **k: pytest.fail("the model was loaded"))
    args = build_parser().parse_args(
        [
            "serve",
            "--model",
            str(tiny_backbone),
            "--no-auth",
            "--owner-secret-file",
            str(tmp_path / "secret"),
            "--device",
            "cuda:0",
        ]
    )
    with pytest.raises(ConfigError, match="asks for a CUDA GPU"):
        build_server(args)


def test_a_served_bf16_box_answers_float32_forwards_gradients_and_encodings(tiny_backbone):
    from .serve_helpers import input_grads, make_app, remote

    local = load_box(str(tiny_backbone))
    with remote(make_app(load_box(str(tiny_backbone), dtype="bfloat16"))) as box:
        texts = ["a red car", "the sky is very blue today"]
        out, grad, _ = input_grads(box, local, texts)
        want, want_grad, _ = input_grads(local, local, texts)
        assert out.dtype == grad.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(out, want).min() > 0.99
        assert torch.nn.functional.cosine_similarity(grad.flatten(1), want_grad.flatten(1)).min() > 0.95
        encoded = box.encode(texts)
        assert encoded.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(encoded, local.encode(texts)).min() > 0.99


def test_precision_suite_measures_both_precisions_on_one_model(tiny_backbone, tmp_path):
    from exotune.bench import classification, precision
    from exotune.bench.sources import UserFiles

    for name, n, seed in (("train", 90, 0), ("test", 40, 1)):
        data = colour_data(n, seed)
        rows = "".join(f"{t},{data.label_names[y]}\n" for t, y in zip(data.texts, data.labels, strict=True))
        (tmp_path / f"{name}.csv").write_text("text,label\n" + rows)
    files = UserFiles(str(tmp_path / "train.csv"), str(tmp_path / "test.csv"))
    budget = classification.Budget(epochs=1, batch_size=16, max_train=60)
    rec = precision.measure("dga-both", "colours", files, budget, str(tiny_backbone), 2)
    assert rec["n_test"] == 40 and rec["n_train"] == 60
    for p in ("fp32", "bf16"):
        assert 0 <= rec[p]["accuracy"] <= 1 and len(rec[p]["all_seconds"]) == 2
    assert 0 <= rec["agreement"] <= 1 and rec["speedup"] > 0
    table = precision.markdown(
        {
            "command": "exotune bench precision",
            "date": "d",
            "machine": "m",
            "backbone": "b",
            "repeats": 2,
            "budget": {"epochs": 1},
            "records": [rec],
        }
    )
    assert "| colours | dga-both | cpu | 40 |" in table

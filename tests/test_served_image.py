"""Image boxes over the wire: a ViT / DINOv2 / CLIP image tower served at dark- and light-gray,
a CLIP model as two towers under one server and one token set, pixels as float32 safetensors;
remote gradients equal local ones; bad pixels and the text routes refused with a 4xx."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")

from exotune.boxes import VisionEncoderBox, clip_boxes, wire  # noqa: E402
from exotune.boxes.remote import connect  # noqa: E402
from exotune.boxes.remote_image import RemoteImageBox  # noqa: E402
from exotune.errors import AccessError, AuthenticationError  # noqa: E402
from exotune.graybox import DGAConfig, EntryTokensConfig, GrayBoxModel  # noqa: E402
from exotune.serve import ServeConfig, create_towers_app  # noqa: E402
from exotune.tasks.image_text import ImageTextRetriever  # noqa: E402

from .conftest import build_tiny_clip, draw_shape, tiny_vision  # noqa: E402
from .serve_helpers import TOKEN, make_app, make_client  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGES = [draw_shape("circle", "red", 0), draw_shape("square", "blue", 1), draw_shape("triangle", "green", 2)]


def remote(app, token: str = TOKEN):
    from fastapi.testclient import TestClient

    return connect("http://testserver", token=token, client=TestClient(app))


def grads_of(model: GrayBoxModel) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(3)
    out = model(IMAGES)
    (out @ torch.randn(out.shape[1], generator=torch.Generator().manual_seed(1))).pow(2).sum().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def same_adapters(local: GrayBoxModel, far: GrayBoxModel) -> None:
    far.load_state_dict(local.state_dict())
    with torch.no_grad():
        for p in far.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    local.load_state_dict(far.state_dict())


@pytest.mark.parametrize(
    "kind, light, stateless",
    [("vit", False, False), ("dinov2", True, False), ("vit", True, True), ("clip", False, True)],
)
def test_served_image_box_gives_local_gradients(kind, light, stateless):
    options = {"entry_points": "all", "entry_tokens_max": 2} if light else {}
    if kind == "clip":
        box = clip_boxes(*build_tiny_clip(), image_options=options).image
    else:
        box = VisionEncoderBox(tiny_vision(kind), **options)
    far_box = remote(make_app(box, stateless=stateless))
    assert isinstance(far_box, RemoteImageBox) and far_box.spec == box.spec
    assert far_box.spec.image == box.spec.image and far_box.spec.input_shape == (3, 32, 32)
    cfg = DGAConfig.variant("both", entry_tokens=EntryTokensConfig(tokens=2) if light else None, modality="image")
    local, far = GrayBoxModel(box, cfg), GrayBoxModel(far_box, cfg)
    same_adapters(local, far)
    out_l, grads_l = grads_of(local)
    out_r, grads_r = grads_of(far)
    torch.testing.assert_close(out_r, out_l, rtol=0, atol=1e-5)
    assert grads_l.keys() == grads_r.keys() and any(k.startswith("entry_tokens.") for k in grads_l) == light
    for k in grads_l:
        torch.testing.assert_close(grads_r[k], grads_l[k], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(far_box.encode(IMAGES), box.encode(IMAGES), rtol=0, atol=1e-5)


def test_clip_towers_under_one_server_and_one_token_set():
    pair = clip_boxes(*build_tiny_clip())
    app = create_towers_app({"text": pair.text, "image": pair.image}, [TOKEN], ServeConfig())
    far = remote(app)
    assert far.text.spec == pair.text.spec and far.image.spec == pair.image.spec
    torch.manual_seed(0)
    local_model = ImageTextRetriever(*pair)
    far_model = ImageTextRetriever(*far)
    far_model.load_state_dict(local_model.state_dict())
    from exotune.data import ImageCaptionData

    data = ImageCaptionData(IMAGES, ["a red circle", "a blue square", "a green triangle"], [0, 1, 2])
    for model in (local_model, far_model):
        torch.manual_seed(5)
        model.loss(data).backward()
    for (k, a), (_, b) in zip(local_model.named_parameters(), far_model.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=k)
    with pytest.raises(AuthenticationError):
        remote(app, token="not-a-token")
    assert make_client(app, None).get("/image/v1/spec").status_code == 401


def test_bad_pixels_and_text_routes_are_refused():
    box = VisionEncoderBox(tiny_vision())
    client = make_client(make_app(box, max_body_bytes=200_000))
    good = torch.randn(2, 3, 32, 32)
    assert (
        client.post(
            "/v1/forward", content=wire.encode({"pixels": good}), headers={"Content-Type": wire.MEDIA_TYPE}
        ).status_code
        == 200
    )
    bad = {
        "wrong shape": {"pixels": torch.randn(2, 3, 16, 16)},
        "wrong dtype": {"pixels": good.long()},
        "NaN": {"pixels": good.clone().fill_(float("nan"))},
        "missing": {"embeds": torch.randn(2, 4, 32)},
        "extra": {"pixels": good, "mask": torch.ones(2, 4, dtype=torch.long)},
        "entry at dark-gray": {"pixels": good, "entry.layer.0": torch.randn(1, 32)},
        "too large": {"pixels": torch.randn(20, 3, 32, 32)},
    }
    for what, tensors in bad.items():
        r = client.post("/v1/forward", content=wire.encode(tensors), headers={"Content-Type": wire.MEDIA_TYPE})
        assert 400 <= r.status_code < 500 and r.json()["error"], what
    for route in ("/v1/embed", "/v1/encode", "/v1/scores"):
        r = client.post(route, json={"texts": ["a"], "labels": ["b"]})
        assert r.status_code == 404 and "takes pixels" in r.json()["message"]
    r = client.post("/v1/forward", content=b"\x00garbage", headers={"Content-Type": wire.MEDIA_TYPE})
    assert r.status_code == 400
    spec = client.get("/v1/spec").json()
    assert spec["spec"]["image"]["mean"] == [0.5, 0.5, 0.5] and "pixels" in spec["wire"]
    assert "vit" not in str(spec).lower()  # the architecture is not named
    far = remote(make_app(box))
    with pytest.raises(AccessError):
        far.forward(good, {"layer.0": torch.randn(1, 32)})


def test_cli_serves_image_boxes_and_image_tasks_train_remotely(tmp_path, capsys):
    from exotune.cli import build_parser, main
    from exotune.cli.serve import build_server

    from .conftest import write_shapes
    from .serve_helpers import running_server
    from .test_sketch import write_sketchy

    clip = tmp_path / "clip"
    build_tiny_clip(clip)
    rows = write_shapes(tmp_path / "img", 1)
    (tmp_path / "c.csv").write_text("image,caption\n" + "".join(f"{f},a {c} {s}\n" for f, c, s in rows))
    serve = ["serve", "--model", str(clip), "--no-auth", "--owner-secret-file", str(tmp_path / "secret")]
    app = build_server(
        build_parser().parse_args([*serve, "--kind", "clip", "--level", "light-gray", "--entry-points", "1"])
    )
    assert set(app.state.services) == {"text", "image"}
    with running_server(app) as url:
        common = ["--images", str(tmp_path / "img"), "--remote", url]
        assert (
            main(
                [
                    "train",
                    "--task",
                    "image-retrieval",
                    *common,
                    "--captions",
                    str(tmp_path / "c.csv"),
                    "--epochs",
                    "1",
                    "--output-dir",
                    str(tmp_path / "ret"),
                    "--quiet",
                    "--entry-tokens",
                    "1",
                ]
            )
            == 0
        )
        config = __import__("json").loads((tmp_path / "ret" / "best" / "adapter_config.json").read_text())
        assert config["access"] == "light-gray"
        assert (
            main(
                [
                    "eval",
                    "--task",
                    "image-retrieval",
                    *common,
                    "--captions",
                    str(tmp_path / "c.csv"),
                    "--adapter",
                    str(tmp_path / "ret" / "best"),
                ]
            )
            == 0
        )
        sketchy = write_sketchy(tmp_path / "sketchy")  # the served pair's image tower, twice
        assert (
            main(
                [
                    "train",
                    "--task",
                    "sketch-retrieval",
                    "--sketches",
                    str(sketchy),
                    "--remote",
                    url,
                    "--epochs",
                    "1",
                    "--batch-size",
                    "8",
                    "--output-dir",
                    str(tmp_path / "sk"),
                    "--quiet",
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "eval",
                    "--task",
                    "sketch-retrieval",
                    "--sketches",
                    str(sketchy),
                    "--remote",
                    url,
                    "--adapter",
                    str(tmp_path / "sk" / "best"),
                ]
            )
            == 0
        )
        capsys.readouterr()
    image_app = build_server(build_parser().parse_args([*serve, "--kind", "image"]))
    assert image_app.state.service.spec.modality == "image"
    with running_server(image_app) as url:
        assert (
            main(
                [
                    "train",
                    "--task",
                    "image-retrieval",
                    "--images",
                    str(tmp_path / "img"),
                    "--remote",
                    url,
                    "--captions",
                    str(tmp_path / "c.csv"),
                    "--output-dir",
                    str(tmp_path / "x"),
                    "--quiet",
                ]
            )
            == 2
        )
        assert "serves one image box" in capsys.readouterr().err
    with pytest.raises(Exception, match="dark-gray or light-gray"):
        build_server(build_parser().parse_args([*serve, "--kind", "image", "--level", "black"]))


def test_reliability_pixels_section_holds():
    from types import SimpleNamespace

    from exotune.bench.reliability import pixels
    from exotune.bench.reliability.report import markdown

    result = pixels.run(SimpleNamespace(wire_examples=90))
    assert result["ok"], (result["failed"], result["problems"], result["status_classes"])
    assert (
        result["cases"] == 90 and result["status_classes"].get("4xx", 0) > 60 and "5xx" not in result["status_classes"]
    )
    assert result["checks"] >= 3 * 6 + 3 and result["relative_gradient_error_after"] < 1e-4
    doc = {
        "quick": True,
        "command": "x",
        "date": "d",
        "machine": "m",
        "backbone": "b",
        "seconds": 1.0,
        "ok": True,
        "summary": {
            "load_held": True,
            "soak_held": True,
            "bad_inputs_tried": 0,
            "server_errors_5xx": 0,
            "faults_survived": "0/0",
            "data_lost": "none",
        },
        "sections": {"pixels": result},
    }
    assert "| image box (pixels) | held:" in markdown(doc)


# -- the owner's secret keys a served image box's digest ---------------------------------------

SECRET, OTHER = "s" * 32, "t" * 32


def pair_of(family: str, **options):
    from exotune.boxes.open_clip import open_clip_boxes
    from exotune.boxes.pairs import PAIRS

    from .conftest import StandInOpenCLIP, stand_in_tokenizer
    from .pair_models import build_pair

    if family == "open_clip":
        return open_clip_boxes(StandInOpenCLIP(), stand_in_tokenizer, **options)
    model, tokenizer = build_tiny_clip() if family == "clip" else build_pair(family)
    return PAIRS[family].build(model, tokenizer, **options)


@pytest.mark.parametrize("family", ["vit", "clip", "siglip", "blip", "open_clip"])
def test_owner_secret_keys_the_image_digest(family):
    def digests(**options):
        if family == "vit":
            box = VisionEncoderBox(tiny_vision(), **options)
            return box.spec.model_digest, box.spec.model_digest
        text, image = pair_of(family, **options)
        return text.spec.model_digest, image.spec.model_digest

    public, keyed = digests(), digests(owner_secret=SECRET)
    assert keyed[0] == keyed[1] and public[0] == public[1]  # both towers name one model
    assert keyed != public  # the public weights' hash is not shown
    assert digests(owner_secret=SECRET) == keyed and digests(owner_secret=OTHER) != keyed  # stable per owner


def test_owner_secret_hides_which_layers_an_image_box_exposes():
    light = {"entry_points": [1], "entry_tokens_max": 2}
    assert [p.name for p in VisionEncoderBox(tiny_vision(), **light).spec.entry_points] == ["layer.1"]
    keyed = VisionEncoderBox(tiny_vision(), owner_secret=SECRET, **light)
    assert [p.name for p in keyed.spec.entry_points] == ["point.0"]
    assert keyed.forward(torch.randn(2, 3, 32, 32), {"point.0": torch.randn(2, 32)}).shape == (2, 32)
    text, image = clip_boxes(*build_tiny_clip(), owner_secret=SECRET, **light)
    assert [p.name for p in text.spec.entry_points] == [p.name for p in image.spec.entry_points] == ["point.0"]


@pytest.mark.parametrize("kind", ["image", "clip"])
def test_cli_serves_image_boxes_under_the_keyed_digest(tmp_path, kind):
    from exotune.boxes.loading import load_clip_boxes, load_image_box
    from exotune.cli import build_parser
    from exotune.cli.serve import build_server

    folder = tmp_path / "clip"
    build_tiny_clip(folder)
    secret_file = tmp_path / "secret"

    def served():
        app = build_server(
            build_parser().parse_args(
                ["serve", "--model", str(folder), "--no-auth", "--kind", kind, "--owner-secret-file", str(secret_file)]
            )
        )
        services = getattr(app.state, "services", None) or {"": app.state.service}
        return {name: service.spec.model_digest for name, service in services.items()}

    first = served()
    assert secret_file.is_file() and served() == first  # the same secret after a restart: the same digest
    public = load_image_box(str(folder)).spec.model_digest
    assert public == load_clip_boxes(str(folder)).text.spec.model_digest
    assert public not in first.values() and len(set(first.values())) == 1
    keyed = load_image_box(str(folder), owner_secret=secret_file.read_text().strip())
    assert keyed.spec.model_digest in first.values()


def test_served_image_box_replays_an_expired_handle():
    box = VisionEncoderBox(tiny_vision(), entry_points="all", entry_tokens_max=2)
    app = make_app(box)
    far = remote(app)
    pixels = torch.randn(2, 3, 32, 32)
    tokens = {"layer.1": torch.randn(2, 32)}
    grads = []
    for target, stats in ((box, None), (far, far.stats)):
        x, t = pixels.clone().requires_grad_(), tokens["layer.1"].clone().requires_grad_()
        out = target.forward(x, {"layer.1": t})
        if stats is not None:
            app.state.service.handles.expire_all()  # the handle is gone before the backward
        out.pow(2).sum().backward()
        grads.append((x.grad, t.grad))
    assert far.stats["replays"] == 1
    for local, served in zip(*grads, strict=True):
        torch.testing.assert_close(served, local, rtol=1e-4, atol=1e-6)
    with remote(make_app(box)) as closing:
        assert closing.forward(pixels).shape == (2, 32)

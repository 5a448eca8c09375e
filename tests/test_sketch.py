"""Sketch-to-photo retrieval: drawn sketches (outlines) and photos (filled shapes), the Sketchy and
two-folder layouts, the class split, the metrics, training and the artifact. Tiny random ViT."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from exotune.bench.tiny_clip import draw_sketch
from exotune.boxes import VisionEncoderBox
from exotune.data.sketches import SketchPhotoData, load_sketch_photos, load_sketchy
from exotune.errors import ConfigError, DataError, SpecMismatchError
from exotune.graybox import DGAConfig
from exotune.tasks.sketch import SketchConfig, SketchPhotoRetriever, sketch_metrics
from exotune.train import TrainConfig, Trainer

from .conftest import SHAPES, draw_shape, tiny_vision

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = [*SHAPES, "ring"]


def write_sketchy(root, per_class: int = 3, sketches_per_photo: int = 2):
    """Sketchy's layout: photo/tx_000000000000/<class>/<id>.jpg and sketch/.../<id>-<n>.png."""
    for c, shape in enumerate(CLASSES):
        photos = root / "photo" / "tx_000000000000" / shape
        sketches = root / "sketch" / "tx_000000000000" / shape
        photos.mkdir(parents=True)
        sketches.mkdir(parents=True)
        for k in range(per_class):
            stem = f"n{c:02d}_{k}"
            colour = ["red", "green", "blue"][k % 3]
            draw_shape("circle" if shape == "ring" else shape, colour, seed=10 * c + k).save(photos / f"{stem}.jpg")
            for n in range(1, sketches_per_photo + 1):
                draw_sketch(shape, seed=100 * c + 10 * k + n).save(sketches / f"{stem}-{n}.png")
    return root


@pytest.fixture(scope="module")
def sketchy(tmp_path_factory):
    return load_sketchy(write_sketchy(tmp_path_factory.mktemp("sketchy")))


@pytest.fixture(scope="module")
def box():
    return VisionEncoderBox(tiny_vision())


def test_sketchy_layout_pairs_and_class_split(sketchy):
    assert sketchy.label_names == sorted(CLASSES) and len(sketchy) == 24 and len(sketchy.photos) == 12
    for i, p in enumerate(sketchy.sketch_photo):
        assert p >= 0 and sketchy.photos[p].rsplit("/", 1)[1][:-4] == sketchy.sketches[i].rsplit("/", 1)[1][:-6]
    seen, unseen = sketchy.class_split(0.25, seed=0)
    assert len(set(unseen.sketch_labels)) == 1 and not set(seen.sketch_labels) & set(unseen.sketch_labels)
    assert set(unseen.photo_labels) == set(unseen.sketch_labels) and len(unseen.photos) == 3
    assert all(unseen.photo_labels[p] == y for p, y in zip(unseen.sketch_photo, unseen.sketch_labels, strict=True))
    train, val = sketchy.split(0.25)
    assert len(train) + len(val) == 24 and val.photos == sketchy.photos


def test_two_folder_layout_and_errors(tmp_path):
    for side, draw in (("sk", lambda s, i: draw_sketch(s, i)), ("ph", lambda s, i: draw_shape(s, "red", i))):
        for shape in SHAPES:
            (tmp_path / side / shape).mkdir(parents=True)
            for i in range(2):
                draw(shape, i).save(tmp_path / side / shape / f"{shape}{i}.png")
    data = load_sketch_photos(tmp_path / "sk", tmp_path / "ph")
    assert len(data) == 6 and all(p >= 0 for p in data.sketch_photo)  # same file names: paired
    (tmp_path / "ph" / "star").mkdir()
    with pytest.raises(DataError, match=r"\['star'\] on one side only"):
        load_sketch_photos(tmp_path / "sk", tmp_path / "ph")
    (tmp_path / "sk" / "star").mkdir()
    with pytest.raises(DataError, match=r"empty class folders \['star'\]"):
        load_sketch_photos(tmp_path / "sk", tmp_path / "ph")
    (tmp_path / "sk" / "star" / "bad.png").write_bytes(b"not a png")
    draw_shape("circle", "blue").save(tmp_path / "ph" / "star" / "s.png")
    with pytest.raises(DataError, match="bad.png: not a readable image"):
        load_sketch_photos(tmp_path / "sk", tmp_path / "ph")
    with (
        warnings.catch_warnings(),
        pytest.raises(DataError, match=r"no readable sketches or photos left in classes \['star'\]"),
    ):
        warnings.simplefilter("ignore")
        load_sketch_photos(tmp_path / "sk", tmp_path / "ph", skip_bad=True)
    with pytest.raises(DataError, match="not Sketchy's layout"):
        load_sketchy(tmp_path)
    with pytest.raises(DataError, match="not a photo of its class"):
        SketchPhotoData(["a"], [0], ["b", "c"], [1, 0], ["x", "y"], [0])


def test_metric_values():
    gallery = torch.eye(4)  # photos of classes 0, 0, 1, 1
    queries = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.2, 1.0]])
    m = sketch_metrics(queries, gallery, [0, 1], [0, 0, 1, 1], [1, 3])
    # query 0 ranks photos 0, 2, 1, 3: relevant at 1 and 3 -> AP (1 + 2/3) / 2; query 1: 3, 2 -> AP 1
    assert m["map@all"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    assert m["precision@100"] == pytest.approx(0.5)  # top 4 of 4: half relevant
    assert m["acc@1"] == 0.5  # query 1's own photo is first, query 0's is not
    assert (
        sketch_metrics(queries, gallery, [0, 1], [0, 0, 1, 1])["acc@1"]
        != sketch_metrics(queries, gallery, [0, 1], [0, 0, 1, 1])["acc@1"]
    )  # NaN: no pairing known


def test_training_raises_map_on_seen_classes(box, sketchy):
    torch.manual_seed(0)
    model = SketchPhotoRetriever(box, config=SketchConfig(temperature=0.1))
    before = model.evaluate(sketchy)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=2e-2)
    for _ in range(30):
        opt.zero_grad()
        model.loss(sketchy).backward()
        opt.step()
    after = model.evaluate(sketchy)
    assert after["map@all"] > before["map@all"] + 0.05
    assert {k.split(".")[0] for k in model.state_dict()} == {"sketch_tower", "photo_tower", "log_scale"}


def test_two_boxes_save_and_load(box, sketchy, tmp_path):
    other = VisionEncoderBox(tiny_vision("dinov2"))
    torch.manual_seed(0)
    model = SketchPhotoRetriever(box, other, photo_dga=DGAConfig.variant("output-only", modality="image"))
    Trainer(
        TrainConfig(epochs=1, batch_size=8, lr=1e-2, select_metric="map@all", patience=None),
        tmp_path / "run",
        progress=False,
    ).fit(model, *sketchy.split(0.25))
    folder = tmp_path / "run" / "best"
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["type"] == "dga-sketch-photo-retriever" and cfg["photo_dga"]["input_adapter"] is None
    loaded = SketchPhotoRetriever.from_pretrained(folder, box, other)
    assert loaded.evaluate(sketchy) == model.evaluate(sketchy)
    with pytest.raises(SpecMismatchError, match="photo box"):
        SketchPhotoRetriever.from_pretrained(folder, box, box)
    with pytest.raises(ConfigError, match="temperature"):
        SketchConfig(temperature=0)

"""Text-video retrieval: frames decoded by PyAV from videos written here, frame folders, the
loaders (CSV/JSONL, VATEX, MSR-VTT), the video tower, metrics and the artifact. Tiny random CLIP."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from exotune.data.videos import (
    VideoCaptionData,
    load_video_captions,
    read_frames,
    sample_indices,
)
from exotune.errors import ConfigError, DataError
from exotune.graybox import DGAConfig
from exotune.tasks.metrics import video_text_metrics
from exotune.tasks.video_text import VideoTextConfig, VideoTextRetriever
from exotune.train import TrainConfig, Trainer

from .conftest import COLOURS, SHAPES, draw_shape

av = pytest.importorskip("av", reason="the 'video' extra (PyAV) is not installed")

pytestmark = pytest.mark.usefixtures("one_thread")


def write_video(path, shape: str, colour: str, frames: int = 6, seed: int = 0) -> None:
    """A short video of one drawn shape moving a little from frame to frame (MPEG-4, 32x32)."""
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.asarray(draw_shape(shape, colour, seed=seed * 100 + i))
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_videos(folder, per_pair: int = 1, seed: int = 0) -> list[tuple[str, str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(per_pair):
        for colour in COLOURS:
            for shape in SHAPES:
                name = f"{colour}-{shape}-{k}.mp4"
                write_video(folder / name, shape, colour, seed=seed * 1000 + len(rows))
                rows.append((name, colour, shape))
    return rows


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """18 training videos (2 per colour and shape) and 9 test ones, each with a CSV of captions."""
    root = tmp_path_factory.mktemp("videos")
    out = {}
    for name, per_pair, seed in (("train", 2, 0), ("test", 1, 1)):
        rows = write_videos(root / name, per_pair, seed)
        with open(root / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["video", "caption"])
            writer.writerows([f"{name}/{file}", f"a {colour} {shape}"] for file, colour, shape in rows)
        out[name] = load_video_captions(root / f"{name}.csv")
    return root, out["train"], out["test"]


# -- frames ------------------------------------------------------------------------------------


def test_uniform_sampling():
    assert sample_indices(8, 4) == [1, 3, 5, 7]
    assert sample_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # fewer frames than asked: repeats
    assert sample_indices(1, 2) == [0, 0]


def test_frames_decoded_from_a_file_and_a_folder(tmp_path):
    write_video(tmp_path / "v.mp4", "circle", "red", frames=6)
    frames = read_frames(tmp_path / "v.mp4", 3)
    assert len(frames) == 3 and frames[0].size == (32, 32) and frames[0].mode == "RGB"
    centre = frames[1].getpixel((16, 16))
    assert isinstance(centre, tuple) and len(centre) == 3
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        draw_shape("square", "blue", seed=i).save(folder / f"{i:03d}.png")
    assert [f.tobytes() for f in read_frames(folder, 2)] == [
        draw_shape("square", "blue", seed=i).tobytes() for i in sample_indices(5, 2)
    ]


def test_bad_videos_are_named_or_skipped(tmp_path):
    write_video(tmp_path / "good.mp4", "circle", "red")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00 not a video at all")
    (tmp_path / "empty").mkdir()
    (tmp_path / "c.csv").write_text("video,caption\ngood.mp4,a red circle\nbroken.mp4,x\nnowhere.mp4,y\nempty,z\n")
    with pytest.raises(DataError, match=r"video .*broken.mp4: cannot be decoded.*c.csv, line 3"):
        load_video_captions(tmp_path / "c.csv")
    with pytest.warns(UserWarning, match="skipped 3 missing or unreadable videos"):
        data = load_video_captions(tmp_path / "c.csv", skip_bad=True)
    assert isinstance(data, VideoCaptionData) and data.skipped == 3 and data.captions == ["a red circle"]
    with pytest.raises(DataError, match="broken.mp4 cannot be decoded"):
        read_frames(tmp_path / "broken.mp4", 2)
    with pytest.raises(DataError, match="nowhere.mp4: file not found"):
        read_frames(tmp_path / "nowhere.mp4", 2)
    (tmp_path / "c.csv").write_text("clip,caption\ngood.mp4,a\n")
    with pytest.raises(DataError, match="line 2: no column 'video'"):
        load_video_captions(tmp_path / "c.csv")


def test_vatex_and_msrvtt_layouts(tmp_path):
    write_video(tmp_path / "abc_000001_000011.mp4", "circle", "red")
    (tmp_path / "def_000002_000012").mkdir()  # a folder of frames
    draw_shape("square", "blue").save(tmp_path / "def_000002_000012" / "0001.jpg")
    vatex = [
        {"videoID": "abc_000001_000011", "enCap": ["a red circle", "a circle"], "chCap": ["x"]},
        {"videoID": "def_000002_000012", "enCap": ["a blue square"]},
    ]
    (tmp_path / "vatex.json").write_text(json.dumps(vatex))
    data = load_video_captions(tmp_path / "vatex.json")
    assert len(data) == 3 and len(data.videos) == 2 and data.caption_image == [0, 0, 1]
    (tmp_path / "bad.json").write_text(json.dumps([{"videoID": "abc"}]))
    with pytest.raises(DataError, match="entry 0: a VATEX entry needs"):
        load_video_captions(tmp_path / "bad.json")
    msr = tmp_path / "msrvtt"
    (msr / "videos" / "all").mkdir(parents=True)
    for i, (shape, colour) in enumerate([("circle", "red"), ("square", "blue"), ("triangle", "green")]):
        write_video(msr / "videos" / "all" / f"video{i}.mp4", shape, colour)
    sentences = [
        {"video_id": f"video{i}", "caption": f"caption {i} {j}", "sen_id": 3 * i + j}
        for i in range(3)
        for j in range(2)
    ]
    (msr / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    (msr / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo1\n")
    (msr / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr2,video2,a green triangle\n")
    train = load_video_captions(msr / "MSRVTT_data.json", split="train")
    assert len(train) == 4 and len(train.videos) == 2 and train.name == "msrvtt-train"
    test = load_video_captions(msr / "MSRVTT_data.json", split="test")
    assert test.captions == ["a green triangle"] and test.videos[0].endswith("video2.mp4")
    with pytest.raises(DataError, match="needs a split"):
        load_video_captions(msr / "MSRVTT_data.json")
    (msr / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo7\n")
    with pytest.raises(DataError, match=r"MSRVTT_train.9k.csv, line 3: video 'video7' has no caption"):
        load_video_captions(msr / "MSRVTT_data.json", split="train")


# -- metrics -------------------------------------------------------------------------------------


def test_video_metric_values():
    texts = torch.eye(3)[[0, 2, 1]]  # caption 1 describes video 1 but is nearest video 2
    videos = torch.eye(3)
    m = video_text_metrics(texts, videos, [0, 1, 2])
    assert m["t2v_recall@1"] == pytest.approx(1 / 3) and m["t2v_recall@5"] == 1.0
    assert m["t2v_median_rank"] == 2.0 and m["t2v_mean_rank"] == pytest.approx(5 / 3)
    assert m["v2t_median_rank"] == 2.0 and set(m) >= {"v2t_recall@10", "mean_recall"}


# -- the model -----------------------------------------------------------------------------------


def test_config_is_validated():
    with pytest.raises(ConfigError, match="frames"):
        VideoTextConfig(frames=0)
    with pytest.raises(ConfigError, match="temporal_pooling"):
        VideoTextConfig(temporal_pooling="max")
    assert VideoTextConfig.from_dict(VideoTextConfig(frames=4).to_dict()).frames == 4


def test_mean_of_frames_at_start(pair, videos):
    _, train, _ = videos
    clip_out = pair.image.encode(read_frames(train.videos[0], 3))  # (3, O)
    for pooling in ("mean", "attention"):
        model = VideoTextRetriever(
            *pair,
            DGAConfig.variant("none"),
            DGAConfig.variant("none"),
            VideoTextConfig(frames=3, temporal_pooling=pooling),
        )
        with torch.no_grad():
            torch.testing.assert_close(model.image_tower([train.videos[0]])[0], clip_out.mean(0))


def test_training_lowers_loss_and_caches_frames_when_output_only(pair, videos):
    _, train, test = videos
    torch.manual_seed(0)
    cfg = VideoTextConfig(temperature=0.07, frames=2, temporal_pooling="attention")
    model = VideoTextRetriever(*pair, image_dga=DGAConfig.variant("output-only", modality="image"), config=cfg)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=2e-2)
    with torch.no_grad():
        before = float(model.loss(train))
    for _ in range(25):
        opt.zero_grad()
        model.loss(train).backward()
        opt.step()
    with torch.no_grad():
        assert float(model.loss(train)) < before - 0.3
    # output-only: every video's frames crossed the box once, never again
    assert model.image_tower.frames_sent == 2 * len(train.videos)
    assert model.image_tower.pool.score.abs().sum() > 0
    metrics = model.evaluate(test)
    assert set(metrics) >= {"t2v_recall@1", "v2t_median_rank", "mean_recall"}


def test_pixel_adapter_gets_gradients_and_frames_are_resent(pair, videos):
    _, train, _ = videos
    model = VideoTextRetriever(*pair, config=VideoTextConfig(frames=2))
    part = train.subset(range(4))
    model.loss(part).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters())
    model.loss(part).backward()
    assert model.image_tower.frames_sent == 2 * 2 * len(part.videos)


def test_trains_saves_and_loads(pair, videos, tmp_path):
    _, train, test = videos
    torch.manual_seed(0)
    model = VideoTextRetriever(*pair, config=VideoTextConfig(frames=2, temporal_pooling="attention"))
    Trainer(
        TrainConfig(epochs=1, batch_size=9, lr=1e-2, select_metric="mean_recall", patience=None),
        tmp_path / "run",
        progress=False,
    ).fit(model, *train.split(0.2))
    folder = tmp_path / "run" / "best"
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["type"] == "dga-video-text-retriever" and cfg["task"]["frames"] == 2
    loaded = VideoTextRetriever.from_pretrained(folder, *pair)
    assert loaded.config.temporal_pooling == "attention"
    assert loaded.evaluate(test) == model.evaluate(test)

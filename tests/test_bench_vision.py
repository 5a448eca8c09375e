"""``exotune bench vision``: the image-text, video and sketch suites end to end on a tiny random
CLIP and drawn images, videos or sketches (``--quick``), and on the user's own data."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

import exotune.bench
from exotune.bench import vision
from exotune.cli import main

from .conftest import build_tiny_clip, write_shapes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def in_process(monkeypatch):
    """Runs in this process (a spawned one per run would only re-import the library)."""
    monkeypatch.setattr(exotune.bench, "run_isolated", lambda fn, *args: fn(*args))


def test_quick_writes_the_results_and_resumes_from_its_log(tmp_path, in_process, capsys):
    out = tmp_path / "out"
    assert main(["bench", "vision", "--quick", "--out-dir", str(out)]) == 0
    doc = json.loads((out / "vision.json").read_text())
    assert doc["suite"] == "vision" and doc["backbone"] == "tiny-random-clip" and doc["quick"] is True
    methods = {(r["method"], r["variant"]) for r in doc["records"]}
    assert methods == {
        ("zero-shot", "bare towers"),
        ("dga", "input-only"),
        ("dga", "output-only"),
        ("dga", "both"),
        ("lga", "tokens=2"),
        ("lora", "r=8, both towers"),
        ("full-ft", "all, both towers"),
    }
    main_rows = [r for r in doc["records"] if r["metric"] == "mean_recall"]
    assert len(main_rows) == 7 and all(0.0 <= r["mean"] <= 1.0 for r in main_rows)
    rows = {r["method"]: r for r in main_rows if r["method"] in ("zero-shot", "lora", "full-ft")}
    trained = [r for r in main_rows if r["method"] != "zero-shot"]
    gray = [r for r in trained if r["access"] != "white"]
    assert {r["lr"] for r in gray} == {doc["budget"]["lr"]}  # one budget for every gray-box method
    assert {m: rows[m]["lr"] for m in ("lora", "full-ft")} == vision.METHOD_LR  # their own, as in classification
    assert all(r["trainable_params"] > 0 and r["n_test"] == 18 and r["train_seconds"] > 0 for r in trained)
    assert rows["zero-shot"]["trainable_params"] == 0
    # LoRA trains a share of the weights, full fine-tuning every weight of both towers (and the temperature)
    assert rows["lora"]["trainable_params"] < rows["full-ft"]["trainable_params"]
    assert all(rows[m]["peak_memory_mb"] > 0 for m in ("lora", "full-ft"))
    table = (out / "vision.md").read_text()
    assert "| lga | tokens=2 | light-gray | mean_recall |" in table
    assert (
        "| lora | r=8, both towers | white | mean_recall |" in table
        and "| full-ft | all, both towers | white |" in table
    )
    if exotune.plotting.pyplot() is not None:
        assert (out / "vision_params.png").is_file()
    assert len((out / ".vision.runs.jsonl").read_text().splitlines()) == 7
    capsys.readouterr()
    assert main(["bench", "vision", "--quick", "--out-dir", str(out), "--methods", "dga-both"]) == 0
    assert "logged earlier, reused" in capsys.readouterr().err


def _captions(data, split: str, per_pair: int, seed: int):
    """Drawn images under ``data/split/`` and their caption file ``data/split.csv``."""
    rows = write_shapes(data / split, per_pair, seed)
    path = data / f"{split}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for file, colour, shape in rows:
            w.writerow([f"{split}/{file}", f"a photo of a {colour} {shape}"])
    return path


def test_own_caption_files_and_a_clip_folder(tmp_path, in_process):
    clip = tmp_path / "clip"
    build_tiny_clip(clip)
    data = tmp_path / "shapes-data"
    train, test = _captions(data, "train", 2, seed=1), _captions(data, "test", 1, seed=2)
    out = tmp_path / "out"
    args = ["bench", "vision", "--backbone", str(clip), "--out-dir", str(out), "--seeds", "0", "--epochs", "1"]
    methods = ["--methods", "zero-shot", "dga-both", "lora", "--lr", "lora=0.01"]
    assert main([*args, "--data", str(train), "--test-file", str(test), *methods]) == 0
    doc = json.loads((out / "vision.json").read_text())
    assert doc["backbone"] == str(clip) and doc["data"]["captions"]["test"] == str(test)
    rows = {r["method"]: r for r in doc["records"] if r["metric"] == "mean_recall"}
    assert set(rows) == {"zero-shot", "dga", "lora"}
    assert rows["lora"]["lr"] == 0.01 and rows["dga"]["lr"] == doc["budget"]["lr"]
    assert rows["dga"]["dataset"] == "shapes-data"  # a generic file stem: the folder names it
    assert (rows["dga"]["n_test"], rows["dga"]["n_test_images"], rows["dga"]["n_train"]) == (9, 9, 16)


def test_unreadable_images_stop_the_suite_or_are_skipped(tmp_path, in_process, capsys):
    clip = tmp_path / "clip"
    build_tiny_clip(clip)
    data = tmp_path / "shapes-data"
    train, test = _captions(data, "train", 2, seed=1), _captions(data, "test", 1, seed=2)
    bad = sorted((data / "train").iterdir())[0]
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    args = ["bench", "vision", "--backbone", str(clip), "--out-dir", str(out), "--seeds", "0", "--epochs", "1"]
    args += ["--data", str(train), "--test-file", str(test), "--methods", "dga-output-only"]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert bad.name in err and "--skip-bad-images" in err and "Traceback" not in err
    assert main([*args, "--skip-bad-images"]) == 0
    assert "train.csv: skipped 1 missing or unreadable files" in capsys.readouterr().err
    doc = json.loads((out / "vision.json").read_text())
    assert doc["data"]["skip_bad"] is True
    assert next(r for r in doc["records"] if r["method"] == "dga")["n_train"] == 15


@pytest.mark.parametrize(
    "extra, message",
    [
        (["vision", "--quick", "--skip-bad-images"], "goes with your own images"),
        (["classification", "--quick", "--skip-bad-images"], "the vision suite's options"),
    ],
)
def test_skip_bad_images_goes_with_own_images(tmp_path, extra, message, capsys):
    assert main(["bench", *extra, "--out-dir", str(tmp_path)]) != 0
    assert message in capsys.readouterr().err


def test_quick_video_retrieval_on_drawn_videos(tmp_path, in_process):
    out = tmp_path / "out"
    methods = ["--methods", "zero-shot", "dga-output-only", "lga-2", "lora", "full-ft"]
    assert main(["bench", "vision", "--quick", "--task", "video-retrieval", "--out-dir", str(out), *methods]) == 0
    doc = json.loads((out / "vision.json").read_text())
    rows = {r["method"]: r for r in doc["records"] if r["metric"] == "mean_recall"}
    assert set(rows) == {"zero-shot", "dga", "lga", "lora", "full-ft"}
    assert all(r["dataset"] == "shape-videos" and r["task"] == "video-retrieval" for r in rows.values())
    assert all(r["n_test_videos"] == 18 and r["frames"] == vision.FRAMES for r in rows.values())
    assert {r["metric"] for r in doc["records"]} == set(vision.VIDEO_METRICS)  # the video task's metrics
    assert rows["lora"]["trainable_params"] < rows["full-ft"]["trainable_params"]
    assert "| lora | r=8, both towers | white | t2v_recall@1 |" in (out / "vision.md").read_text()


def test_own_captioned_videos(tmp_path, in_process):
    from exotune.bench.tiny_clip import shape_videos

    clip, root = tmp_path / "clip", tmp_path / "clips"
    build_tiny_clip(clip)
    files = {}
    for split, per_pair, seed in (("train", 2, 1), ("test", 1, 2)):
        data = shape_videos(root / split, per_pair, seed)
        files[split] = tmp_path / f"{split}.csv"
        with files[split].open("w", newline="") as f:
            rows = [[f"{split}/{Path(v).name}", c] for v, c in zip(data.videos, data.captions, strict=True)]
            csv.writer(f).writerows([["video", "caption"], *rows])
    out = tmp_path / "out"
    args = ["bench", "vision", "--backbone", str(clip), "--out-dir", str(out), "--seeds", "0", "--epochs", "1"]
    args += ["--task", "video-retrieval", "--data", str(files["train"]), "--test-file", str(files["test"])]
    assert main([*args, "--videos", str(root), "--methods", "dga-both", "lora"]) == 0
    doc = json.loads((out / "vision.json").read_text())
    assert doc["data"]["task"] == "video-retrieval" and doc["data"]["videos"] == str(root)
    rows = {r["method"]: r for r in doc["records"] if r["metric"] == "mean_recall"}
    assert set(rows) == {"dga", "lora"} and all(r["n_test_videos"] == 9 and r["n_train"] == 16 for r in rows.values())


def test_msrvtt_data_json_alone_is_its_train_and_test_splits(tmp_path):
    from exotune.bench.sources import CaptionFiles
    from exotune.bench.tiny_clip import draw_shape

    msr = tmp_path / "msrvtt"
    for i in range(3):  # frame folders as the videos
        (msr / "videos" / "all" / f"video{i}").mkdir(parents=True)
        draw_shape("circle", "red", seed=i).save(msr / "videos" / "all" / f"video{i}" / "0.png")
    sentences = [{"video_id": f"video{i}", "caption": f"a red circle {j}"} for i in range(3) for j in range(2)]
    (msr / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    (msr / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo1\n")
    (msr / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr2,video2,a red circle\n")
    own = CaptionFiles(str(msr / "MSRVTT_data.json"), task="video-retrieval")
    assert own.split_file and own.key()["task"] == "video-retrieval"
    train, val, test = own.load()
    assert val is None and len(train) == 4 and len(train.videos) == 2  # validation: carved from train
    assert test.captions == ["a red circle"] and test.videos[0].endswith("video2")


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "needs --backbone"),
        (["--backbone", "x"], "needs --data"),
        (["--backbone", "x", "--data", "caps.csv"], "needs --test-file"),
        (["--backbone", "x", "--beir-dir", "b"], "not --file or --beir-dir"),
        (["--backbone", "x", "--data", "c.csv", "--test-file", "t.csv", "--videos", "v"], "--videos with --task video"),
        (["--quick", "--task", "video-retrieval", "--datasets", "shapes"], "--datasets names another task's"),
    ],
)
def test_what_the_suite_needs_is_said(tmp_path, extra, message, capsys):
    assert main(["bench", "vision", "--out-dir", str(tmp_path), *extra]) != 0
    assert message in capsys.readouterr().err


def test_quick_sketch_retrieval_on_drawn_sketches(tmp_path, in_process):
    out = tmp_path / "out"
    methods = ["--methods", "zero-shot", "dga-both", "lga-2", "lora", "full-ft"]
    assert main(["bench", "vision", "--quick", "--task", "sketch-retrieval", "--out-dir", str(out), *methods]) == 0
    doc = json.loads((out / "vision.json").read_text())
    rows = {r["method"]: r for r in doc["records"] if r["metric"] == "map@all"}  # chosen on validation mAP@all
    assert set(rows) == {"zero-shot", "dga", "lga", "lora", "full-ft"}
    assert {r["metric"] for r in doc["records"]} == {"map@all", "precision@100", "acc@1"}
    # the test split: the 2 unseen classes of 5, 3 photos each, 2 sketches of each photo
    assert all(r["dataset"] == "shape-sketches" and r["task"] == "sketch-retrieval" for r in rows.values())
    assert all((r["n_test"], r["n_test_photos"], r["n_test_classes"]) == (12, 6, 2) for r in rows.values())
    assert all(0.0 <= r["mean"] <= 1.0 for r in doc["records"])
    assert all("val_map_at_all" in r and r["trainable_params"] > 0 for m, r in rows.items() if m != "zero-shot")
    assert rows["lora"]["trainable_params"] < rows["full-ft"]["trainable_params"]
    assert rows["lora"]["variant"] == "r=8, vision tower (shared)"
    table = (out / "vision.md").read_text()
    assert "| lga | tokens=2 | light-gray | map@all |" in table and "| dga | both | dark-gray | acc@1 |" in table
    assert "| full-ft | all, vision tower (shared) | white | precision@100 |" in table


def test_own_sketchy_folder(tmp_path, in_process):
    from .test_sketch import write_sketchy

    clip, root = tmp_path / "clip", write_sketchy(tmp_path / "sketchy")
    build_tiny_clip(clip)
    out = tmp_path / "out"
    args = ["bench", "vision", "--backbone", str(clip), "--out-dir", str(out), "--seeds", "0", "--epochs", "1"]
    args += ["--task", "sketch-retrieval", "--sketches", str(root), "--unseen-classes", "0.5", "--class-seed", "1"]
    assert main([*args, "--methods", "dga-output-only", "lora"]) == 0
    doc = json.loads((out / "vision.json").read_text())
    assert doc["data"]["sketches"] == str(root) and doc["data"]["unseen_classes"] == 0.5
    assert doc["data"]["class_seed"] == 1 and doc["data"]["sha256"]["sketches"] != "missing"
    rows = {r["method"]: r for r in doc["records"] if r["metric"] == "map@all"}
    assert set(rows) == {"dga", "lora"} and all(r["dataset"] == "sketchy" for r in rows.values())
    # 2 of 4 classes held out: their 6 photos and 12 sketches; the other 12 sketches train and validate
    assert all((r["n_test"], r["n_test_photos"], r["n_train"] + r["n_val"]) == (12, 6, 12) for r in rows.values())


def _sketch_folders(root: Path, empty: str | None = None) -> Path:
    """Two class folders of drawn sketches and photos under ``root``; ``empty``: a class without sketches."""
    from exotune.bench.tiny_clip import draw_shape, draw_sketch

    for shape in ("circle", "square", "triangle"):
        for side in ("sketches", "photos"):
            (root / side / shape).mkdir(parents=True)
            if side == "sketches" and shape == empty:
                continue
            for i in range(2):
                img = draw_sketch(shape, i) if side == "sketches" else draw_shape(shape, "red", i)
                img.save(root / side / shape / f"{shape}{i}.png")
    return root


@pytest.mark.parametrize(
    "folders, message",
    [
        (lambda root: (root / "nowhere", root / "photos"), "sketch folder .*nowhere does not exist"),
        (lambda root: (_sketch_folders(root, empty="square") / "sketches", root / "photos"), r"empty class.*square"),
        (lambda root: (_sketch_folders(root) / "sketches", root / "photos" / "circle"), "other class folders"),
    ],
)
def test_a_bad_sketch_folder_is_said(tmp_path, in_process, capsys, folders, message):
    sketches, photos = folders(tmp_path / "data")
    args = ["bench", "vision", "--backbone", "x", "--out-dir", str(tmp_path / "out"), "--task", "sketch-retrieval"]
    assert main([*args, "--sketches", str(sketches), "--photos", str(photos), "--methods", "dga-both"]) != 0
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backbone", "x"], "needs --sketches DIR"),
        (["--backbone", "x", "--sketches", "s", "--unseen-classes", "1.5"], r"--unseen-classes is a share"),
        (["--backbone", "x", "--sketches", "s", "--data", "c.csv"], "not caption or text files"),
        (["--quick", "--datasets", "shapes"], "--datasets names another task's"),
        (["--quick", "--unseen-classes", "0.5"], "--unseen-classes chooses the test classes of --sketches"),
    ],
)
def test_what_the_sketch_suite_needs_is_said(tmp_path, extra, message, capsys):
    assert main(["bench", "vision", "--task", "sketch-retrieval", "--out-dir", str(tmp_path), *extra]) != 0
    assert re.search(message, capsys.readouterr().err)


def test_sketch_options_go_with_the_sketch_task(tmp_path, capsys):
    args = ["bench", "vision", "--backbone", "x", "--data", "c.csv", "--test-file", "t.csv", "--sketches", "s"]
    assert main([*args, "--out-dir", str(tmp_path)]) != 0
    assert "go with --task sketch-retrieval" in capsys.readouterr().err

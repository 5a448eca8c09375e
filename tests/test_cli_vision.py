"""The command line for the vision tasks: video and sketch retrieval (train, eval, predict),
predict for image tasks, and --eval-test for image tasks. Tiny random CLIP and ViT."""

from __future__ import annotations

import csv
import json

import pytest

from exotune.cli import main

from .conftest import build_tiny_clip, draw_shape, write_shapes
from .test_sketch import write_sketchy

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip-ckpt")
    build_tiny_clip(folder)
    return folder


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    pytest.importorskip("av", reason="the 'video' extra (PyAV) is not installed")
    from .test_video import write_videos

    root = tmp_path_factory.mktemp("videos")
    for name, seed in (("train", 0), ("test", 1)):
        rows = (
            write_videos(root / "all", 1, seed)
            if name == "train"
            else [(f"frames{i}", c, s) for i, (_, c, s) in enumerate(write_shapes(root / "x", 1, seed)[:3])]
        )
        if name == "test":  # frame folders as videos
            for i, (folder, colour, shape) in enumerate(rows):
                (root / "all" / folder).mkdir()
                for k in range(3):
                    draw_shape(shape, colour, seed=10 * i + k).save(root / "all" / folder / f"{k}.png")
        with open(root / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["video", "caption"])
            writer.writerows([file, f"a {colour} {shape}"] for file, colour, shape in rows)
    return root


def test_cli_video_retrieval(clip_folder, video_root, tmp_path, capsys):
    common = ["--task", "video-retrieval", "--videos", str(video_root / "all"), "--backbone", str(clip_folder)]
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *common,
                "--captions",
                str(video_root / "train.csv"),
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--output-dir",
                str(run),
                "--quiet",
                "--frames",
                "2",
                "--temporal-pooling",
                "attention",
                "--val-fraction",
                "0.3",
                "--eval-test",
                "--test-file",
                str(video_root / "test.csv"),
            ]
        )
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    assert "val_t2v_median_rank" in summary["history"][0] and "v2t_recall@1" in summary["test"]
    config = json.loads((run / "best" / "adapter_config.json").read_text())
    assert config["task"]["frames"] == 2 and config["task"]["temporal_pooling"] == "attention"
    capsys.readouterr()
    test = ["--captions", str(video_root / "test.csv")]
    assert main(["eval", *common, *test, "--adapter", str(run / "best"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == summary["test"]
    assert main(["eval", *common, *test, "--zero-shot", "--frames", "2"]) == 0
    assert "text-to-video R@1" in capsys.readouterr().out
    (tmp_path / "captions.txt").write_text("a red circle\na blue square\n")
    assert (
        main(
            [
                "predict",
                "--task",
                "video-retrieval",
                "--backbone",
                str(clip_folder),
                "--adapter",
                str(run / "best"),
                "--input",
                str(video_root / "all" / "frames0"),
                "--input",
                str(video_root / "all" / "red-circle-0.mp4"),
                "--candidates",
                str(tmp_path / "captions.txt"),
                "--top-k",
                "2",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].endswith("red-circle-0.mp4") and lines[0].count("(") == 2


def test_cli_sketch_retrieval(clip_folder, tmp_path, capsys):
    root = write_sketchy(tmp_path / "sketchy")
    vit = clip_folder  # its image tower
    common = ["--task", "sketch-retrieval", "--sketches", str(root), "--backbone", str(vit)]
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *common,
                "--epochs",
                "1",
                "--batch-size",
                "6",
                "--output-dir",
                str(run),
                "--quiet",
                "--unseen-classes",
                "0.25",
                "--eval-test",
                "--entry-tokens",
                "1",
            ]
        )
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    assert "val_map@all" in summary["history"][0] and set(summary["test"]) == {"map@all", "precision@100", "acc@1"}
    capsys.readouterr()
    assert main(["eval", *common, "--adapter", str(run / "best"), "--unseen-classes", "0.25", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == summary["test"]  # the same unseen classes
    assert main(["eval", *common, "--zero-shot"]) == 0
    assert "mAP@all" in capsys.readouterr().out
    photos = root / "photo" / "tx_000000000000"
    sketch = next((root / "sketch" / "tx_000000000000" / "circle").iterdir())
    assert (
        main(
            [
                "predict",
                "--task",
                "sketch-retrieval",
                "--backbone",
                str(vit),
                "--adapter",
                str(run / "best"),
                "--input",
                str(sketch),
                "--photos",
                str(photos),
                "--top-k",
                "3",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.count(".jpg (") == 3


@pytest.fixture(scope="module")
def shape_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    for split, seed in (("train", 0), ("test", 1)):
        for colour in ("red", "blue"):
            (root / split / colour).mkdir(parents=True)
            for i in range(6):
                draw_shape(["circle", "square"][i % 2], colour, seed=100 * seed + i).save(
                    root / split / colour / f"{i}.png"
                )
    return root


def test_cli_image_predict_and_eval_test(clip_folder, shape_folders, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--task",
                "image-classification",
                "--images",
                str(shape_folders / "train"),
                "--backbone",
                str(clip_folder),
                "--epochs",
                "1",
                "--batch-size",
                "6",
                "--output-dir",
                str(run),
                "--quiet",
                "--eval-test",
                "--test",
                str(shape_folders / "test"),
                "--prototype-start",
                "class-means",
            ]
        )
        == 0
    )  # the former spelling still works
    assert "accuracy" in json.loads((run / "summary.json").read_text())["test"]
    saved = json.loads((run / "best" / "adapter_config.json").read_text())
    assert saved["task"]["prototype_start"] == "class-means"  # the head started at the image class means
    capsys.readouterr()
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
                str(shape_folders / "test" / "red"),
                "--top-k",
                "2",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and all("red (" in line and "blue (" in line for line in lines)
    # image retrieval: nearest captions of an image
    rows = write_shapes(tmp_path / "img", 1)
    (tmp_path / "c.csv").write_text("image,caption\n" + "".join(f"{f},a {c} {s}\n" for f, c, s in rows))
    ret = tmp_path / "ret"
    assert (
        main(
            [
                "train",
                "--task",
                "image-retrieval",
                "--images",
                str(tmp_path / "img"),
                "--captions",
                str(tmp_path / "c.csv"),
                "--backbone",
                str(clip_folder),
                "--epochs",
                "1",
                "--output-dir",
                str(ret),
                "--quiet",
                "--eval-test",
            ]
        )
        == 0
    )
    assert "needs --test-file PATH" in capsys.readouterr().err  # no test data: said, and skipped
    (tmp_path / "cands.txt").write_text("a red circle\na green square\n")
    assert (
        main(
            [
                "predict",
                "--task",
                "image-retrieval",
                "--backbone",
                str(clip_folder),
                "--adapter",
                str(ret / "best"),
                "--input",
                str(tmp_path / "img" / rows[0][0]),
                "--candidates",
                str(tmp_path / "cands.txt"),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip().endswith(rows[0][0])


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--task", "video-retrieval", "--videos", "{tmp}", "--backbone", "{clip}"], "needs --captions"),
        (["train", "--task", "sketch-retrieval", "--images", "{tmp}"], "--images is for --task"),
        (
            ["train", "--task", "sketch-retrieval", "--sketches", "{tmp}", "--backbone", "{clip}"],
            "not Sketchy's layout",
        ),
        (
            [
                "train",
                "--task",
                "video-retrieval",
                "--videos",
                "{tmp}",
                "--captions",
                "{tmp}/none.csv",
                "--backbone",
                "{clip}",
            ],
            "none.csv: file not found",
        ),
        (
            [
                "predict",
                "--task",
                "image-classification",
                "--adapter",
                "{tmp}",
                "--text",
                "hello",
                "--backbone",
                "{clip}",
            ],
            "--input PATH",
        ),
        (
            [
                "predict",
                "--task",
                "image-retrieval",
                "--adapter",
                "{tmp}",
                "--input",
                "{tmp}/nothing.png",
                "--backbone",
                "{clip}",
            ],
            "nothing.png: no such file",
        ),
        (["predict", "--adapter", "{tmp}", "--input", "{tmp}"], "--input is for image tasks"),
        (
            ["train", "--task", "image-classification", "--images", "{tmp}", "--backbone", "{clip}"]
            + ["--input-dropout", "0.1"],
            "--task image-classification trains none",
        ),
    ],
    ids=[
        "video-no-captions",
        "images-for-sketch",
        "not-sketchy",
        "missing-captions",
        "predict-texts-for-images",
        "predict-missing-input",
        "predict-input-for-texts",
        "input-dropout-without-text-tower",
    ],
)
def test_cli_vision_errors(argv, fragment, clip_folder, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, clip=clip_folder) for a in argv]
    if argv[0] == "train":
        argv += ["--output-dir", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_image_and_text_tasks_spell_the_test_file_alike(tmp_path, capsys):
    from exotune.cli import build_parser

    parser = build_parser("train")
    for flag in ("--test-file", "--test"):  # --test: the image tasks' former spelling, hidden
        assert parser.parse_args(["train", "--file", "f.csv", "--output-dir", "o", flag, "t.csv"]).test_file == "t.csv"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    train_help = capsys.readouterr().out
    assert "--test-file" in train_help and "--test " not in train_help
    base = ["train", "--output-dir", str(tmp_path / "r"), "--backbone", str(tmp_path / "nope")]
    for extra, fragment in [
        (["--task", "sketch-retrieval", "--sketches", "s", "--test-file", "t"], "--unseen-classes"),
        (["--task", "image-retrieval", "--images", "i", "--val-file", "v"], "--val-file is for --task classification"),
        (["--task", "retrieval", "--file", "f.csv", "--test-file", "t"], "--test-file is for --task classification"),
    ]:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err, err

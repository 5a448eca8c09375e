"""Captioned videos (text-video retrieval) and their frames.

A video is a file decoded by PyAV (``pip install 'exotune[video]'``; its wheels carry their own
FFmpeg) or a folder of pre-extracted frames (image files, in name order). A model sees a few
frames sampled uniformly: the middle frame of each of ``n`` equal segments.

Caption layouts: a CSV / TSV / JSONL file (``video`` and ``caption`` columns; in JSONL the
caption may be a list), a VATEX JSON file (``[{"videoID", "enCap": [...]}]``, a video found as
``<videoID>.<ext>`` or a folder ``<videoID>/``) and MSR-VTT (``MSRVTT_data.json`` beside the 9k
training list ``MSRVTT_train.9k.csv`` and the 1k-A test file ``MSRVTT_JSFUSION_test.csv``).
Every video is checked when the data is loaded: a missing or undecodable one is an error that
names it, or, with ``skip_bad=True``, is left out and counted (``data.skipped``).
"""

from __future__ import annotations

import json
from pathlib import Path

from exotune.data.images import (
    IMAGE_EXTENSIONS,
    ImageCaptionData,
    caption_text,
    captioned,
    row_pairs,
)
from exotune.data.text import read_rows, read_text
from exotune.errors import ConfigError, DataError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
MSRVTT_DATA = "MSRVTT_data.json"
MSRVTT_SPLITS = {"train": "MSRVTT_train.9k.csv", "test": "MSRVTT_JSFUSION_test.csv"}


class VideoCaptionData(ImageCaptionData):
    """Captions and the videos they describe: caption i describes ``videos[caption_image[i]]``
    (a video file or a folder of frames). Splits, subsets and samples as for captioned images."""

    @property
    def videos(self) -> list[str]:
        return self.images


# -- frames --------------------------------------------------------------------------------------


def sample_indices(total: int, n: int) -> list[int]:
    """``n`` frame indices spread uniformly over ``total`` frames (repeats when ``total`` < ``n``)."""
    return [min(total - 1, int((i + 0.5) * total / n)) for i in range(n)]


def frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _av():
    try:
        import av
    except ImportError as err:
        raise ConfigError(
            "decoding video files needs PyAV: pip install 'exotune[video]' (or give folders of extracted frames)"
        ) from err
    return av


def read_frames(video: str | Path, n: int) -> list:
    """``n`` frames of ``video`` (a file, or a folder of frames) as RGB PIL images, sampled
    uniformly; a missing or undecodable video is a DataError naming it."""
    from exotune.boxes.image import open_image

    path = Path(video)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise DataError(f"video {path}: a folder without frames ({', '.join(IMAGE_EXTENSIONS)})")
        return [open_image(files[i], "RGB") for i in sample_indices(len(files), n)]
    if not path.is_file():
        raise DataError(f"video {path}: file not found")
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"video {path}: no video stream")
            total = container.streams.video[0].frames
        if total <= 0:  # not in the header: count by decoding
            total = sum(1 for _ in _decode(av, path))
        wanted = sample_indices(total, n) if total else []
        frames = {}
        for i, frame in enumerate(_decode(av, path)):
            if i in wanted:
                frames[i] = frame.to_image().convert("RGB")
        if not frames:
            raise DataError(f"video {path}: no frame could be decoded")
        if len(frames) < len(set(wanted)):  # the header promised more frames than the stream holds
            kept = sorted(frames)
            return [frames[kept[i]] for i in sample_indices(len(kept), n)]
        return [frames[i] for i in wanted]
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as err:
        raise DataError(
            f"video {path} cannot be decoded ({err.__class__.__name__}: {err}); the file is corrupt or not a video"
        ) from err


def _decode(av, path: Path):
    with av.open(str(path)) as container:
        yield from container.decode(video=0)


def video_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable video (missing, no frames, its first frame undecodable), or
    None; a file is opened and its first frame decoded, not the whole video."""
    if path.is_dir():
        return None if frame_files(path) else "a folder without frames"
    if not path.is_file():
        return "file not found"
    av = _av()
    try:
        if next(iter(_decode(av, path)), None) is None:
            return "no frame could be decoded"
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as err:
        return f"cannot be decoded ({err.__class__.__name__}: {err})"
    return None


# -- captions ------------------------------------------------------------------------------------


def load_video_captions(
    captions: str | Path,
    videos_dir: str | Path | None = None,
    *,
    video_column: str = "video",
    caption_column: str = "caption",
    split: str | None = None,
    skip_bad: bool = False,
) -> VideoCaptionData:
    """Captioned videos from a CSV / TSV / JSONL file, a VATEX JSON file or MSR-VTT's
    ``MSRVTT_data.json`` (``split``: ``train``, the 9k list, or ``test``, the 1k-A set, one
    caption per video; default videos folder: ``videos/all`` beside it)."""
    path = Path(captions)
    if path.name == MSRVTT_DATA:
        root = Path(videos_dir) if videos_dir is not None else path.parent / "videos" / "all"
        pairs = _msrvtt_pairs(path, split, root)
        name = f"msrvtt-{split}"
    else:
        root = Path(videos_dir) if videos_dir is not None else path.parent
        if split is not None:
            raise DataError(f"{path}: only MSR-VTT's {MSRVTT_DATA} has splits; give each split its own file")
        if path.suffix.lower() == ".json":
            pairs = _vatex_pairs(path, root)
        else:
            pairs = row_pairs(path, video_column, caption_column, what="video")
        name = path.stem
    if not root.is_dir():
        raise DataError(f"videos folder {root} does not exist")
    if not pairs:
        raise DataError(f"{path}: no captions")
    return captioned(VideoCaptionData, pairs, root, path, name, skip_bad, video_problem, "video")


def _json(path: Path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}, column {err.colno}: invalid JSON ({err.msg})") from err


def _vatex_pairs(path: Path, root: Path) -> list[tuple[str, str, str]]:
    data = _json(path)
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected VATEX's list of {{'videoID', 'enCap'}} entries; a CSV/TSV/JSONL "
            "file gives one row per caption"
        )
    pairs = []
    for k, entry in enumerate(data):
        at = f"entry {k}"
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("videoID"), str)
            or not isinstance(entry.get("enCap"), list)
        ):
            raise DataError(f"{path}, {at}: a VATEX entry needs 'videoID' and a list 'enCap'")
        video = _find_video(root, entry["videoID"])
        pairs += [(video, caption_text(path, at, c), at) for c in entry["enCap"]]
    return pairs


def _find_video(root: Path, video_id: str) -> str:
    """``<id>.<ext>`` or the frame folder ``<id>/`` under ``root``; the bare id when none (so the
    check names it as missing)."""
    for ext in VIDEO_EXTENSIONS:
        if (root / f"{video_id}{ext}").is_file():
            return f"{video_id}{ext}"
    return video_id


def _msrvtt_pairs(path: Path, split: str | None, root: Path) -> list[tuple[str, str, str]]:
    if split not in MSRVTT_SPLITS:
        raise DataError(f"{path}: MSR-VTT needs a split, one of {sorted(MSRVTT_SPLITS)} (--caption-split)")
    listed = path.parent / MSRVTT_SPLITS[split]
    rows = list(read_rows(listed))
    for n, row in rows:
        missing = [c for c in (("video_id", "sentence") if split == "test" else ("video_id",)) if c not in row]
        if missing:
            raise DataError(f"{listed}, line {n}: no column {missing[0]!r}; columns are {sorted(row)}")
    if split == "test":  # 1k-A: one caption per video, in the split file itself
        return [
            (
                _find_video(root, str(row["video_id"])),
                caption_text(listed, f"line {n}", row["sentence"]),
                f"{listed.name}, line {n}",
            )
            for n, row in rows
        ]
    videos = {str(row["video_id"]): n for n, row in rows}
    data = _json(path)
    sentences = data.get("sentences") if isinstance(data, dict) else None
    if not isinstance(sentences, list):
        raise DataError(f"{path}: expected MSR-VTT's {{'videos', 'sentences': [{{'video_id', 'caption'}}]}}")
    pairs = []
    for k, s in enumerate(sentences):
        if not isinstance(s, dict) or "video_id" not in s:
            raise DataError(f"{path}, sentence {k}: needs 'video_id' and 'caption'")
        if str(s["video_id"]) in videos:
            pairs.append(
                (
                    _find_video(root, str(s["video_id"])),
                    caption_text(path, f"sentence {k}", s.get("caption")),
                    f"sentence {k}",
                )
            )
    unused = set(videos) - {str(s["video_id"]) for s in sentences}
    if unused:
        first = sorted(unused)[0]
        raise DataError(f"{listed}, line {videos[first]}: video {first!r} has no caption in {path}")
    return pairs

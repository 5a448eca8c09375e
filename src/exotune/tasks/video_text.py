"""Text-video retrieval on a pair of boxes (a CLIP model's text and image towers).

A video is ``frames`` frames sampled uniformly; each frame crosses the image box through the
pixel adapter (and entry tokens, LGA); the frame outputs are pooled over time (the mean, or a
small learnable attention pooling that starts as the mean, on the user's side), then the output
adapter. The text side, the loss (symmetric InfoNCE) and the artifacts are image-text
retrieval's; the metrics are R@1/5/10, median and mean rank, both directions.

With nothing trained before or inside the image box (output-only), the frames' box outputs
never change: they are computed once per video and kept, so training never re-sends frames.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from exotune.boxes.base import BoxBase
from exotune.data.videos import read_frames
from exotune.errors import ConfigError
from exotune.graybox.config import DGAConfig
from exotune.graybox.model import GrayBoxModel
from exotune.graybox.registry import build_adapter
from exotune.tasks.image_text import ImageTextConfig, ImageTextRetriever
from exotune.tasks.metrics import video_text_metrics

ADAPTER_TYPE = "dga-video-text-retriever"
TEMPORAL_POOLINGS = ("mean", "attention")
_CACHE_LIMIT = 100_000  # videos whose frame outputs are kept
VIDEO_BATCH = 16  # videos decoded and encoded at once while evaluating


@dataclass
class VideoTextConfig(ImageTextConfig):
    frames: int = 8  # sampled uniformly per video
    temporal_pooling: str = "mean"  # or "attention": learnable weights over frames, the mean at start

    def __post_init__(self) -> None:
        super().__post_init__()  # field types checked there
        if self.frames < 1:
            raise ConfigError(f"frames must be an integer >= 1, got {self.frames!r}")
        if self.temporal_pooling not in TEMPORAL_POOLINGS:
            raise ConfigError(f"temporal_pooling must be one of {TEMPORAL_POOLINGS}, got {self.temporal_pooling!r}")


class AttentionPooling(nn.Module):
    """Softmax weights over frames from each frame's output and its position; zero at start, so
    it begins as the mean."""

    def __init__(self, dim: int, frames: int) -> None:
        super().__init__()
        self.score = nn.Parameter(torch.zeros(dim))
        self.position = nn.Parameter(torch.zeros(frames))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, F, O) -> (B, O)
        weights = (z @ self.score + self.position).softmax(-1)  # (B, F)
        return (weights.unsqueeze(-1) * z).sum(1)


class VideoTower(nn.Module):
    """Videos (files or frame folders) -> (B, O): frames through the adapted image box, pooled
    over time, then the output adapter."""

    def __init__(self, box: BoxBase, dga: DGAConfig, frames: int, pooling: str = "mean") -> None:
        super().__init__()
        self.frame_model = GrayBoxModel(box, replace(dga, output_adapter=None))
        self.frames = frames
        self.pool = AttentionPooling(box.spec.output_dim, frames) if pooling == "attention" else None
        self.output_adapter = (
            None if dga.output_adapter is None else build_adapter("output", dga.output_adapter, box.spec)
        )
        self._cache: dict[str, torch.Tensor] | None = {} if self.frame_model.caches_box_outputs else None
        self.frames_sent = 0  # frames that crossed the box

    @property
    def box(self) -> BoxBase:
        return self.frame_model.box

    def frame_outputs(self, videos: list) -> torch.Tensor:
        """Box outputs (B, F, O) of each video's frames (gradients into the pixel adapter and
        entry tokens; cached when nothing before or inside the box is trained)."""
        keys = [str(v) for v in videos]
        cache = self._cache
        todo = list(dict.fromkeys(keys)) if cache is None else [k for k in dict.fromkeys(keys) if k not in cache]
        fresh = {}
        if todo:
            frames = [img for k in todo for img in read_frames(k, self.frames)]
            with torch.set_grad_enabled(cache is None and torch.is_grad_enabled()):
                out = torch.cat([self.frame_model(part) for part in self.box.spec.limits.batches(frames)])
            self.frames_sent += len(frames)
            fresh = dict(zip(todo, out.view(len(todo), self.frames, -1), strict=True))
            if cache is not None and len(cache) + len(fresh) <= _CACHE_LIMIT:
                cache.update({k: v.detach() for k, v in fresh.items()})
        return torch.stack([fresh[k] if k in fresh else cache[k] for k in keys])

    def forward(self, videos: list) -> torch.Tensor:
        z = self.frame_outputs(videos)  # (B, F, O)
        z = z.mean(1) if self.pool is None else self.pool(z)  # (B, O)
        return z if self.output_adapter is None else self.output_adapter(z)


class VideoTextRetriever(ImageTextRetriever):
    """A text tower and a video tower over a CLIP pair, each adapted (see the module)."""

    adapter_type = ADAPTER_TYPE
    task_type = "video-text-retrieval"
    config_cls = VideoTextConfig

    def build_visual_tower(self, box: BoxBase, dga: DGAConfig) -> nn.Module:
        return VideoTower(box, dga, self.config.frames, self.config.temporal_pooling)

    @staticmethod
    def metrics(texts: torch.Tensor, items: torch.Tensor, caption_item: list[int]) -> dict[str, float]:
        return video_text_metrics(texts, items, caption_item)

    def encode_videos(self, videos: list, batch_size: int = VIDEO_BATCH, progress: bool = False) -> torch.Tensor:
        """L2-normalised video embeddings (M, O) for video files or frame folders, at most
        ``VIDEO_BATCH`` videos (their decoded frames) in memory at once."""
        return self._encode(self.image_tower, videos, min(batch_size, VIDEO_BATCH), progress, "encode videos")

    def encode_images(self, images: list, batch_size: int = VIDEO_BATCH, progress: bool = False) -> torch.Tensor:
        return self.encode_videos(images, batch_size, progress)

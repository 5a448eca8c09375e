"""An image box served: pixels in, outputs out, gradients back to the pixels (and entry tokens).

The client preprocesses its images as the spec says (``spec.image``: size, resize, crop,
normalisation) and sends float32 pixels (batch, channels, height, width) as safetensors, within
the body limit; ``/v1/forward`` and ``/v1/backward`` work as for texts, with ``pixels`` where
a text box takes ``embeds`` and ``mask``. The text routes (embed, encode, scores) answer 404.
A CLIP model is served as its two towers under one server and one token set: the text tower
under ``/text``, the image tower under ``/image`` (each a full box: ``/text/v1/spec``...).
"""

from __future__ import annotations

from functools import partial

import torch

from exotune.boxes import wire
from exotune.serve.errors import ApiError
from exotune.serve.graphs import ENTRY, ESTIMATE_MARGIN, build
from exotune.serve.service import BoxService

PIXELS = "pixels"
IMAGE_TOKENS = 256  # what one image weighs in the fair scheduler (a ViT-B/16 at 224 px: 197 tokens)


class PixelBoxService(BoxService):
    """The service of an image box (see the module). The fair scheduler counts an image as
    ``IMAGE_TOKENS`` tokens; a training forward's graph is estimated from two probe graphs."""

    input_name = PIXELS

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pixel_cost: tuple[float, float] | None = None  # bytes per graph unit, per image

    def describe(self) -> dict:
        info = super().describe()
        s = self.spec
        info["wire"] = {
            "media_type": wire.MEDIA_TYPE,
            "pixels": f"float32 (batch, {', '.join(map(str, s.input_shape))})",
            "entry_tokens": f"float32 (n, {s.entry_dim}), named '{ENTRY}<entry point>'",
            "outputs": "float32",
            "preprocessing": "spec.image: the client resizes, crops and normalises before sending",
        }
        return info

    def embed(self, caller: str, body: dict) -> bytes:
        raise self._texts_refused("/v1/embed")

    def encode(self, caller: str, body: dict) -> bytes:
        raise self._texts_refused("/v1/encode")

    def scores(self, caller: str, body: dict) -> bytes:
        raise self._texts_refused("/v1/scores")

    @staticmethod
    def _texts_refused(route: str) -> ApiError:
        return ApiError(
            404,
            "modality",
            f"{route} takes texts; this box takes pixels: POST /v1/forward with a "
            "float32 tensor 'pixels' (batch, channels, height, width)",
        )

    def _inputs(self, tensors: dict[str, torch.Tensor]):
        """(pixels, a (B, 1) mask of ones that the box ignores, entry tokens), checked."""
        tensors = dict(tensors)
        pixels = tensors.pop(PIXELS, None)
        if pixels is None:
            raise ApiError(422, "invalid", "the request needs a tensor 'pixels' (batch, channels, height, width)")
        unknown = sorted(n for n in tensors if not n.startswith(ENTRY))
        if unknown:
            raise ApiError(422, "invalid", f"unexpected tensors {unknown}")
        self._check_float(PIXELS, pixels)
        shape = tuple(self.spec.input_shape)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != shape:
            raise ApiError(
                422,
                "invalid",
                f"'pixels' must have shape (batch, {', '.join(map(str, shape))}), got {tuple(pixels.shape)}",
            )
        if not 1 <= pixels.shape[0] <= self.spec.limits.max_batch:
            raise ApiError(
                422,
                "limit",
                f"batch of {pixels.shape[0]} is outside 1..{self.spec.limits.max_batch} (the box's max_batch)",
            )
        return pixels, torch.ones(pixels.shape[0], 1, dtype=torch.long), self._entry_tokens(tensors)

    def _run(self, pixels, mask, entries) -> torch.Tensor:
        out = self.box.forward(pixels, entries or None)
        if out.ndim != 2 or out.shape != (pixels.shape[0], self.spec.output_dim):
            raise RuntimeError(f"box returned outputs of shape {tuple(out.shape)}")  # a server bug: 500
        if not torch.isfinite(out).all():
            raise ApiError(
                422,
                "invalid",
                "the inputs drive the box to NaN or infinite outputs; keep 'pixels' "
                "(and entry tokens) in the range the spec's normalisation gives",
            )
        return out.float()

    def _rows_per_unit(self, pixels: torch.Tensor, entries: dict) -> int:
        return max(1, self.config.fair_unit_tokens // (IMAGE_TOKENS + sum(t.shape[0] for t in entries.values())))

    def _graph(self, caller: str, pixels, mask, entries):
        graph = super()._graph(caller, pixels, mask, entries)
        graph.input_name = PIXELS  # the gradient answers under the input's own name
        return graph

    def estimate_graph_bytes(self, caller: str, pixels, entries) -> int:
        """What the graph of this forward will hold: per unit and per image, as two probe graphs
        (one image, two images) held, plus the pixels and outputs."""
        turn = partial(self.scheduler.turn, caller)
        if self._pixel_cost is None:
            shape = tuple(self.spec.input_shape)

            def saved(batch: int) -> int:
                probe = torch.zeros(batch, *shape)
                return build(self._run, probe, torch.ones(batch, 1, dtype=torch.long), {}, batch, turn).saved_bytes

            one, two = saved(1), saved(2)
            self._pixel_cost = (max(0.0, 2.0 * one - two), float(max(0, two - one)))
        per_unit, per_image = self._pixel_cost
        batch = pixels.shape[0]
        units = -(-batch // self._rows_per_unit(pixels, entries))
        io = batch * (pixels[0].numel() + self.spec.output_dim) * 4
        return int(ESTIMATE_MARGIN * (units * per_unit + batch * per_image + io))

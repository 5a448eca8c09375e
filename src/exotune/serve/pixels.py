"""An image box served: pixels in, outputs out, gradients back to the pixels (and entry tokens).

The client preprocesses its images as the spec says (``spec.image``: size, resize, crop,
normalisation) and sends float32 pixels (batch, channels, height, width) as safetensors, within
the body limit; ``/v1/forward`` and ``/v1/backward`` work as for texts, with ``pixels`` where
a text box takes ``embeds`` and ``mask``. The text routes (embed, encode, scores) answer 404.
A CLIP model is served as its two towers under one server and one token set: the text tower
under ``/text``, the image tower under ``/image`` (each a full box: ``/text/v1/spec``...).
"""

from __future__ import annotations

import torch

from exotune.boxes import wire
from exotune.serve.errors import ApiError
from exotune.serve.service import ENTRY, BoxService

TOWERS = ("text", "image")


class PixelBoxService(BoxService):
    """The service of an image box (see the module)."""

    INPUT = "pixels"

    def describe(self) -> dict:
        info = super().describe()
        s = self.spec
        info["wire"] = {"media_type": wire.MEDIA_TYPE, "pixels": f"float32 (batch, {', '.join(map(str, s.input_shape))})",
                        "entry_tokens": f"float32 (n, {s.entry_dim}), named '{ENTRY}<entry point>'",
                        "outputs": "float32", "preprocessing": "spec.image: the client resizes, crops and "
                                                               "normalises before sending"}
        return info

    def embed(self, body: dict) -> bytes:
        raise self._texts_refused("/v1/embed")

    def encode(self, body: dict) -> bytes:
        raise self._texts_refused("/v1/encode")

    def scores(self, body: dict) -> bytes:
        raise self._texts_refused("/v1/scores")

    @staticmethod
    def _texts_refused(route: str) -> ApiError:
        return ApiError(404, "modality", f"{route} takes texts; this box takes pixels: POST /v1/forward with a "
                                         "float32 tensor 'pixels' (batch, channels, height, width)")

    def _inputs(self, tensors: dict[str, torch.Tensor]):
        tensors = dict(tensors)
        pixels = tensors.pop(self.INPUT, None)
        if pixels is None:
            raise ApiError(422, "invalid", "the request needs a tensor 'pixels' (batch, channels, height, width)")
        unknown = sorted(n for n in tensors if not n.startswith(ENTRY))
        if unknown:
            raise ApiError(422, "invalid", f"unexpected tensors {unknown}")
        self._check_float("pixels", pixels)
        shape = tuple(self.spec.input_shape)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != shape:
            raise ApiError(422, "invalid", f"'pixels' must have shape (batch, {', '.join(map(str, shape))}), "
                                           f"got {tuple(pixels.shape)}")
        if not 1 <= pixels.shape[0] <= self.spec.limits.max_batch:
            raise ApiError(422, "limit", f"batch of {pixels.shape[0]} is outside 1..{self.spec.limits.max_batch} "
                                         "(the box's max_batch)")
        return pixels, None, self._entry_tokens(tensors)

    def _run(self, pixels, mask, entries) -> torch.Tensor:
        out = self.box.forward(pixels, entries or None)
        if out.ndim != 2 or out.shape != (pixels.shape[0], self.spec.output_dim):
            raise RuntimeError(f"box returned outputs of shape {tuple(out.shape)}")  # a server bug: 500
        if not torch.isfinite(out).all():
            raise ApiError(422, "invalid", "the inputs drive the box to NaN or infinite outputs; keep 'pixels' "
                                           "(and entry tokens) in the range the spec's normalisation gives")
        return out.float()

"""``explain --input-size N``: every photo letterboxed into one N x N model input.

A folder whose photos all differ in size batches nothing (only equal inputs stack). With
``--input-size N`` each photo is resized, aspect kept, so its longer side is N, and
centred on an N x N canvas of the normalisation mean (zero once normalised: the padding
adds no signal of its own); every input then has one size and batches. The map of the
canvas is cropped back to the photo's region (``photo_region``) and, as without the
option, resized to the photo's own size when the files are drawn.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

Region = tuple[int, int, int, int]  # top, left, height, width, in model-input pixels


class Letterbox:
    """PIL image -> (3, size, size) model input: the photo, longer side ``size``, aspect
    kept, centred on a canvas of the mean colour, normalised by ``prep`` (a
    ``models.Preprocess``: its ``normalise`` and ``mean``). Picklable (runs in the
    loading processes)."""

    def __init__(self, prep, size: int) -> None:
        if size < 1:
            raise ValueError(f"input size must be at least 1, got {size}")
        self.prep = prep
        self.size = size

    def region(self, width: int, height: int) -> Region:
        """Where a width x height photo lands on the canvas."""
        scale = self.size / max(width, height)
        inner_height = max(1, min(self.size, round(height * scale)))
        inner_width = max(1, min(self.size, round(width * scale)))
        top = (self.size - inner_height) // 2
        left = (self.size - inner_width) // 2
        return top, left, inner_height, inner_width

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        top, left, height, width = self.region(*image.size)
        resized = image.resize((width, height), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32).copy()).permute(2, 0, 1)
        mean = getattr(self.prep, "mean", torch.full((3, 1, 1), 0.5))
        canvas = mean.reshape(3, 1, 1).expand(3, self.size, self.size).clone()
        canvas[:, top : top + height, left : left + width] = pixels / 255.0
        return self.prep.normalise(canvas)


def photo_region(saliency: torch.Tensor, region: Region | None) -> np.ndarray:
    """The (h, w) map of a model input as a float32 array; with a letterbox ``region``,
    only the photo's part, min-max normalised again (the padding is no part of the
    photo, and a map file is in [0, 1] over its photo)."""
    if region is None:
        return saliency.numpy()
    top, left, height, width = region
    crop = saliency[top : top + height, left : left + width]
    low, high = crop.min(), crop.max()
    if high > low:
        crop = (crop - low) / (high - low)
    else:
        crop = torch.zeros_like(crop)
    return crop.contiguous().numpy()

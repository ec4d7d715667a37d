"""Pictures of saliency maps: colour maps and overlays at the image's own size."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .images import resize_map


def colorize(saliency: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H, W) map in [0, 1] -> (H, W, 3) uint8 RGB through a matplotlib colour map."""
    from matplotlib import colormaps

    if cmap not in colormaps:
        raise ValueError(f"unknown colour map {cmap!r}")
    rgba = colormaps[cmap](np.clip(saliency, 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def overlay(
    image: Image.Image,
    saliency: np.ndarray | torch.Tensor,
    cmap: str = "jet",
    alpha: float = 0.5,
) -> Image.Image:
    """The image with its coloured map blended on top, at the image's own size.

    saliency: (h, w) in [0, 1]; resized (bilinear) to the image when sizes differ.
    alpha: the map's opacity, 0 (image only) to 1 (map only).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    width, height = image.size
    if isinstance(saliency, np.ndarray):
        saliency = torch.from_numpy(saliency)
    if tuple(saliency.shape) != (height, width):
        saliency = torch.from_numpy(resize_map(saliency, height, width))
    colours = colorize(saliency.cpu().numpy(), cmap).astype(np.float32)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1.0 - alpha) * pixels + alpha * colours
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))

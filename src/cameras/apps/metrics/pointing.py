"""Pointing game and energy-based pointing game.

Both work in the original image's pixel grid: the map is resized to the image's own
height and width and the boxes are the annotation's, so the 15-pixel tolerance is in
original pixels, as in TorchRay's benchmark (which the CAMERAS paper used).

Box convention (every reader in ``cameras.apps.datasets`` converts to it): ``(x0, y0, x1, y1)``
in pixel units, origin at the image's top-left corner, x1 and y1 exclusive. A box
covers the pixels it overlaps: columns ``floor(x0) .. ceil(x1) - 1`` and rows
``floor(y0) .. ceil(y1) - 1``. A VOC box ``xmin=1, xmax=10`` (1-based, inclusive) is
``x0=0, x1=10``; a COCO box ``[x, y, w, h]`` is ``(x, y, x + w, y + h)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

Box = tuple[float, float, float, float]
MapLike = np.ndarray | torch.Tensor

DEFAULT_TOLERANCE = 15.0


def box_pixels(box: Box, height: int, width: int) -> tuple[int, int, int, int]:
    """The box's pixel index ranges ``(r0, r1, c0, c1)`` (end exclusive), clipped to the image."""
    x0, y0, x1, y1 = box
    c0 = max(0, math.floor(x0))
    r0 = max(0, math.floor(y0))
    c1 = min(width, math.ceil(x1))
    r1 = min(height, math.ceil(y1))
    return r0, r1, c0, c1


def box_mask(boxes: Sequence[Box], height: int, width: int) -> np.ndarray:
    """(height, width) bool mask of the union of the boxes' pixels."""
    mask = np.zeros((height, width), dtype=bool)
    for box in boxes:
        r0, r1, c0, c1 = box_pixels(box, height, width)
        mask[r0:r1, c0:c1] = True
    return mask


def _as_numpy(saliency: MapLike) -> np.ndarray:
    if isinstance(saliency, torch.Tensor):
        saliency = saliency.detach().float().cpu().numpy()
    saliency = np.asarray(saliency, dtype=np.float64)
    if saliency.ndim != 2:
        raise ValueError(f"a saliency map must be 2-D (H, W), got shape {saliency.shape}")
    return saliency


def _as_list(maps: Sequence[MapLike] | MapLike) -> list[np.ndarray]:
    if isinstance(maps, np.ndarray | torch.Tensor) and maps.ndim == 3:
        return [_as_numpy(m) for m in maps]
    if isinstance(maps, np.ndarray | torch.Tensor):
        raise ValueError(f"maps must be (B, H, W) or a list of (H, W), got shape {maps.shape}")
    return [_as_numpy(m) for m in maps]


def max_point(saliency: MapLike) -> tuple[int, int] | None:
    """(row, column) of the map's maximum (the first one in row-major order), or None for
    a constant map, which has no maximum to point with."""
    values = _as_numpy(saliency)
    if values.size == 0 or values.max() == values.min():
        return None
    row, column = np.unravel_index(int(np.argmax(values)), values.shape)
    return int(row), int(column)


def pointing_hit(
    saliency: MapLike, boxes: Sequence[Box], tolerance: float = DEFAULT_TOLERANCE
) -> bool:
    """True when the map's maximum lies within ``tolerance`` pixels of a box.

    Like TorchRay: a hit when some pixel of a box is at Euclidean distance strictly less
    than ``tolerance`` from the maximum's pixel. A maximum inside a box is a hit whatever
    the tolerance (even 0). A constant map is a miss.
    """
    point = max_point(saliency)
    if point is None or not boxes:
        return False
    row, column = point
    height, width = _as_numpy(saliency).shape
    for box in boxes:
        r0, r1, c0, c1 = box_pixels(box, height, width)
        if r1 <= r0 or c1 <= c0:
            continue
        # Distance to the nearest pixel of the box, per axis (0 when inside its span).
        dy = max(r0 - row, 0, row - (r1 - 1))
        dx = max(c0 - column, 0, column - (c1 - 1))
        if dx == dy == 0 or dx * dx + dy * dy < tolerance * tolerance:
            return True
    return False


def pointing_game(
    maps: Sequence[MapLike] | MapLike,
    boxes: Sequence[Sequence[Box]],
    tolerance: float = DEFAULT_TOLERANCE,
) -> np.ndarray:
    """Pointing game hits for a batch.

    maps: (B, H, W) or a list of B (H_i, W_i) maps, each at its image's own size.
    boxes: per map, the boxes of the explained class in that image's pixels.
    Returns a (B,) float array of 1.0 (hit) and 0.0 (miss).
    """
    maps = _as_list(maps)
    if len(maps) != len(boxes):
        raise ValueError(f"got {len(maps)} maps but {len(boxes)} box lists")
    return np.array(
        [float(pointing_hit(m, b, tolerance)) for m, b in zip(maps, boxes, strict=True)]
    )


def energy_pointing_game(
    maps: Sequence[MapLike] | MapLike, boxes: Sequence[Sequence[Box]]
) -> np.ndarray:
    """Energy-based pointing game (Score-CAM): the share of each map's mass inside the
    union of its boxes, ``sum(map * inside) / sum(map)``.

    maps: (B, H, W) or a list of (H_i, W_i) non-negative maps at their images' sizes.
    Returns (B,) floats in [0, 1]; an all-zero map has no mass to place and scores 0.
    """
    maps = _as_list(maps)
    if len(maps) != len(boxes):
        raise ValueError(f"got {len(maps)} maps but {len(boxes)} box lists")
    scores = []
    for saliency, image_boxes in zip(maps, boxes, strict=True):
        if (saliency < 0).any():
            raise ValueError("energy pointing game needs non-negative maps")
        total = saliency.sum()
        inside = saliency[box_mask(image_boxes, *saliency.shape)].sum()
        scores.append(float(inside / total) if total > 0 else 0.0)
    return np.array(scores)

"""Insertion and deletion (Petsiuk et al., RISE, BMVC 2018).

Both walk through the image's pixels from most to least salient (ties keep row-major
order) in ``steps`` equal steps, and record the model's softmax probability of the
explained class after each step, ``steps + 1`` points from 0 % to 100 % of the pixels:

- insertion starts from a blurred copy of the image and puts the original pixels back;
  a good map makes the probability rise early (higher area is better);
- deletion starts from the image and replaces pixels by a constant; a good map makes
  the probability fall early (lower area is better).

Choices, as in RISE's reference code: the blur is Gaussian, kernel 11, sigma 5
(``torchvision.transforms.functional.gaussian_blur``, reflect padding), applied to
the [0, 1] pixels; the deletion constant is 0 in the model's normalised input space,
i.e. the normalisation mean colour (mid-grey for the default model), ``fill="mean"``;
``fill="black"`` uses 0 in pixel space instead. Step k replaces ``round(k * N / steps)``
of the N pixels. The area under the curve is the trapezoid rule over the fraction of
pixels in [0, 1]. Everything happens at the model input's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._forward import (
    PixelTransform,
    check_maps,
    check_targets,
    class_probabilities,
    to_input,
    to_pixels,
)

DEFAULT_STEPS = 100
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


@dataclass
class Curves:
    """Probability curves for a batch.

    curves: (B, steps + 1) probabilities; column k is after k steps, i.e. after
        ``round(k * N / steps)`` pixels were inserted (or deleted).
    auc: (B,) areas under the curves, trapezoid rule over [0, 1].
    """

    curves: np.ndarray
    auc: np.ndarray


def area_under_curve(curves: np.ndarray | Sequence[float]) -> np.ndarray | float:
    """Trapezoid-rule area of curves sampled at evenly spaced points over [0, 1].

    curves: (..., K) with K >= 2 points; returns (...,).
    """
    curves = np.asarray(curves, dtype=np.float64)
    if curves.shape[-1] < 2:
        raise ValueError("a curve needs at least 2 points")
    inner = curves[..., 1:-1].sum(-1)
    return (inner + 0.5 * (curves[..., 0] + curves[..., -1])) / (curves.shape[-1] - 1)


def blur(pixels: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA):
    """Gaussian blur of a (B, 3, H, W) batch of [0, 1] pixels (the insertion start)."""
    from torchvision.transforms.functional import gaussian_blur

    # Reflect padding needs the kernel to fit in the image.
    size = min(kernel, 2 * ((min(pixels.shape[2:]) - 1) // 2) + 1)
    if size < 3:
        return pixels.clone()
    return gaussian_blur(pixels, [size, size], [sigma, sigma])


def saliency_ranks(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) maps -> (B, H*W) rank of every pixel (0 = most salient; ties in
    row-major order)."""
    flat = maps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks


def step_counts(num_pixels: int, steps: int) -> list[int]:
    """Pixels replaced after step k, for k = 0 .. steps: ``round(k * N / steps)``."""
    return [(2 * k * num_pixels + steps) // (2 * steps) for k in range(steps + 1)]


def _curves(
    model: nn.Module,
    start: torch.Tensor,
    finish: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    prep: PixelTransform | None,
    batch_size: int,
) -> Curves:
    """Probability while pixels go from ``start`` to ``finish`` in order of saliency.

    start, finish: (B, 3, H, W) pixels; maps: (B, H, W). One forward pass per chunk of
    ``batch_size`` (image, step) pairs; the composites are built chunk by chunk.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch, _, height, width = start.shape
    ranks = saliency_ranks(maps).view(batch, 1, height, width)
    counts = torch.tensor(step_counts(height * width, steps), device=start.device)
    pairs = [(b, k) for b in range(batch) for k in range(steps + 1)]

    def chunks():
        for first in range(0, len(pairs), batch_size):
            part = pairs[first : first + batch_size]
            images = torch.tensor([b for b, _ in part], device=start.device)
            done = ranks[images] < counts[[k for _, k in part]].view(-1, 1, 1, 1)
            mixed = torch.where(done, finish[images], start[images])
            yield to_input(mixed, prep), targets[images.cpu()]

    probabilities = class_probabilities(model, chunks()).view(batch, steps + 1).double()
    curves = probabilities.numpy()
    return Curves(curves=curves, auc=np.asarray(area_under_curve(curves)))


def insertion(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    steps: int = DEFAULT_STEPS,
    prep: PixelTransform | None = None,
    batch_size: int = 32,
    start: torch.Tensor | None = None,
) -> Curves:
    """Insertion curves and AUC (higher is better).

    x: (B, 3, H, W) model input (pixels in [0, 1] when ``prep`` is None); maps: (B, H, W);
    targets: (B,) classes. start: (B, 3, H, W) pixels to insert into; default the blurred
    image (kernel 11, sigma 5).
    """
    maps = check_maps(x, maps)
    targets = check_targets(targets, x.shape[0])
    pixels = to_pixels(x, prep)
    if start is None:
        start = blur(pixels)
    elif start.shape != pixels.shape:
        raise ValueError(f"start must have shape {tuple(pixels.shape)}, got {tuple(start.shape)}")
    return _curves(model, start.to(pixels), pixels, maps, targets, steps, prep, batch_size)


def deletion(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    steps: int = DEFAULT_STEPS,
    prep: PixelTransform | None = None,
    batch_size: int = 32,
    fill: str = "mean",
) -> Curves:
    """Deletion curves and AUC (lower is better).

    x, maps, targets as for ``insertion``. fill: "mean" replaces pixels by 0 in the
    model's normalised input (the normalisation mean colour), "black" by 0 in pixels.
    """
    maps = check_maps(x, maps)
    targets = check_targets(targets, x.shape[0])
    pixels = to_pixels(x, prep)
    if fill == "mean":
        finish = to_pixels(torch.zeros_like(x), prep)
    elif fill == "black":
        finish = torch.zeros_like(pixels)
    else:
        raise ValueError(f"fill must be 'mean' or 'black', got {fill!r}")
    return _curves(model, pixels, finish, maps, targets, steps, prep, batch_size)

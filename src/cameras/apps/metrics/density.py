"""Map density, the two metrics the CAMERAS paper introduces (its Section 5).

With Psi the [0, 1] saliency map, I the image and P the model's softmax probability of
the explained class:

    rho_plus  = P(I * Psi)       / mean(Psi)        higher is better
    rho_minus = P(I * (1 - Psi)) / mean(1 - Psi)    lower is better

A dense map keeps the evidence for the class in few pixels: masking the image with it
keeps the probability high although little of the image survives (rho_plus), and
masking with its complement leaves little evidence behind (rho_minus).

Masking baseline: the product is taken in pixel space, on the [0, 1] RGB image before
the model's normalisation, so a weight of 0 makes a pixel black (``prep.normalise`` is
applied to the product). Everything happens at the model input's resolution: the map
as the method returned it and the preprocessed image.

Undefined cases: an all-zero map has mean(Psi) = 0 and rho_plus is NaN; an all-one map
has mean(1 - Psi) = 0 and rho_minus is NaN. Summaries skip NaN and say how many.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def masked_probabilities(
    model: nn.Module,
    x: torch.Tensor,
    weights: torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    prep: PixelTransform | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """P(class | I * W) for a batch: each image's pixels multiplied by its (H, W) weights.

    x: (B, 3, H, W) model input; weights: (B, H, W) in [0, 1]; returns (B,) on the CPU.
    """
    weights = check_maps(x, weights)
    targets = check_targets(targets, x.shape[0])
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")

    def chunks():
        for start in range(0, x.shape[0], batch_size):
            part = slice(start, start + batch_size)
            masked = to_pixels(x[part], prep) * weights[part, None]
            yield to_input(masked, prep), targets[part]

    return class_probabilities(model, chunks())


def map_density(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    prep: PixelTransform | None = None,
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rho_plus, rho_minus) for a batch, each (B,) float on the CPU (NaN where undefined).

    x: (B, 3, H, W) model input (normalised by ``prep``; pixels in [0, 1] if prep is None).
    maps: (B, H, W) saliency in [0, 1] at the same H, W.
    targets: (B,) class indices whose probability P is measured.
    """
    maps = check_maps(x, maps)
    if maps.min() < 0 or maps.max() > 1:
        raise ValueError("maps must lie in [0, 1] for map density")
    both = torch.cat([maps, 1.0 - maps])
    targets = check_targets(targets, x.shape[0])
    probabilities = masked_probabilities(
        model, torch.cat([x, x]), both, torch.cat([targets, targets]), prep, batch_size
    )
    batch = x.shape[0]
    mean_plus = maps.double().flatten(1).mean(1).cpu()
    mean_minus = (1.0 - maps.double()).flatten(1).mean(1).cpu()
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    p_plus, p_minus = probabilities[:batch].double(), probabilities[batch:].double()
    rho_plus = torch.where(mean_plus > 0, p_plus / mean_plus.clamp_min(1e-300), nan)
    rho_minus = torch.where(mean_minus > 0, p_minus / mean_minus.clamp_min(1e-300), nan)
    return rho_plus, rho_minus

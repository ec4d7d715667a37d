"""Shared plumbing for the metrics that query the model: pixel space and batched scoring."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import torch
from torch import nn

from ...core.capture import eval_mode, model_device, model_input
from ...core.targets import logits_of


class PixelTransform(Protocol):
    """What the metrics need from a preprocessing object (``cameras.Preprocess`` has it)."""

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def denormalise(self, x: torch.Tensor) -> torch.Tensor: ...


def to_pixels(x: torch.Tensor, prep: PixelTransform | None) -> torch.Tensor:
    """Model input -> [0, 1] RGB pixels (identity when ``prep`` is None)."""
    return x if prep is None else prep.denormalise(x)


def to_input(pixels: torch.Tensor, prep: PixelTransform | None) -> torch.Tensor:
    """[0, 1] RGB pixels -> model input (identity when ``prep`` is None)."""
    return pixels if prep is None else prep.normalise(pixels)


def check_targets(targets: Sequence[int] | torch.Tensor, batch: int) -> torch.Tensor:
    targets = torch.as_tensor(targets, dtype=torch.long).flatten()
    if targets.numel() != batch:
        raise ValueError(f"got {targets.numel()} targets for a batch of {batch} images")
    return targets


def check_maps(x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """maps (B, H, W) matching x (B, C, H, W), as float on x's device."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got {tuple(x.shape)}")
    maps = torch.as_tensor(maps)
    if maps.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(
            f"maps must be (B, H, W) = {(x.shape[0], *x.shape[2:])} to match x, "
            f"got {tuple(maps.shape)}"
        )
    return maps.to(device=x.device, dtype=torch.float32)


@torch.no_grad()
def class_probabilities(
    model: nn.Module,
    inputs: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Softmax probability of a class for every image, in batches.

    inputs: an iterable of ``(x_chunk (n, C, H, W), classes (n,))``; each chunk is one
    forward pass. Returns the concatenated (N,) probabilities on the CPU. The model runs
    in eval mode; each module's training flag is restored afterwards.
    """
    device = model_device(model)
    out = []
    with eval_mode(model):
        for x, classes in inputs:
            logits = logits_of(model(model_input(x, model))).float()
            probabilities = torch.softmax(logits, 1)
            out.append(probabilities.gather(1, classes.to(device)[:, None])[:, 0].cpu())
    return torch.cat(out) if out else torch.zeros(0)

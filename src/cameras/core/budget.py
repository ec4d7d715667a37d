"""The memory budget: how large a model input may get, and what a CAMERAS call will cost.

Two rules, stated in docs/reliability.md and applied on every path (the Python API,
``cameras explain`` and the other subcommands, the web page), since all of them go
through ``Preprocess`` and the methods:

1. **Aspect cap.** An input is resized so its shorter side is the scale ``s``, keeping its
   aspect ratio, as long as the longer side is at most ``MAX_ASPECT`` times the shorter
   (every ordinary photo and panorama up to 4:1: exactly the paper's rule). A longer,
   thinner input is resized, aspect still kept, to ``MAX_ASPECT * s * s`` pixels instead:
   the pixels of a 4:1 input at that scale. A 10000 x 50 strip at scale 224 becomes
   32 x 6336, not 224 x 44800, and its scales grow from there alike. The scale of such an
   input (``nominal_side``) is the shorter side a 4:1 input of the same pixel count would
   have, so default scales and the first scale's "input as it is" work unchanged.
2. **Budget.** Before the first pass, CAMERAS estimates the memory of its largest pass
   plus the layer outputs and gradients it keeps for fusion, from one probe pass at the
   input's own size (the largest tensors any one module reads and writes, per input
   pixel); a call whose estimate exceeds the budget is refused with a
   ``MemoryBudgetError`` that says which scales fit. The budget is ``CAMERAS_MEMORY_GB``
   (environment), 2 GB by default, on the device the model runs on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

# The longest aspect ratio (long side / short side) resized exactly by the shorter side.
MAX_ASPECT = 4
# The working-memory budget of one call, in GB, when CAMERAS_MEMORY_GB is not set.
DEFAULT_BUDGET_GB = 2.0
BUDGET_VARIABLE = "CAMERAS_MEMORY_GB"
# A no-grad forward pass holds, besides the largest module's input and output, the
# inputs kept for residual connections and the convolutions' work buffers. Measured on
# the CPU, a whole call's peak was 1.9 times the largest module's input + output
# (EfficientNet-Lite0 at 1500 x 2257, ResNet-50 at 1000 x 1504); 2.5 leaves a margin.
PASS_FACTOR = 2.5


class MemoryBudgetError(ValueError):
    """A call would need more memory than the budget; the message says what fits."""


def budget_bytes() -> int:
    """The budget in bytes: ``CAMERAS_MEMORY_GB`` (a positive number of GB) or 2 GB."""
    text = os.environ.get(BUDGET_VARIABLE, "").strip()
    if not text:
        return int(DEFAULT_BUDGET_GB * 2**30)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{BUDGET_VARIABLE}={text!r}: expected a positive number of GB")
    return int(value * 2**30)


def is_extreme(height: int, width: int) -> bool:
    """Whether an input's aspect ratio exceeds ``MAX_ASPECT`` (so the pixel cap applies)."""
    return max(height, width) > MAX_ASPECT * min(height, width)


def nominal_side(height: int, width: int) -> int:
    """The scale an input is at: its shorter side, or, past the aspect cap, the shorter
    side of a ``MAX_ASPECT``:1 input with as many pixels."""
    if not is_extreme(height, width):
        return min(height, width)
    return max(1, round(math.sqrt(height * width / MAX_ASPECT)))


def capped_size(height: int, width: int, scale: int) -> tuple[int, int]:
    """(height, width) of an extreme-aspect input at ``scale``: aspect kept, about
    ``MAX_ASPECT * scale**2`` pixels, each side at least 1."""
    factor = scale / math.sqrt(height * width / MAX_ASPECT)
    return max(1, round(height * factor)), max(1, round(width * factor))


@dataclass(frozen=True)
class PassCost:
    """Bytes per input pixel, per image, measured by ``probe_pass_cost``.

    forward: the largest input + output of any one module in a no-grad pass.
    layer: the explained layer's output (kept, with its gradient, for every scale).
    """

    forward: float
    layer: float

    def scale_bytes(self, pixels: int) -> float:
        """Estimated peak of one pass at ``pixels`` input pixels (one image)."""
        return PASS_FACTOR * self.forward * pixels + 2 * self.layer * pixels

    def call_bytes(self, pixel_counts: Sequence[int], batch: int) -> float:
        """Estimated peak of a CAMERAS call over scales of these pixel counts: the largest
        pass, plus the layer outputs and gradients of every scale, kept for fusion."""
        largest = max(PASS_FACTOR * self.forward * p for p in pixel_counts)
        kept = sum(2 * self.layer * p for p in pixel_counts)
        return batch * (largest + kept)


# The probe pass runs at most this many pixels: a large input is probed on a smaller copy
# (the cost per pixel of a convolutional network does not depend on the size).
PROBE_PIXELS = MAX_ASPECT * 224 * 224


def probe_sample(x: torch.Tensor) -> torch.Tensor:
    """The first image of ``x``, shrunk (bilinear) to at most ``PROBE_PIXELS`` pixels: what
    ``probe_pass_cost`` runs (a method probes once, on its first call, and keeps the cost)."""
    sample = x[:1]
    height, width = sample.shape[2:]
    if height * width > PROBE_PIXELS:
        shrink = math.sqrt(PROBE_PIXELS / (height * width))
        size = (max(1, round(height * shrink)), max(1, round(width * shrink)))
        sample = torch.nn.functional.interpolate(sample, size=size, mode="bilinear")
    return sample


def probe_pass_cost(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> PassCost:
    """One no-grad forward pass of ``x[:1]`` (its own size) with a hook on every module,
    recording the largest input + output bytes of any module and the layer's output bytes,
    per input pixel. The model's training flags are restored (``eval_mode``)."""
    from .capture import dtype_errors, eval_mode, model_input

    largest = 0
    layer_bytes = 0

    def tensor_bytes(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, (tuple, list)):
            return sum(tensor_bytes(v) for v in value)
        return 0

    def record(module, inputs, output) -> None:
        nonlocal largest, layer_bytes
        largest = max(largest, tensor_bytes(inputs) + tensor_bytes(output))
        if module is layer:
            layer_bytes = max(layer_bytes, tensor_bytes(output))

    handles = [module.register_forward_hook(record) for module in model.modules()]
    try:
        with eval_mode(model), torch.no_grad(), dtype_errors(model):
            model(model_input(x[:1], model))
    finally:
        for handle in handles:
            handle.remove()
    pixels = x.shape[2] * x.shape[3]
    return PassCost(forward=largest / pixels, layer=layer_bytes / pixels)


def check_call(
    cost: PassCost, scales: Sequence[int], sizes: Sequence[tuple[int, int]], batch: int
) -> None:
    """Refuse (MemoryBudgetError) a call whose estimate exceeds the budget.

    scales: the requested scales; sizes: each one's (height, width) input size.
    The message names the first scale that does not fit, what it needs, and the largest
    scale that a call with only that scale would fit.
    """
    budget = budget_bytes()
    pixel_counts = [h * w for h, w in sizes]
    if cost.call_bytes(pixel_counts, batch) <= budget:
        return
    # The first scale at which the running total passes the budget.
    for count in range(1, len(scales) + 1):
        if cost.call_bytes(pixel_counts[:count], batch) > budget:
            break
    scale, (height, width) = scales[count - 1], sizes[count - 1]
    needed = cost.call_bytes(pixel_counts[:count], batch)
    fits = largest_fitting_scale(cost, pixel_counts[: count - 1], width / height, batch, budget)
    hint = (
        f"scales up to about {fits} fit: pass smaller scales (scales=, --scales)"
        if fits
        else "no scale fits"
    )
    images = f" for a batch of {batch}" if batch > 1 else ""
    raise MemoryBudgetError(
        f"scale {scale} ({height} x {width} pixels) needs about {_size(needed)}{images} for "
        f"this model, over the memory budget of {_size(budget)} ({BUDGET_VARIABLE}); {hint}"
    )


def _size(count: float) -> str:
    """Bytes as "2 GB", "17.2 GB" or "350 MB"."""
    if count >= 2**30:
        return f"{count / 2**30:.3g} GB"
    return f"{count / 2**20:.3g} MB"


def largest_fitting_scale(
    cost: PassCost, before: Sequence[int], aspect: float, batch: int, budget: int
) -> int:
    """The largest shorter side s such that a call over scales of ``before`` pixels and
    then one at s (an input of aspect ``aspect``, width / height) fits; 0 if none does."""

    def fits(side: int) -> bool:
        pixels = int(side * side * min(max(aspect, 1 / aspect), MAX_ASPECT))
        return cost.call_bytes([*before, pixels], batch) <= budget

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low

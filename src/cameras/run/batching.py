"""``--batch-size auto``: how many same-size images go through the model at once.

The choice is the device's. On the CPU, batching measured slower than one image at a
time (docs/benchmarks.md, "Batching on the CPU": EfficientNet-Lite0 at its default
scales), so the CPU keeps ``CPU_BATCH_SIZE``. On a GPU, one image at a time is
launch-bound (issue 22: 5x slower per image than batches of 16), so the batch is as
large as the free device memory holds, by the memory budget's per-image estimate
(``cameras.core.budget``), up to ``MAX_AUTO_BATCH``.
"""

from __future__ import annotations

import torch

from ..core.budget import PassCost
from ..methods import SaliencyMethod

# Measured on this project's CPU machine (benchmarks/batching.py api): a batch of 4 cost
# more per image than 4 single calls, so the CPU stays one image at a time.
CPU_BATCH_SIZE = 1
# Past ~32 images per call a GPU gains little (issue 22's table: 12.8 ms per image at 16,
# 11.7 at 32) while a larger batch holds more photos and maps in memory.
MAX_AUTO_BATCH = 32
# The share of the free device memory a batch may plan to use: the estimate is of the
# model's passes, and the allocator's fragmentation and the maps kept need room too.
DEVICE_MEMORY_SHARE = 0.7


def batch_size_for(device_type: str, free_bytes: int | None, image_bytes: float | None) -> int:
    """The automatic batch size (pure: the arguments are measured by ``auto_batch_size``).

    device_type: "cpu", "cuda", ...; free_bytes: the device's free memory (None when it
    cannot be read); image_bytes: the estimated peak memory of one image's call (None
    when the backend has no estimate). A GPU with no readings gets batches of 1.
    """
    if device_type != "cuda":
        return CPU_BATCH_SIZE
    if not free_bytes or not image_bytes or image_bytes <= 0:
        return 1
    fitting = int(DEVICE_MEMORY_SHARE * free_bytes // image_bytes)
    return max(1, min(MAX_AUTO_BATCH, fitting))


def image_call_bytes(method: SaliencyMethod, x: torch.Tensor) -> float | None:
    """The estimated peak memory of ``method`` on the one image ``x`` (1, 3, h, w): every
    scale of a multi-scale method, one pass otherwise; None without a memory probe."""
    cost: PassCost | None = method.pass_cost(x)
    if cost is None:
        return None
    height, width = x.shape[2:]
    scales_for = getattr(method, "scales_for", None)
    if scales_for is None:
        return cost.scale_bytes(height * width)
    from ..methods.cameras import resize_to_scale_size

    sizes = [resize_to_scale_size(height, width, s) for s in scales_for(height, width)]
    return cost.call_bytes([h * w for h, w in sizes], batch=1)


def method_device(method: SaliencyMethod) -> torch.device:
    """The device of the method's model (the CPU for a model that is not torch's)."""
    from ..core.capture import model_device

    model = method.model
    return model_device(model) if isinstance(model, torch.nn.Module) else torch.device("cpu")


def auto_batch_size(method: SaliencyMethod, x: torch.Tensor) -> int:
    """``batch_size_for`` this method's device, measured now, for inputs like ``x``
    ((3, h, w) or (1, 3, h, w): the first image of the run)."""
    device = method_device(method)
    if device.type != "cuda":
        return batch_size_for(device.type, None, None)
    x = torch.as_tensor(x).reshape(1, *x.shape[-3:]).to(device)
    free, _ = torch.cuda.mem_get_info(device)
    return batch_size_for("cuda", free, image_call_bytes(method, x))


def parse_batch_size(text: str) -> int | None:
    """``--batch-size``'s value: "auto" (None: the device chooses) or a whole number
    (ValueError otherwise; its range is checked with the other options)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a whole number or 'auto', got {text!r}") from None


# evaluate's batch also sizes its metrics' forward passes (insertion, deletion: no
# gradients, batched well on the CPU); 16 was its default before "auto", kept there.
EVALUATE_CPU_BATCH_SIZE = 16


def evaluate_batch_size(method: SaliencyMethod, input_side: int) -> int:
    """``evaluate --batch-size auto``: ``EVALUATE_CPU_BATCH_SIZE`` off a GPU; on one, the
    batch that fits ``method`` on a 4:3 photo whose shorter side is ``input_side``."""
    if method_device(method).type != "cuda":
        return EVALUATE_CPU_BATCH_SIZE
    return auto_batch_size(method, torch.zeros(1, 3, input_side, input_side * 4 // 3))

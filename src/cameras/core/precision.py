"""The precision a method runs the model's passes in, and the memory layout it keeps.

``precision`` is ``"fp32"`` (the default: the model runs in its own dtype, nothing is
changed), ``"bf16"`` or ``"fp16"``: the forward and backward passes run under
``torch.autocast`` in that dtype (matrix products and convolutions in 16 bits, the rest
as autocast decides), while the model itself is never converted. What comes out of the
capture is widened to float32 (``capture.widened``) and the fusion turns autocast off
(``full_precision``), so the maps are accumulated in float32 whatever the precision.

Layout: a ``channels_last`` input (or model) should stay ``channels_last`` through every
resize, so that each convolution runs in the layout the user chose, without a conversion
around it (``keep_layout``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

# The option's values and the dtype autocast runs in (None: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
DEFAULT_PRECISION = "fp32"


def check_precision(precision: str, backend: str = "torch") -> str:
    """``precision`` checked: one of PRECISIONS, and fp32 for a backend other than PyTorch
    (a Keras model runs in its own dtype: ``keras.mixed_precision``). ValueError otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != DEFAULT_PRECISION and backend != "torch":
        raise ValueError(
            f"precision={precision!r} applies to PyTorch models only; a {backend} model runs "
            "in its own dtype (use precision='fp32')"
        )
    return precision


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context the model's passes run in: nothing for fp32, else ``torch.autocast`` on
    ``device``'s type in the precision's dtype. ValueError, in one line, when this device
    has no autocast in that dtype (a GPU without bfloat16, say)."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    kind = torch.device(device).type
    if not torch.amp.is_autocast_available(kind):
        raise ValueError(f"precision={precision!r}: PyTorch has no autocast on {kind}")
    if kind == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"precision={precision!r}: this GPU ({torch.cuda.get_device_name()}) has no "
            "bfloat16; use precision='fp16'"
        )
    return torch.autocast(kind, dtype=dtype)


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Autocast off for the body (on ``device``'s type): the fusion's products stay float32
    when the model's passes run in 16 bits around it."""
    kind = torch.device(device).type
    if not torch.amp.is_autocast_available(kind):
        yield
        return
    with torch.autocast(kind, enabled=False):
        yield


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-D tensor is laid out channels_last (and not also plain contiguous, as a
    tensor with one channel or a 1x1 grid is: such a tensor has no layout to keep)."""
    return (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


def keep_layout(resized: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``resized`` in ``like``'s memory layout: channels_last when ``like`` is, else as it is.

    PyTorch's resizes keep channels_last today; this makes it a guarantee (a backend or
    mode that gave NCHW would convert every convolution's input back and forth)."""
    if is_channels_last(like) and not resized.is_contiguous(memory_format=torch.channels_last):
        return resized.contiguous(memory_format=torch.channels_last)
    return resized

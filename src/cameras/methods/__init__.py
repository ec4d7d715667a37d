"""Saliency methods: CAMERAS and the CAM baselines, all with one call signature.

``METHODS`` is the one registry and ``build_method`` the one place a method is built
(tests/test_one_door.py). Each method asks its backend, per input size, for the scores,
the layer's output and its gradient, so it works on every kind of model. This package
may import the core and the backends only (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..core.precision import DEFAULT_PRECISION, check_precision
from .base import Explanation, SaliencyMethod, ScaleRecord
from .cameras import CAMERAS, default_scales
from .gradcam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from .more import MORE_METHODS

METHODS: dict[str, type[SaliencyMethod]] = {
    cls.name: cls for cls in (CAMERAS, GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM)
}
METHODS.update({cls.name: cls for cls in MORE_METHODS})


def check_method_names(names: Sequence[str]) -> list[str]:
    """The names as a list, or ValueError naming the first one that is not in METHODS."""
    for name in names:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return list(names)


def build_method(
    name: str,
    model: nn.Module,
    layer: str | nn.Module | None = None,
    scales: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    rule: str | None = None,
    precision: str = DEFAULT_PRECISION,
    **options,
) -> SaliencyMethod:
    """The method ``name`` (a key of METHODS) for ``model``: the one place a method is
    constructed (``Session.method``, the ``cameras.keras`` names and the Ray actors all
    come here). ``scales`` and the scale ``rule`` apply to CAMERAS only (the baselines run
    at the input's own size) and are ignored by the others. options: the method's other
    arguments (``backend``, ``reshape_transform``, CAMERAS's ``strict``). precision:
    ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``, every method (``core.precision``)."""
    check_method_names([name])
    check_precision(precision)  # before the layer probe: a typo fails at once
    if name == CAMERAS.name:
        options.update(scales=scales, rule=rule)
    return METHODS[name](
        model, layer=layer, class_names=class_names, precision=precision, **options
    )


__all__ = [
    "CAMERAS",
    "METHODS",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "SaliencyMethod",
    "ScaleRecord",
    "XGradCAM",
    "build_method",
    "check_method_names",
    "default_scales",
]

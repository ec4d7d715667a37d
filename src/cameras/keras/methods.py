"""CAMERAS and the CAM baselines for Keras models, under the names Keras users import.

There is one class per method (``cameras.CAMERAS``, ...), whatever the model: each name
here builds that method with the Keras backend (``cameras.backends.keras``), so it
refuses a model that is not a ``keras.Model``. ``cameras.CAMERAS(keras_model)`` works as
well (the backend is picked from the model's type). Inputs are (B, H, W, C) arrays and
results NumPy arrays; a torch tensor is taken in PyTorch's layout and gives tensors.
"""

from __future__ import annotations

from collections.abc import Callable

from ..methods import METHODS as _METHODS
from ..methods import SaliencyMethod, build_method


def _keras_method(name: str) -> Callable[..., SaliencyMethod]:
    cls = _METHODS[name]

    def build(model, layer=None, **options) -> SaliencyMethod:
        from ..backends.keras import KerasBackend  # here: that module imports this package

        return build_method(name, model, layer, backend=KerasBackend(model), **options)

    build.__name__ = build.__qualname__ = cls.__name__
    build.__doc__ = (
        f"{cls.__name__} for a Keras model: ``{cls.__name__}(model)(x)`` with x "
        f"(B, H, W, C), preprocessed; the arguments and result of ``cameras.{cls.__name__}``, "
        "with ``.maps`` a (B, H, W) float32 NumPy array in [0, 1]."
    )
    return build


# FullGrad (every bias gradient) and CAM (the head's weights) read the PyTorch model
# itself: not offered here, and given a Keras model they refuse in one line.
_TORCH_ONLY = ("fullgrad", "cam")
METHODS: dict[str, Callable[..., SaliencyMethod]] = {
    name: _keras_method(name) for name in _METHODS if name not in _TORCH_ONLY
}
CAMERAS = METHODS["cameras"]
GradCAM = METHODS["gradcam"]
GradCAMPlusPlus = METHODS["gradcam++"]
XGradCAM = METHODS["xgradcam"]
LayerCAM = METHODS["layercam"]
HiResCAM = METHODS["hirescam"]

__all__ = [
    "CAMERAS",
    "METHODS",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "XGradCAM",
]

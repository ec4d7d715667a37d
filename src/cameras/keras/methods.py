"""CAMERAS and the CAM baselines for Keras models: the PyTorch classes with a TensorFlow backend.

Each class here is its PyTorch twin (same constructor, same maths, same ``Explanation``)
with the backend hooks of ``SaliencyMethod`` replaced: the model is bound as a
``FlexibleNetwork``, each scale's scores, layer output and gradient come from a
``KerasCapture``, inputs are (B, H, W, C) arrays and results are NumPy arrays.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import torch

from ..methods import cameras as _cameras
from ..methods import gradcam as _gradcam
from ..methods import more as _more
from ..methods.base import SaliencyMethod, Targets, check_finite
from .capture import KerasCapture
from .network import network_for

_TORCH_ONLY = ("fullgrad", "cam")


class KerasBackend:
    """Backend hooks (see ``SaliencyMethod``) for a ``keras.Model`` on TensorFlow.

    model: a built Functional or Sequential ``keras.Model`` with one (B, H, W, C) image
        input and (B, K) class scores (softmax or not) as its first output; nested
        models are fine. It is never changed: a private copy with a flexible input
        size runs, with the model's current weights copied in at every call.
    layer: a layer name (dotted inside a nested model: ``"backbone.conv5_block3_out"``),
        a layer of the model, or None for the last layer whose 4-D output grows with
        the input.
    """

    def _bind(self, model, layer):
        self._network = network_for(model)
        name = self._network.resolve_layer(layer)
        return name, self._network.layers[name]

    def _open_capture(self) -> KerasCapture:
        return KerasCapture(self._network, self.layer_name, self.reshape_transform)

    def _input_batch(self, x) -> tuple[torch.Tensor, None]:
        return keras_batch(x, self._network.channels), None

    def _output(self, tensor: torch.Tensor, _source: None) -> np.ndarray:
        return tensor.detach().cpu().numpy().astype(np.float32)

    def _check_targets(self, targets: Targets, batch: int) -> torch.Tensor | None:
        # NumPy and TensorFlow classes become plain ints for the shared class rule.
        if isinstance(targets, np.ndarray | np.integer) or tf.is_tensor(targets):
            values = np.asarray(targets)
            targets = int(values) if values.ndim == 0 else values.reshape(-1).tolist()
        elif isinstance(targets, list | tuple):
            targets = [int(t) if isinstance(t, np.integer) else t for t in targets]
        return super()._check_targets(targets, batch)


def keras_batch(x, channels: int) -> torch.Tensor:
    """A (B, H, W, C) or (H, W, C) float array (NumPy, TensorFlow, anything array-like)
    -> a (B, C, H, W) float32 torch tensor for the shared maths; NaN or infinite values
    are a ValueError, as for PyTorch models."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        values = np.asarray(x)
    except Exception as error:  # noqa: BLE001 - any conversion failure is the same error
        raise TypeError(f"x must be a float array, not {type(x).__name__} ({error})") from None
    if values.ndim == 3:
        values = values[None]
    if values.ndim != 4 or values.shape[0] == 0 or values.shape[-1] != channels:
        raise ValueError(
            f"x must have shape (B, H, W, {channels}) (channels last), got {values.shape}"
        )
    if not np.issubdtype(values.dtype, np.floating):
        raise TypeError(f"x must be a float array (preprocessed image), not {values.dtype}")
    batch = torch.from_numpy(values.astype(np.float32))
    check_finite(batch)
    return batch.permute(0, 3, 1, 2).contiguous()


class CAMERAS(KerasBackend, _cameras.CAMERAS):
    """CAMERAS for a Keras model: ``CAMERAS(model)(x)`` with x (B, H, W, C), preprocessed.

    Same arguments and result as ``cameras.CAMERAS``; ``.maps`` is a (B, H, W) float32
    NumPy array in [0, 1].
    """


class GradCAM(KerasBackend, _gradcam.GradCAM):
    """Grad-CAM for a Keras model (see ``cameras.GradCAM``)."""


class GradCAMPlusPlus(KerasBackend, _gradcam.GradCAMPlusPlus):
    """Grad-CAM++ for a Keras model (see ``cameras.GradCAMPlusPlus``)."""


class XGradCAM(KerasBackend, _gradcam.XGradCAM):
    """XGrad-CAM for a Keras model (see ``cameras.XGradCAM``)."""


class LayerCAM(KerasBackend, _gradcam.LayerCAM):
    """LayerCAM for a Keras model (see ``cameras.LayerCAM``)."""


class HiResCAM(KerasBackend, _gradcam.HiResCAM):
    """HiResCAM for a Keras model (see ``cameras.HiResCAM``)."""


def _keras_twin(cls: type[SaliencyMethod]) -> type[SaliencyMethod]:
    """The Keras version of a single-layer method (the shared maths, this backend)."""
    doc = f"{cls.__name__} for a Keras model (see ``cameras.methods.more.{cls.__name__}``)."
    return type(cls.__name__, (KerasBackend, cls), {"__doc__": doc, "__module__": __name__})


# FullGrad (every bias gradient) and CAM (the head's weights) read the PyTorch model itself
# and are not offered here; given a Keras model they refuse in one line.
MORE_METHODS = [_keras_twin(cls) for cls in _more.MORE_METHODS if cls.name not in _TORCH_ONLY]

METHODS: dict[str, type[SaliencyMethod]] = {
    cls.name: cls
    for cls in (CAMERAS, GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM, *MORE_METHODS)
}

"""``KerasSession``: the library's entry object (``cameras.Session``) over a Keras model.

The CLI drives a Keras model file through the same calls as a PyTorch model (open an
image, explain, resize the map to the photo); only the backend hooks differ: Keras
methods, (1, H, W, 3) NumPy inputs, the layer found on the rebuilt network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from ..methods.base import SaliencyMethod
from ..session import Session
from .methods import METHODS
from .models import load_model
from .network import network_for


class KerasSession(Session):
    """A Keras model with its preprocessing (``KerasPreprocess``) and class names."""

    @classmethod
    def load_file(
        cls,
        path: str | Path,
        preprocess: str,
        layer: str | None = None,
        scales: Sequence[int] | None = None,
        rule: str | None = None,
    ) -> KerasSession:
        """A session over a ``.keras`` / ``.h5`` file (KerasModelError if it cannot load)."""
        model, prep, classes = load_model(path, preprocess)
        return cls(model, prep, classes, layer=layer, scales=scales, rule=rule)

    def _check_model(self, model: object) -> None:
        if not isinstance(model, keras.Model):
            raise TypeError(f"model must be a keras.Model, not {type(model).__name__}")

    def _build_method(self, name: str, scales: Sequence[int] | None) -> SaliencyMethod:
        extra = {"scales": scales, "rule": self.rule} if name == "cameras" else {}
        return METHODS[name](self.model, layer=self.layer, class_names=self.class_names, **extra)

    @property
    def layer(self) -> str:
        """The explained layer's dotted name, found once (ValueError for a bad name)."""
        if not self._layer_resolved:
            self._layer = network_for(self.model).resolve_layer(self._layer)
            self._layer_resolved = True
        return self._layer

    @property
    def num_classes(self) -> int:
        return int(self.model.outputs[0].shape[-1])

    def input(self, image: Image.Image) -> np.ndarray:
        """The (1, h, w, 3) float32 model input of a PIL image."""
        return self.prep(image)[None]

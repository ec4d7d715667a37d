"""cameras for Keras models (TensorFlow backend): the same methods, the same maths.

import cameras.keras
result = cameras.keras.CAMERAS(model)(x)   # model: keras.Model; x: (B, H, W, 3) preprocessed
result.maps                                # (B, H, W) float32 NumPy array in [0, 1]

Needs the ``keras`` extra: ``pip install 'cameras[keras]'``. ``import cameras`` alone
never imports TensorFlow. This package (the Keras capture, the flexible copy of a model,
Keras model files, the public names) may import the core, the backends, the methods, the
models and the session; the Keras backend and the model loader import it only when a
Keras model is used (docs/architecture.md).
"""

import contextlib
import os
import sys

# Keras 3 picks its backend once, at import: this package needs TensorFlow's.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

if "tensorflow" not in sys.modules:
    # Triton (which torch loads lazily, e.g. for torchvision) crashes the process when it
    # loads after TensorFlow (clashing native libraries); loaded first, both work.
    with contextlib.suppress(ImportError):
        import triton  # noqa: F401

try:
    import keras
    import tensorflow  # noqa: F401
except ImportError as error:
    raise ImportError(
        f"cameras.keras needs TensorFlow and Keras ({error}); install them with "
        "pip install 'cameras[keras]'"
    ) from error

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"cameras.keras needs Keras's TensorFlow backend, but Keras runs on "
        f"{keras.backend.backend()!r}; set KERAS_BACKEND=tensorflow before importing keras"
    )

from ..session import Session as KerasSession  # noqa: E402 - the one Session, by its old name
from .methods import (  # noqa: E402 - after the checks above, on purpose
    CAMERAS,
    METHODS,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from .models import PREPROCESS_MODES, KerasPreprocess, is_keras_file, load_model  # noqa: E402
from .network import KerasModelError  # noqa: E402

__all__ = [
    "CAMERAS",
    "METHODS",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "KerasModelError",
    "KerasPreprocess",
    "KerasSession",
    "PREPROCESS_MODES",
    "LayerCAM",
    "XGradCAM",
    "is_keras_file",
    "load_model",
]

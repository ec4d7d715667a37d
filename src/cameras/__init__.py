"""cameras: CAMERAS saliency maps (CVPR 2021) and CAM baselines for PyTorch classifiers.

import cameras
model, prep, classes = cameras.load_model()
result = cameras.CAMERAS(model)(prep(image)[None])
result.maps  # (1, H, W) in [0, 1]
"""

from .images import ImageError, load_image
from .methods import (
    CAMERAS,
    METHODS,
    Explanation,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScaleRecord,
    XGradCAM,
    default_scales,
)
from .models import ModelError, Preprocess, load_model
from .viz import overlay

__version__ = "0.1.0"

__all__ = [
    "CAMERAS",
    "METHODS",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "ImageError",
    "LayerCAM",
    "ModelError",
    "Preprocess",
    "ScaleRecord",
    "XGradCAM",
    "default_scales",
    "load_image",
    "load_model",
    "overlay",
]

"""cameras: CAMERAS saliency maps (CVPR 2021) and CAM baselines for PyTorch classifiers.

import cameras
model, prep, classes = cameras.load_model()
result = cameras.CAMERAS(model)(prep(image)[None])
result.maps  # (1, H, W) in [0, 1]

session = cameras.Session.load()          # the same, with class names and methods built once
image, x = session.open("cat.jpg")
session.explain(x, "cameras", target="tabby")
"""

from .classes import ClassError, class_index
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
from .session import Session
from .viz import overlay

__version__ = "0.1.0"

__all__ = [
    "CAMERAS",
    "METHODS",
    "ClassError",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "ImageError",
    "LayerCAM",
    "ModelError",
    "Preprocess",
    "ScaleRecord",
    "Session",
    "XGradCAM",
    "class_index",
    "default_scales",
    "load_image",
    "load_model",
    "overlay",
]

"""cameras: CAMERAS saliency maps (CVPR 2021) and CAM baselines for image models.

import cameras
model, prep, classes = cameras.load_model()
result = cameras.CAMERAS(model)(prep(image)[None])
result.maps  # (1, H, W) in [0, 1]

session = cameras.Session.load()          # the same, with class names and methods built once
image, x = session.open("cat.jpg")
session.explain(x, "cameras", target="tabby")

The public names are imported on first use (PEP 562), so ``import cameras`` and
``cameras --help`` load no torch.
"""

from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

# Public name -> the module that defines it (relative to this package).
_PUBLIC = {
    "ClassError": ".core.classes",
    "class_index": ".core.classes",
    "ImageError": ".core.images",
    "load_image": ".core.images",
    "CAMERAS": ".methods",
    "METHODS": ".methods",
    "Explanation": ".methods",
    "GradCAM": ".methods",
    "GradCAMPlusPlus": ".methods",
    "HiResCAM": ".methods",
    "LayerCAM": ".methods",
    "ScaleRecord": ".methods",
    "XGradCAM": ".methods",
    "default_scales": ".methods",
    "ModelError": ".models",
    "Preprocess": ".models",
    "load_model": ".models",
    "Session": ".session",
    "SessionSpec": ".session",
    "overlay": ".apps.viz",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # A submodule, as ``import cameras; cameras.session.SessionSpec`` expects.
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'cameras' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))

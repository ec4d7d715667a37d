"""Saliency methods: CAMERAS and the single-scale CAM baselines, all with one call signature."""

from .base import Explanation, SaliencyMethod, ScaleRecord
from .cameras import CAMERAS, default_scales
from .gradcam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM

METHODS: dict[str, type[SaliencyMethod]] = {
    cls.name: cls for cls in (CAMERAS, GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM)
}

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
    "default_scales",
]

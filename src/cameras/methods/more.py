"""The methods beyond CAMERAS and the five gradient baselines, in the order they are listed
(``cameras.METHODS``): gradient-free, principal-component, whole-network and the original CAM."""

from __future__ import annotations

from .cam import CAM
from .eigen import KPCACAM, EigenCAM, EigenGradCAM
from .elementwise import GradCAMElementWise
from .fullgrad import FullGrad
from .perturbation import AblationCAM, ScoreCAM

MORE_METHODS = (
    ScoreCAM,
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    GradCAMElementWise,
    KPCACAM,
    FullGrad,
    CAM,
)

__all__ = [
    "CAM",
    "MORE_METHODS",
    "AblationCAM",
    "EigenCAM",
    "EigenGradCAM",
    "FullGrad",
    "GradCAMElementWise",
    "KPCACAM",
    "ScoreCAM",
]

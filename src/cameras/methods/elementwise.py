"""Element-wise Grad-CAM: activations times gradients, clipped at zero before the sum."""

from __future__ import annotations

from .smoothing import SmoothableCAM


class GradCAMElementWise(SmoothableCAM):
    """Element-wise Grad-CAM (pytorch-grad-cam's ``GradCAMElementWise``): the sum over
    channels of ReLU(gradients * activations), each location on its own."""

    name = "gradcam-elementwise"

    def weighted_activations(self, capture, x, step, targets):
        return (step.gradients * step.activations).clamp(min=0)

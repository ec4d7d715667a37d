"""Single-scale CAM baselines: Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM.

Each one turns the layer's activations A and gradients G (B, C, h, w), at the input's
own size, into weighted activations (B, C, h, w) whose sum over channels (or, with
``eigen_smooth``, first principal component) is the (B, h, w) map, upsampled (bilinear)
to the input size; ``aug_smooth`` averages six augmented inputs (``smoothing``). The
formulas follow the papers as pytorch-grad-cam implements them, which the tests check
against.
"""

from __future__ import annotations

import torch

from .smoothing import SmoothableCAM


class _SingleScaleCAM(SmoothableCAM):
    """Options ``aug_smooth`` and ``eigen_smooth`` as in ``smoothing.SmoothableCAM``."""

    def weighted(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) activations and gradients -> (B, C, h, w) weighted activations."""
        raise NotImplementedError

    def layer_map(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) activations and gradients -> (B, h, w) map before ReLU."""
        return self.weighted(activations, gradients).sum(1)

    def weighted_activations(self, capture, x, step, targets):
        return self.weighted(step.activations, step.gradients)


def _weighted(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    return weights[:, :, None, None] * activations  # summed over channels by layer_map


class GradCAM(_SingleScaleCAM):
    """Grad-CAM (Selvaraju et al. 2017): channels weighted by their mean gradient."""

    name = "gradcam"

    def weighted(self, activations, gradients):
        return _weighted(gradients.mean((2, 3)), activations)


class GradCAMPlusPlus(_SingleScaleCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018), eq. 19 with the positive-gradient ReLU."""

    name = "gradcam++"

    def weighted(self, activations, gradients):
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        sum_activations = activations.sum((2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_activations * g3 + 1e-6)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        weights = (gradients.clamp(min=0) * alpha).sum((2, 3))
        return _weighted(weights, activations)


class XGradCAM(_SingleScaleCAM):
    """XGrad-CAM (Fu et al. 2020): gradients weighted by normalised activations."""

    name = "xgradcam"

    def weighted(self, activations, gradients):
        sum_activations = activations.sum((2, 3), keepdim=True)
        weights = (gradients * activations / (sum_activations + 1e-7)).sum((2, 3))
        return _weighted(weights, activations)


class LayerCAM(_SingleScaleCAM):
    """LayerCAM (Jiang et al. 2021): activations weighted by positive gradients, per location."""

    name = "layercam"

    def weighted(self, activations, gradients):
        return gradients.clamp(min=0) * activations


class HiResCAM(_SingleScaleCAM):
    """HiResCAM (Draelos & Carin 2020): element-wise product of gradients and activations."""

    name = "hirescam"

    def weighted(self, activations, gradients):
        return gradients * activations

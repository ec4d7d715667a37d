"""Single-scale CAM baselines: Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM.

Each one turns the layer's activations A and gradients G (B, C, h, w), at the input's
own size, into a (B, h, w) map; the base class upsamples it (bilinear) to the input
size. The formulas follow the papers as pytorch-grad-cam implements them, which the
tests check against.
"""

from __future__ import annotations

import torch

from ..budget import check_call, nominal_side
from ..capture import LayerCapture
from ..fusion import resize_grid
from .base import SaliencyMethod, scale_records, top1_of


class _SingleScaleCAM(SaliencyMethod):
    def layer_map(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) activations and gradients -> (B, h, w) map before ReLU."""
        raise NotImplementedError

    def _explain(self, capture: LayerCapture, x: torch.Tensor, targets: torch.Tensor | None):
        cost = self.pass_cost(x)  # one pass at the input's size: within the budget?
        if cost is not None:
            check_call(cost, [nominal_side(*x.shape[2:])], [tuple(x.shape[2:])], batch=1)
        step, used = capture.run(x, top1_of if targets is None else targets)
        low = self.layer_map(step.activations, step.gradients).clamp(min=0)
        # A token grid padded to whole patches spans more than the input (fusion.resize_grid).
        maps = resize_grid(low, tuple(x.shape[2:]), getattr(step, "covered", None))
        keep = torch.ones_like(used, dtype=torch.bool)
        records = scale_records(step.logits, min(x.shape[2:]), tuple(x.shape[2:]), keep)
        return maps, used, [[r] for r in records], torch.softmax(step.logits.float(), 1)


def _weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bc,bchw->bhw", weights, activations)


class GradCAM(_SingleScaleCAM):
    """Grad-CAM (Selvaraju et al. 2017): channels weighted by their mean gradient."""

    name = "gradcam"

    def layer_map(self, activations, gradients):
        return _weighted_sum(gradients.mean((2, 3)), activations)


class GradCAMPlusPlus(_SingleScaleCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018), eq. 19 with the positive-gradient ReLU."""

    name = "gradcam++"

    def layer_map(self, activations, gradients):
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        sum_activations = activations.sum((2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_activations * g3 + 1e-6)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        weights = (gradients.clamp(min=0) * alpha).sum((2, 3))
        return _weighted_sum(weights, activations)


class XGradCAM(_SingleScaleCAM):
    """XGrad-CAM (Fu et al. 2020): gradients weighted by normalised activations."""

    name = "xgradcam"

    def layer_map(self, activations, gradients):
        sum_activations = activations.sum((2, 3), keepdim=True)
        weights = (gradients * activations / (sum_activations + 1e-7)).sum((2, 3))
        return _weighted_sum(weights, activations)


class LayerCAM(_SingleScaleCAM):
    """LayerCAM (Jiang et al. 2021): activations weighted by positive gradients, per location."""

    name = "layercam"

    def layer_map(self, activations, gradients):
        return (gradients.clamp(min=0) * activations).sum(1)


class HiResCAM(_SingleScaleCAM):
    """HiResCAM (Draelos & Carin 2020): element-wise product of gradients and activations."""

    name = "hirescam"

    def layer_map(self, activations, gradients):
        return (gradients * activations).sum(1)

"""CAM (Zhou et al. 2016): the linear head's weights for the class on the pooled layer.

For a model that ends in global average pooling and one linear layer, the map of class
k is ReLU(sum_c W[k, c] A_c) over the last feature map A. The head is found by name:
``classifier`` (torchvision EfficientNet / VGG-style, this package's EfficientNet-Lite),
``fc`` (torchvision ResNet), ``head`` or ``head.fc`` (timm), also one level or more
down (``backbone.fc``); the layer (automatic by default) must have as many channels as
the head has inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from .smoothing import SmoothableCAM

HEAD_NAMES = ("classifier", "fc", "head", "head.fc", "classifier.1", "classifier.fc")


def linear_head(model: nn.Module) -> nn.Linear:
    """The model's final linear layer, by ``HEAD_NAMES``; a ValueError otherwise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"cam reads the linear head of a PyTorch model; got {type(model).__name__}")
    modules = dict(model.named_modules())
    for name in HEAD_NAMES:
        if isinstance(modules.get(name), nn.Linear):
            return modules[name]
    # A wrapped model (``backbone.fc``): the last linear layer under one of those names.
    for name in reversed(list(modules)):
        if isinstance(modules[name], nn.Linear) and name.rsplit(".", 1)[-1] in HEAD_NAMES:
            return modules[name]
    raise ValueError(
        "cam needs a model ending in global pooling and one linear layer named "
        f"{', '.join(HEAD_NAMES)}; none found (use gradcam, which equals CAM on such models)"
    )


class CAM(SmoothableCAM):
    """CAM: channels weighted by the class's row of the linear head (no gradient used)."""

    name = "cam"

    def __init__(self, model, *args, **options):
        self.head = linear_head(model)  # first: a model without one is refused in one line
        super().__init__(model, *args, **options)

    def weighted_activations(self, capture, x, step, targets):
        activations = step.activations
        weight = self.head.weight.detach().to(activations.device, torch.float32)
        if weight.shape[1] != activations.shape[1]:
            raise ValueError(
                f"layer {self.layer_name!r} has {activations.shape[1]} channels but the linear "
                f"head takes {weight.shape[1]}: pick the layer that is pooled into the head"
            )
        classes = [targets.class_of(b) for b in range(activations.shape[0])]
        if any(c is None for c in classes):
            raise ValueError("cam explains one class per image: pass a class, not a box or set")
        rows = torch.tensor(classes, device=activations.device)
        return weight[rows][:, :, None, None] * activations

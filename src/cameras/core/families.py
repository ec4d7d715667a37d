"""Model families whose output is not a (B, K) class score: torchvision segmentation and
detection models, Hugging Face SegFormer. What the capture needs to know about them:

- ``task_layer(model)``: the layer explained when none is given, or None when the model is
  not of a known family (the capture's own probe then decides);
- ``native_size(model)``: a context in which the model runs at the size it is given, so
  that the scales reach the backbone (a detector's own transform resizes every input).
"""

from __future__ import annotations

import contextlib

from torch import nn


def task_layer(model: nn.Module) -> str | None:
    """The default layer of a known segmentation or detection family; None otherwise."""
    return None


def native_size(model: nn.Module) -> contextlib.AbstractContextManager:
    """A context in which the model runs at its input's own size (nothing to do for models
    that already do)."""
    return contextlib.nullcontext()

"""Model families whose output is not a (B, K) class score: torchvision segmentation and
detection models, Hugging Face SegFormer. What the capture needs to know about them:

- ``task_layer(model)``: the layer explained when none is given, or None when the model is
  not of a known family (the capture's own probe then decides);
- ``native_size(model)``: a context in which the model runs at the size it is given, so
  that the scales reach the backbone (a detector's own transform resizes every input).

The families are recognised by class name along ``type(model).__mro__`` (a subclass of a
torchvision detector is still one); nothing here imports torchvision or transformers.
docs/targets.md ("Model families") says which layer each family gets and why.
"""

from __future__ import annotations

import contextlib

from torch import nn

from .tokens import _attributes_set

SEGMENTATION = "torchvision segmentation"
DETECTION = "torchvision detection"
SEGFORMER = "Hugging Face SegFormer"

# (top-level package, class name) -> family; looked up along the model's class hierarchy.
_FAMILY_CLASSES = {
    ("torchvision", "_SimpleSegmentationModel"): SEGMENTATION,  # FCN, DeepLabV3
    ("torchvision", "LRASPP"): SEGMENTATION,
    ("torchvision", "GeneralizedRCNN"): DETECTION,  # Faster / Mask / Keypoint R-CNN
    ("torchvision", "RetinaNet"): DETECTION,
    ("torchvision", "FCOS"): DETECTION,
    ("torchvision", "SSD"): DETECTION,  # SSD300, SSDlite
    ("transformers", "SegformerPreTrainedModel"): SEGFORMER,
}


def model_family(model: nn.Module) -> str | None:
    """The family of ``model`` (one of the names above), or None for any other model."""
    for cls in type(model).__mro__:
        family = _FAMILY_CLASSES.get((cls.__module__.split(".")[0], cls.__name__))
        if family is not None:
            return family
    return None


def task_layer(model: nn.Module) -> str | None:
    """The default layer of a known segmentation or detection family; None otherwise.

    - torchvision segmentation: the backbone's deepest returned stage (``backbone.layer4``
      for FCN / DeepLabV3 ResNets, ``backbone.16`` for the MobileNetV3 ones and LR-ASPP),
      the map the head reads. These backbones are dilated, so it is at stride 8 (ResNet)
      or 16 (MobileNetV3): no stride-32 map exists in them.
    - torchvision detection: the backbone body's last stage (``backbone.body.layer4``,
      stride 32) under an FPN, whose top-down path carries it into every level. SSD has no
      such path: each level's detections depend only on that level and the layers before
      it, so the layer is the first map it detects from, which every later level is built
      on (SSDlite: ``backbone.features.0``, stride 16; SSD300: ``backbone.features``). A
      later block (SSDlite's stride-32 ``backbone.features.1``) gets no gradient from a
      detection made on the stride-16 map. FPN levels can be given by name
      (``backbone.fpn.layer_blocks.N``).
    - SegFormer: the last encoder stage (``segformer.stages.N``, a (B, C, h, w) map at
      stride 32); where that stage gives tokens instead, the depthwise convolution of its
      last Mix-FFN, the deepest module of the stage whose output is a map.
    """
    family = model_family(model)
    if family == SEGMENTATION:
        return _last_returned(model.backbone, "backbone")
    if family == DETECTION:
        backbone = model.backbone
        if hasattr(backbone, "body"):  # BackboneWithFPN
            return _last_returned(backbone.body, "backbone.body")
        return _ssd_first_level(backbone)
    if family == SEGFORMER:
        return _segformer_layer(model)
    return None


def _last_returned(getter: nn.Module, prefix: str) -> str | None:
    """The deepest child of a torchvision ``IntermediateLayerGetter`` among those it
    returns (FCN with an auxiliary head returns layer3 and layer4: layer4)."""
    returned = getattr(getter, "return_layers", None)
    if not returned:
        return None
    names = [name for name, _ in getter.named_children() if name in returned]
    return f"{prefix}.{names[-1]}" if names else None


def _ssd_first_level(backbone: nn.Module) -> str | None:
    """The module whose output is SSD's first detection level: SSDlite runs the blocks of
    ``features`` one by one (each block's output is a level), SSD300 calls ``features``
    whole (its output, conv4_3, is the first level)."""
    features = getattr(backbone, "features", None)
    if not isinstance(features, nn.Sequential):
        return None
    if type(backbone).__name__.startswith("SSDLite"):
        return "backbone.features.0"
    return "backbone.features"


def _segformer_layer(model: nn.Module) -> str | None:
    names = [name for name, _ in model.named_modules()]
    config = getattr(model, "config", None)
    # transformers >= 5: one module per encoder stage, whose output is a (B, C, h, w) map
    # unless the config keeps the last stage as tokens (reshape_last_stage=False).
    stages = [name for name in names if _is_indexed_child(name, "stages")]
    if stages and getattr(config, "reshape_last_stage", True):
        return stages[-1]
    # Otherwise the stage is tokens (B, N, C), or reshaped outside any module (transformers
    # 4): the last Mix-FFN's depthwise convolution is the deepest map of the last stage.
    convolutions = [name for name in names if name.endswith("mlp.dwconv.dwconv")]
    return convolutions[-1] if convolutions else None


def _is_indexed_child(name: str, container: str) -> bool:
    """Whether ``name`` is ``...<container>.<index>`` (a ModuleList entry)."""
    parent, _, last = name.rpartition(".")
    return last.isdigit() and (parent == container or parent.endswith(f".{container}"))


def native_size(model: nn.Module) -> contextlib.AbstractContextManager:
    """A context in which the model runs at its input's own size (nothing to do for models
    that already do).

    torchvision detectors resize every image in their ``GeneralizedRCNNTransform`` (shorter
    side ``min_size``, or SSD's ``fixed_size``) and pad the batch to a multiple of 32, so a
    scale would never reach the backbone at its own size. Inside the context the transform
    passes each image through unchanged (its ``resize`` returns the image as it is) and
    pads to a multiple of 1, i.e. not at all; it still normalises, and boxes come back in
    the input's coordinates. What the model detects is otherwise unchanged: its score
    threshold stays the user's. Every attribute is put back on exit, also after an
    exception.
    """
    if model_family(model) != DETECTION:
        return contextlib.nullcontext()
    transform = getattr(model, "transform", None)
    if transform is None or not _is_class(transform, "GeneralizedRCNNTransform"):
        return contextlib.nullcontext()
    return _attributes_set([(transform, "resize", _unchanged), (transform, "size_divisible", 1)])


def _unchanged(image, target=None):
    """``GeneralizedRCNNTransform.resize`` that keeps the image's size (and its target)."""
    return image, target


def _is_class(obj: object, name: str) -> bool:
    return any(cls.__name__ == name for cls in type(obj).__mro__)

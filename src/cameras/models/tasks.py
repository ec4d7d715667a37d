"""torchvision segmentation and detection models by name (``fcn_resnet50``,
``fasterrcnn_resnet50_fpn``, ...): built without downloading anything unless pretrained
weights are asked for and no file is given, a local state dict loaded as for classifiers,
the class names torchvision's weight metadata carries (VOC for segmentation, COCO for
detection; reading the metadata downloads nothing), and the preprocessing each expects.

Preprocessing: segmentation models take ImageNet-normalised images, shorter side 520 (their
weights' own transform). Detectors normalise inside their ``GeneralizedRCNNTransform`` and
take [0, 1] images, so their ``Preprocess`` has mean 0 and std 1; its size is the shorter
side the detector resizes to itself (800, or 320 for SSDlite): the capture turns that
resizing off (``core.families.native_size``) so that each scale reaches the backbone.
"""

from __future__ import annotations

import functools

from torch import nn

from ..core.families import DETECTION, model_family
from . import (
    _IMAGENET_MEAN,
    _IMAGENET_STD,
    ModelError,
    Preprocess,
    _download_error,
    _load_into,
    _load_state_dict,
)


@functools.cache
def task_model_names() -> frozenset[str]:
    """Every torchvision segmentation and detection builder's name."""
    import torchvision

    models = torchvision.models
    return frozenset(
        models.list_models(module=models.segmentation) + models.list_models(module=models.detection)
    )


def load_task_model(
    name: str, weights, pretrained: bool
) -> tuple[nn.Module, Preprocess, list[str] | None]:
    """(model in eval mode, its preprocessing, its class names) for a torchvision
    segmentation or detection name (see ``task_model_names``)."""
    import torchvision

    state = _load_state_dict(weights) if weights is not None else None
    if state is None and pretrained:
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as error:  # noqa: BLE001 - network and cache errors vary by platform
            raise _download_error(name, error) from None
    else:
        # A torchvision checkpoint of FCN / DeepLabV3 holds an auxiliary head: build one
        # to load it into (it does not change the main output).
        aux = state is not None and any(key.startswith("aux_classifier.") for key in state)
        options = {"aux_loss": True} if aux else {}
        try:
            model = torchvision.models.get_model(
                name, weights=None, weights_backbone=None, **options
            )
        except (TypeError, ValueError) as error:
            raise ModelError(f"model {name!r} could not be built: {error}") from None
        if state is not None:
            _load_into(model, state, str(weights))
    model.eval()
    return model, _preprocess(name, model), _categories(name)


def _preprocess(name: str, model: nn.Module) -> Preprocess:
    if model_family(model) == DETECTION:
        return Preprocess(int(model.transform.min_size[-1]), (0.0,) * 3, (1.0,) * 3)
    size, mean, std = 520, _IMAGENET_MEAN, _IMAGENET_STD
    try:
        import torchvision

        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        size = int(transforms.resize_size[0])
        mean, std = tuple(transforms.mean), tuple(transforms.std)
    except (ValueError, AttributeError, KeyError, TypeError, IndexError):
        pass  # no registered weights: ImageNet's defaults
    return Preprocess(size, mean, std)


def _categories(name: str) -> list[str] | None:
    """The class names of the model's default weights (VOC's 21, COCO's 91 with its
    ``__background__`` and ``N/A`` slots), read from torchvision's metadata."""
    import torchvision

    try:
        categories = torchvision.models.get_model_weights(name).DEFAULT.meta["categories"]
    except (ValueError, AttributeError, KeyError):
        return None
    return list(categories) if categories else None

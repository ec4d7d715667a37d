"""Keras model files and the keras.applications input conventions, for the CLI and scripts."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import numpy as np
import torch
from PIL import Image

from ..models import imagenet_classes, is_keras_file  # noqa: F401 - re-exported
from .network import KerasModelError, refuse_channels_first

# keras.applications' preprocess_input modes, on 0-255 RGB pixels:
#   torch: x / 255, then ImageNet mean / std per channel (DenseNet, ...)
#   tf:    x / 127.5 - 1 (MobileNet, Inception, Xception, ...)
#   caffe: RGB -> BGR, then minus the ImageNet BGR mean (ResNet50, VGG)
#   raw:   0-255 as is, for models that preprocess inside (EfficientNet, ConvNeXt)
PREPROCESS_MODES = ("torch", "tf", "caffe", "raw")
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


class KerasPreprocess:
    """PIL image -> (H, W, 3) float32 array: shorter side ``size`` (aspect kept, bicubic,
    no crop, as ``cameras.Preprocess``), then the keras.applications convention ``mode``."""

    def __init__(self, size: int, mode: str) -> None:
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"preprocess {mode!r}: choose from {', '.join(PREPROCESS_MODES)}")
        self.size = size
        self.mode = mode

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = image.convert("RGB")
        width, height = image.size
        shorter = min(width, height)
        new_size = (
            max(1, round(width * self.size / shorter)),
            max(1, round(height * self.size / shorter)),
        )
        image = image.resize(new_size, Image.Resampling.BICUBIC)
        return self.normalise(np.asarray(image, dtype=np.float32))

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """0-255 RGB (..., H, W, 3) -> model input."""
        if self.mode == "torch":
            return (pixels / 255.0 - _TORCH_MEAN) / _TORCH_STD
        if self.mode == "tf":
            return pixels / 127.5 - 1.0
        if self.mode == "caffe":
            return pixels[..., ::-1] - _CAFFE_BGR_MEAN
        return pixels.copy()

    def __repr__(self) -> str:
        return f"KerasPreprocess(size={self.size}, mode={self.mode!r})"

    def channels_first(self) -> ChannelsFirst:
        """This preprocessing in the library's layout, as a ``Session`` uses it."""
        return ChannelsFirst(self)


class ChannelsFirst:
    """A ``KerasPreprocess`` in the layout every ``Session`` works in, as ``cameras.
    Preprocess``: PIL image -> (3, h, w) float32 torch tensor (the very values of the
    Keras preprocessing, transposed), and ``normalise`` / ``denormalise`` between [0, 1]
    RGB pixels (..., 3, H, W) and model input, for the metrics and the attack."""

    def __init__(self, keras_prep: KerasPreprocess) -> None:
        self.keras = keras_prep
        self.size = keras_prep.size
        mode = keras_prep.mode
        # model input = flip(pixels) * scale + offset, per channel (flip: caffe's RGB -> BGR)
        self.flip = mode == "caffe"
        if mode == "torch":
            scale, offset = 1 / _TORCH_STD, -_TORCH_MEAN / _TORCH_STD
        elif mode == "tf":
            scale, offset = np.full(3, 2.0), np.full(3, -1.0)
        elif mode == "caffe":
            scale, offset = np.full(3, 255.0), -_CAFFE_BGR_MEAN
        else:
            scale, offset = np.full(3, 255.0), np.zeros(3)
        self.scale = torch.tensor(scale, dtype=torch.float32)[:, None, None]
        self.offset = torch.tensor(offset, dtype=torch.float32)[:, None, None]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.keras(image))).permute(2, 0, 1)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB (..., 3, H, W) -> model input."""
        pixels = pixels.flip(-3) if self.flip else pixels
        return pixels * self.scale.to(pixels.device) + self.offset.to(pixels.device)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (..., 3, H, W) -> [0, 1] RGB (not clipped)."""
        pixels = (x - self.offset.to(x.device)) / self.scale.to(x.device)
        return pixels.flip(-3) if self.flip else pixels

    def __repr__(self) -> str:
        return f"ChannelsFirst({self.keras!r})"


def load_model(
    path: str | Path, preprocess: str = "torch", size: int | None = None
) -> tuple[keras.Model, KerasPreprocess, list[str] | None]:
    """Load a ``.keras`` (or legacy ``.h5``) model file; returns (model, preprocessing,
    class names), the same triple as ``cameras.load_model``.

    preprocess: the input convention (see PREPROCESS_MODES). size: the shorter side
    images are resized to; default the model's own input size, or 224 if flexible.
    Class names are ImageNet's when the model has 1000 classes. A file that is not a
    Keras model, or one with a custom layer Keras cannot find, raises KerasModelError
    with one line that says so.
    """
    path = Path(path)
    KerasPreprocess(1, preprocess)  # check the mode before the (slow) load
    if not path.is_file():
        raise KerasModelError(f"{path}: no such file")
    if _cut_off_archive(path):  # Keras itself calls it "File not found"
        raise KerasModelError(
            f"{path}: damaged or truncated .keras file (not a complete zip archive)"
        )
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for bad files
        raise KerasModelError(_load_error(path, error)) from None
    if not isinstance(model, keras.Model):
        raise KerasModelError(f"{path}: holds a {type(model).__name__}, not a keras.Model")
    refuse_channels_first(model, str(path))
    height, width = tuple(model.inputs[0].shape)[1:3] if model.inputs else (None, None)
    if size is None:
        size = min(height, width) if height and width else 224
    classes = imagenet_classes() if model.outputs and model.outputs[0].shape[-1] == 1000 else None
    return model, KerasPreprocess(size, preprocess), classes


def _cut_off_archive(path: Path) -> bool:
    """A .keras file that starts as a zip archive but does not end as one (cut off)."""
    with path.open("rb") as handle:
        starts_as_zip = handle.read(4) == b"PK\x03\x04"
    return path.suffix.lower() == ".keras" and starts_as_zip and not zipfile.is_zipfile(path)


def _load_error(path: Path, error: Exception) -> str:
    text = " ".join(str(error).split())
    if "Could not locate" in text or "Unknown layer" in text or "custom" in text.lower():
        return (
            f"{path}: uses a custom layer or function Keras cannot load ({text[:160]}); "
            "register it with @keras.saving.register_keras_serializable and load it in Python"
        )
    return f"{path}: not a Keras model file ({type(error).__name__}: {text[:160]})"

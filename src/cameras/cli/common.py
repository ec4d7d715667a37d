"""Argument helpers shared by the subcommands: device, model, method, class, scales."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..methods import METHODS, SaliencyMethod
from ..models import DEFAULT_MODEL, ModelError, load_model


def usage_error(message: str) -> Exception:
    from . import UsageError

    return UsageError(message)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    parser.add_argument("--weights", type=Path, help="local state dict for the model")
    parser.add_argument("--layer", help="layer to explain (default: last spatial layer)")
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s"
    )


def gather_images(paths: list[str], out: Path) -> tuple[list[Path], int]:
    """Image paths from files and folders, and how many inputs were missing (each printed
    as one error line); creates the output folder."""
    from ..images import find_images

    images, errors = find_images(paths)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    return images, len(errors)


def split_names(text: str) -> list[str]:
    """ "a, b,,c" -> ["a", "b", "c"]: a comma-separated option."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_scales(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--scales {text!r}: expected comma-separated sizes like 224,324,424"
        ) from None


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise usage_error("--device cuda: no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --model values with these suffixes are Keras model files (cameras.keras).
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def open_model(args: argparse.Namespace):
    """(model, prep, classes) from --model / --weights / --device, or a usage error.

    A Keras model file goes to ``cameras.keras.load_model`` with --preprocess, in the
    subcommands that have that option.
    """
    if getattr(args, "preprocess", None) or Path(args.model).suffix.lower() in KERAS_SUFFIXES:
        return open_keras_model(args)
    device = pick_device(args.device)
    try:
        return load_model(args.model, weights=args.weights, device=device)
    except ModelError as error:
        raise usage_error(f"--model {args.model}: {error}") from None


def open_keras_model(args: argparse.Namespace):
    """(model, prep, classes) for a Keras model file, or a one-line usage error."""
    if not hasattr(args, "preprocess"):
        raise usage_error(f"--model {args.model}: Keras models work with 'cameras explain' only")
    try:
        from .. import keras as keras_backend
    except ImportError as error:
        raise usage_error(f"--model {args.model}: {error}") from None
    if args.preprocess is None:
        modes = ", ".join(keras_backend.PREPROCESS_MODES)
        raise usage_error(f"--model {args.model}: a Keras model needs --preprocess ({modes})")
    try:
        return keras_backend.load_model(args.model, args.preprocess)
    except ModelError as error:
        raise usage_error(f"--model {error}") from None


def build_method(name: str, model, classes, layer: str | None, scales=None) -> SaliencyMethod:
    methods = METHODS
    if not isinstance(model, torch.nn.Module):  # a Keras model from open_keras_model
        from ..keras import METHODS as methods
    if name not in methods:
        raise usage_error(f"--method {name!r}: choose from {', '.join(methods)}")
    kwargs = {"scales": scales} if name == "cameras" else {}
    try:
        return methods[name](model, layer=layer, class_names=classes, **kwargs)
    except ValueError as error:
        raise usage_error(f"--layer: {error}" if "layer" in str(error) else str(error)) from None


def parse_class(text: str | None, method: SaliencyMethod) -> int | None:
    """--class as an index or a name -> index (None: each image's top-1)."""
    if text is None:
        return None
    try:
        return method.class_index(int(text) if text.strip().lstrip("-").isdigit() else text)
    except (ValueError, TypeError) as error:
        raise usage_error(f"--class {text}: {error}") from None

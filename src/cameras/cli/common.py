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


def open_model(args: argparse.Namespace):
    """(model, prep, classes) from --model / --weights / --device, or a usage error."""
    device = pick_device(args.device)
    try:
        return load_model(args.model, weights=args.weights, device=device)
    except ModelError as error:
        raise usage_error(f"--model {args.model}: {error}") from None


def add_rule_argument(parser: argparse.ArgumentParser) -> None:
    from ..methods.cameras import DEFAULT_RULE, SCALE_RULES

    parser.add_argument(
        "--rule",
        choices=SCALE_RULES,
        help=f"which scales count for CAMERAS: top1 (the paper's), top5, all (default: "
        f"{DEFAULT_RULE} without --class, all with it)",
    )


def build_method(
    name: str, model, classes, layer: str | None, scales=None, rule: str | None = None
) -> SaliencyMethod:
    if name not in METHODS:
        raise usage_error(f"--method {name!r}: choose from {', '.join(METHODS)}")
    kwargs = {"scales": scales, "rule": rule} if name == "cameras" else {}
    try:
        return METHODS[name](model, layer=layer, class_names=classes, **kwargs)
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

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


def build_method(name: str, model, classes, layer: str | None, scales=None) -> SaliencyMethod:
    if name not in METHODS:
        raise usage_error(f"--method {name!r}: choose from {', '.join(METHODS)}")
    kwargs = {"scales": scales} if name == "cameras" else {}
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


def add_scale_out_arguments(
    parser: argparse.ArgumentParser, batch_size: int | None, workers_help: str
) -> None:
    """--ray [ADDRESS], --workers N and (when batch_size is given) --batch-size N."""
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        type=ray_address,
        metavar="ADDRESS",
        help="run on Ray (pip install 'cameras[ray]'): no ADDRESS starts a local Ray for "
        "this run; 'auto' or ray://HOST:PORT joins that cluster",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help=f"{workers_help} (default: 2); with --ray, model actors (default: one per GPU, "
        "or one per machine without GPUs)",
    )
    if batch_size is not None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=batch_size,
            help="same-size images per forward pass (default: %(default)s)",
        )


def ray_address(text: str) -> str:
    """--ray's value: 'local', 'auto', ray://HOST:PORT or HOST:PORT (checked, not joined)."""
    from ..distributed import check_address

    try:
        return check_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def check_scale_out(args: argparse.Namespace) -> str | None:
    """Check --ray / --workers / --batch-size; returns the Ray address or None (no Ray).

    Without Ray installed, --ray is a usage error that says how to install it."""
    if args.batch_size < 1:
        raise usage_error(f"--batch-size {args.batch_size}: must be at least 1")
    if args.ray is None:
        if args.workers is None:
            args.workers = 2
        if args.workers < 0:
            raise usage_error(f"--workers {args.workers}: must be 0 or more")
        return None
    if args.workers is not None and args.workers < 1:
        raise usage_error(f"--workers {args.workers}: with --ray, must be at least 1")
    from ..distributed import RayUnavailable, require_ray

    try:
        require_ray()
    except (RayUnavailable, ValueError) as error:
        raise usage_error(f"--ray: {error}") from None
    return args.ray


def raise_ray_failure(error: RuntimeError):
    """A failed Ray job as one line (exit 2); any other RuntimeError as it is."""
    from ..distributed import RayJobError

    if isinstance(error, RayJobError):
        raise usage_error(str(error)) from None
    raise error

"""``cameras explain PATH...``: a map, an overlay and the top-5 classes per image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..images import ImageError, load_image, resize_map
from ..viz import overlay
from .common import (
    add_model_arguments,
    build_method,
    gather_images,
    open_model,
    parse_class,
    parse_scales,
    usage_error,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="write a saliency map and overlay for each image",
        description="For each image write OUT/<stem>_<method>.png (overlay at the image's "
        "size) and OUT/<stem>_<method>.npy (float32 map in [0, 1]) and print the top-5 classes.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument("--class", dest="target", help="class index or name (default: top-1)")
    parser.add_argument("--method", default="cameras", help="cameras (default), gradcam, ...")
    parser.add_argument("--scales", type=parse_scales, help="shorter-side sizes, e.g. 224,324,424")
    parser.add_argument(
        "--out", type=Path, default=Path("cameras-out"), help="default: %(default)s"
    )
    parser.add_argument("--cmap", default="jet", help="matplotlib colour map (default: jet)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default: 0.5)")
    add_model_arguments(parser)
    parser.add_argument(
        "--preprocess",
        choices=["torch", "tf", "caffe", "raw"],
        help="for a Keras model file (--model PATH.keras): its keras.applications input "
        "convention; raw passes 0-255 pixels (EfficientNet)",
    )
    parser.set_defaults(run=run)


def check_output_folder(out: Path, inputs: list[str]) -> None:
    """Refuse an --out that is an input folder: outputs there could replace inputs."""
    if out.exists() and not out.is_dir():
        raise usage_error(f"--out {out}: exists and is not a folder")
    resolved = out.resolve()
    for raw in inputs:
        path = Path(raw)
        if path.is_dir() and path.resolve() == resolved:
            raise usage_error(f"--out {out}: is an input folder; choose another folder")


def output_stems(images: list[Path]) -> list[str]:
    """<stem> per image, with -2, -3, ... added when two inputs share a stem."""
    seen: dict[str, int] = {}
    stems = []
    for path in images:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        stems.append(path.stem if count == 1 else f"{path.stem}-{count}")
    return stems


def format_top5(probabilities: torch.Tensor, classes: list[str] | None) -> str:
    values, indices = probabilities.topk(min(5, probabilities.numel()))
    parts = []
    for p, i in zip(values.tolist(), indices.tolist(), strict=True):
        name = classes[i] if classes else str(i)
        parts.append(f"{name} ({i}) {p:.3f}")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.alpha <= 1.0:
        raise usage_error(f"--alpha {args.alpha}: must be between 0 and 1")
    check_output_folder(args.out, args.paths)
    model, prep, classes = open_model(args)
    method = build_method(args.method, model, classes, args.layer, args.scales)
    target = parse_class(args.target, method)
    images, failures = gather_images(args.paths, args.out)
    inputs = {p.resolve() for p in images}
    progress = tqdm(
        list(zip(images, output_stems(images), strict=True)),
        desc="explain",
        unit="image",
        disable=len(images) < 2,
        file=sys.stderr,
    )
    for path, stem in progress:
        try:
            image = load_image(path)
            result = method(prep(image)[None], targets=target)
            # torch.as_tensor: a Keras model's maps come as NumPy arrays.
            saliency = resize_map(torch.as_tensor(result.maps[0]), image.height, image.width)
            base = args.out / f"{stem}_{method.name}"
            png, npy = base.with_suffix(".png"), base.with_suffix(".npy")
            if png.resolve() in inputs or npy.resolve() in inputs:
                raise ImageError(f"{path}: output {png.name} would overwrite an input; use --out")
            overlay(image, saliency, args.cmap, args.alpha).save(png)
            np.save(npy, saliency)
        except ImageError as error:
            failures += 1
            tqdm.write(f"error: {error}", file=sys.stderr)
            continue
        chosen = result.targets[0]
        name = classes[chosen] if classes else str(chosen)
        kept = [s.scale for s in result.scales[0] if s.kept]
        top5 = format_top5(torch.as_tensor(result.probabilities[0]), classes)
        tqdm.write(f"{path}: top-5: {top5}")
        tqdm.write(f"  {method.name} map for {name} ({chosen}), scales kept {kept} -> {png}")
    return 1 if failures else 0

"""``cameras explain PATH...``: a map, an overlay and the top-5 classes per image."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..images import ImageError
from ..session import top_classes
from ..viz import save_map
from .common import (
    add_model_arguments,
    add_out_argument,
    add_rule_argument,
    check_output_folder,
    gather_images,
    method_of,
    note,
    open_session,
    output_stems,
    parse_class,
    parse_methods,
    parse_scales,
    progress_bar,
    refuse_overwrite,
    usage_error,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="write a saliency map and overlay for each image",
        description="For each image write OUT/<stem>_<method>.png (overlay at the image's "
        "size) and OUT/<stem>_<method>.npy (float32 map in [0, 1]) and print the top-5 "
        "classes. With --class C the files are OUT/<stem>_<method>_class<C's index>.png "
        "and .npy, so they never replace the top-1 map's.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--class", dest="target", help="class index or name (default: each image's top-1)"
    )
    parser.add_argument(
        "--method", default="cameras", help="cameras, gradcam, ... (default: %(default)s)"
    )
    parser.add_argument(
        "--scales",
        type=parse_scales,
        help="CAMERAS shorter-side sizes, e.g. 224,324,424 (default: 224..924 for a 224 input)",
    )
    add_rule_argument(parser)
    add_out_argument(parser)
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


def output_base(out: Path, stem: str, method: str, target: int | None) -> Path:
    """OUT/<stem>_<method> for the top-1 map, OUT/<stem>_<method>_class<C> for class C."""
    suffix = "" if target is None else f"_class{target}"
    return out / f"{stem}_{method}{suffix}"


def format_top5(pairs: list[tuple[int, float]], session) -> str:
    return ", ".join(f"{session.class_label(i)} {p:.3f}" for i, p in pairs)


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.alpha <= 1.0:
        raise usage_error(f"--alpha {args.alpha}: must be between 0 and 1")
    parse_methods("--method", [args.method])
    check_output_folder(args.out, args.paths)
    session = open_session(args)
    method = method_of(session, args.method)
    target = parse_class("--class", args.target, session)
    images, failures = gather_images(args.paths, args.out)
    inputs = {p.resolve() for p in images}
    pairs = list(zip(images, output_stems(images), strict=True))
    for path, stem in progress_bar(pairs, desc="explain", unit="image", disable=len(images) < 2):
        base = output_base(args.out, stem, method.name, target)
        png, npy = base.with_suffix(".png"), base.with_suffix(".npy")
        try:
            refuse_overwrite(png, inputs, path)
            refuse_overwrite(npy, inputs, path)
            image, x = session.open(path)
            result = method(x, targets=target)
            saliency = session.map_at_image_size(result, image)
            save_map(image, saliency, png, npy, args.cmap, args.alpha)
        except ImageError as error:
            failures += 1
            note(f"error: {error}", error=True)
            continue
        chosen = result.targets[0]
        kept = [s.scale for s in result.scales[0] if s.kept]
        top5 = top_classes(result.probabilities[0], 5)
        note(f"{path}: top-5: {format_top5(top5, session)}")
        note(f"  {method.name} map for {session.class_label(chosen)}, scales kept {kept} -> {png}")
        if result.scale_warnings[0]:
            note(f"  warning: {result.scale_warnings[0]}", error=True)
    return 1 if failures else 0

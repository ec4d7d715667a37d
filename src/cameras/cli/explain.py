"""``cameras explain PATH...``: a map, an overlay and the top-5 classes per image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..pipeline import ImageWriter, explain_local, image_tasks, save_explanations
from .common import (
    add_model_arguments,
    add_scale_out_arguments,
    build_method,
    check_scale_out,
    gather_images,
    open_model,
    parse_class,
    parse_scales,
    raise_ray_failure,
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
    add_scale_out_arguments(parser, batch_size=1, workers_help="image-decoding processes")
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
    return [task.stem for task in image_tasks(images)]


def format_top5(top5: list[tuple[int, float]], classes: list[str] | None) -> str:
    parts = []
    for i, p in top5:
        name = classes[i] if classes else str(i)
        parts.append(f"{name} ({i}) {p:.3f}")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.alpha <= 1.0:
        raise usage_error(f"--alpha {args.alpha}: must be between 0 and 1")
    check_output_folder(args.out, args.paths)
    ray_address = check_scale_out(args)
    actor_device = args.device
    if ray_address is not None:
        args.device = "cpu"  # the driver only checks the arguments; the actors take GPUs
    model, prep, classes = open_model(args)
    method = build_method(args.method, model, classes, args.layer, args.scales)
    target = parse_class(args.target, method)
    images, failures = gather_images(args.paths, args.out)
    tasks = image_tasks(images)
    if ray_address is not None:
        from ..distributed import ExplainJob, explain_ray

        job = ExplainJob(
            model=args.model,
            weights=str(args.weights) if args.weights else None,
            device=actor_device,
            method=args.method,
            layer=method.layer_name,
            scales=tuple(args.scales) if args.scales else None,
            target=target,
            cmap=args.cmap,
            alpha=args.alpha,
        )
        stream = explain_ray(tasks, job, prep, ray_address, args.workers, args.batch_size)
    else:
        stream = explain_local(tasks, method, prep, target, args.workers, args.batch_size)
    progress = tqdm(
        total=len(tasks), desc="explain", unit="image", disable=len(tasks) < 2, file=sys.stderr
    )

    def report(result, png, error) -> None:
        progress.update(1)
        if error is not None:
            tqdm.write(f"error: {error}", file=sys.stderr)
            return
        name = classes[result.target] if classes else str(result.target)
        tqdm.write(f"{result.task.path}: top-5: {format_top5(result.top5, classes)}")
        kept = result.kept
        tqdm.write(f"  {method.name} map for {name} ({result.target}), scales kept {kept} -> {png}")

    try:
        failures += save_explanations(
            stream, ImageWriter(args.out, method.name, images), args.cmap, args.alpha, report
        )
    except RuntimeError as error:
        raise_ray_failure(error)
    finally:
        progress.close()
    return 1 if failures else 0

"""``cameras explain PATH...``: a map, an overlay and the top-5 classes per image."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..apps.detection import box_label
from ..apps.photo_targets import PhotoTarget, target_file_tag, target_identity
from ..run.jobs import explain_local, save_explanations
from ..run.letterbox import Letterbox
from ..run.outputs import ImageWriter, image_tasks
from . import SUBCOMMANDS
from .common import (
    add_model_arguments,
    add_out_argument,
    add_scale_out_arguments,
    batch_size_value,
    check_cmap,
    check_output_folder,
    check_scale_out,
    gather_images,
    method_of,
    note,
    open_session,
    parse_methods,
    progress_bar,
    raise_ray_failure,
    usage_error,
)
from .targets import add_target_arguments, parse_target


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help=SUBCOMMANDS["explain"],
        description="For each image write OUT/<stem>_<method>.png (overlay at the image's "
        "size) and OUT/<stem>_<method>.npy (float32 map in [0, 1]) and print the top-5 "
        "classes. With --class C the files are OUT/<stem>_<method>_class<C's index>.png "
        "and .npy, so they never replace the top-1 map's; --box, --mask and --classes add "
        "their own tag (_box10-20-110-220, _region15-<mask>, _classes3+7). A file left in "
        "OUT by a run with another model, weights, layer, method, scales, rule, precision or "
        "class is not replaced without --overwrite.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--class",
        dest="target",
        help="class index or name; with --box the detection's label, with --mask the "
        "region's class (default: each image's top-1)",
    )
    add_target_arguments(parser, class_option=False)
    parser.add_argument(
        "--method", default="cameras", help="cameras, gradcam, ... (default: %(default)s)"
    )
    add_out_argument(parser)
    parser.add_argument("--cmap", default="jet", help="matplotlib colour map (default: jet)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default: 0.5)")
    add_run_control_arguments(parser)
    add_model_arguments(parser)
    add_batching_arguments(parser)
    add_scale_out_arguments(parser, batch_size=None, workers_help="image-decoding processes")
    parser.set_defaults(run=run)


def add_batching_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size",
        type=batch_size_value,
        default=None,
        metavar="N|auto",
        help="images of one model-input size per forward pass, gathered from a look-ahead "
        "of a few batches (default: auto: 1 on the CPU, where batching measured slower; "
        "on a GPU as many as its free memory holds, up to 32; 1 with --ray)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        metavar="N",
        help="letterbox every photo into an N x N input (aspect kept, padded with the mean "
        "colour) so photos of any size batch; each map is cropped back to its photo "
        "(default: each photo at its own aspect, shorter side the model's size)",
    )


def add_run_control_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recursive",
        action="store_true",
        help="also take images in subfolders of a folder (default: top level only)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip images whose two files are already in OUT from a run with these settings "
        "(default: explain every image)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files in OUT left by a run with other settings (default: refuse)",
    )


def run_identity(args: argparse.Namespace, method, target: str) -> str:
    """What makes this run's maps what they are (stored in each overlay; see ImageWriter).
    target: ``apps.photo_targets.target_identity`` ("top-1", "281", "box=... label=3")."""
    scales = ",".join(map(str, args.scales)) if args.scales else "default"
    weights = f" weights={args.weights}" if args.weights else ""
    chosen = target
    # Only when given, so the files of a run without it still match for --resume.
    letterbox = f" input-size={args.input_size}" if args.input_size is not None else ""
    precision = f" precision={args.precision}" if args.precision != "fp32" else ""
    return (
        f"model={args.model}{weights} layer={method.layer_name} method={method.name} "
        f"scales={scales} rule={args.rule or 'default'} class={chosen}{letterbox}{precision}"
    )


def pending_tasks(tasks: list, writer: ImageWriter) -> list:
    """--resume: the tasks whose outputs are not complete yet (one note for the rest)."""
    pending = [task for task in tasks if not writer.complete(task)]
    if len(pending) < len(tasks):
        note(f"--resume: {len(tasks) - len(pending)} image(s) already done, skipped", error=True)
    return pending


def photo_target_label(target: PhotoTarget, session) -> str:
    """What a report line says was explained: "box 10,20,110,220 cat (17)", "region of
    person (15) in mask.png", "classes tabby (281) + tiger cat (282)"."""
    if target.classes is not None:
        return "classes " + " + ".join(session.class_label(c) for c in target.classes)
    if target.box is not None:
        return box_label(target.box, target.label, session.class_names)
    mask = Path(target.mask_file).name if target.mask_file else "the mask"
    return f"region of {session.class_label(target.label)} in {mask}"


def format_top5(pairs: list[tuple[int, float]], session) -> str:
    return ", ".join(f"{session.class_label(i)} {p:.3f}" for i, p in pairs)


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.alpha <= 1.0:
        raise usage_error(f"--alpha {args.alpha}: must be between 0 and 1")
    parse_methods("--method", [args.method])
    check_cmap("--cmap", args.cmap)
    check_output_folder(args.out, args.paths)
    ray_address = check_scale_out(args)
    if args.input_size is not None and args.input_size < 1:
        raise usage_error(f"--input-size {args.input_size}: must be at least 1")
    actor_device = args.device
    if ray_address is not None:
        args.device = "cpu"  # the driver only checks the arguments; the actors take GPUs
    session = open_session(args)
    method = method_of(session, args.method)
    target = parse_target(args, session)
    if isinstance(target, PhotoTarget) and target.classes is None and args.input_size:
        raise usage_error("--input-size: not with --box or --mask (given in the photo's pixels)")
    images, failures = gather_images(args.paths, args.out, args.recursive)
    identity = run_identity(args, method, target_identity(target))
    tag = target_file_tag(target)
    writer = ImageWriter(args.out, method.name, images, tag, identity, args.overwrite)
    tasks = image_tasks(images, writer.clashes)
    if args.resume:
        tasks = pending_tasks(tasks, writer)
    prep = session.prep if args.input_size is None else Letterbox(session.prep, args.input_size)
    if ray_address is not None:
        from ..run.ray import ExplainJob, explain_ray

        spec = session.spec.for_workers(actor_device, session.layer)
        job = ExplainJob(spec, args.method, target, args.cmap, args.alpha)
        batch_size = args.batch_size or 1  # auto: the actors' devices are not known here
        stream = explain_ray(tasks, job, prep, ray_address, args.workers, batch_size)
    else:
        stream = explain_local(tasks, method, prep, target, args.workers, args.batch_size)
    progress = progress_bar(total=len(tasks), desc="explain", unit="image", disable=len(tasks) < 2)

    def report(result, png, error) -> None:
        progress.update(1)
        if error is not None:
            note(f"error: {error}", error=True)
            return
        if result.top5:  # a segmenter or detector has no class scores
            note(f"{result.task.path}: top-5: {format_top5(result.top5, session)}")
        else:
            note(f"{result.task.path}:")
        if isinstance(result.target, int):
            label = session.class_label(result.target)
        else:
            label = photo_target_label(target, session)
        note(f"  {method.name} map for {label}, scales kept {result.kept} -> {png}")
        if result.warning:
            note(f"  warning: {result.warning}", error=True)

    try:
        failures += save_explanations(stream, writer, args.cmap, args.alpha, report)
    except RuntimeError as error:
        raise_ray_failure(error)
    finally:
        progress.close()
    return 1 if failures else 0

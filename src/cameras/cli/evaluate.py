"""``cameras evaluate DATA``: saliency methods scored on annotated images.

Per (image, class, method) rows go to OUT/results.csv as each image finishes; at the
end the summary (mean and 95 % confidence interval per method and metric) is printed
and saved as OUT/summary.csv and OUT/summary.md, and the mean insertion / deletion
curves are drawn in OUT/curves.png.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ..apps.datasets import AnnotationError, ClassResolver, load_class_map, read_annotations
from ..apps.evaluation import (
    DEFAULT_METHODS,
    METRICS,
    EvalSettings,
    Evaluator,
    ResultStore,
    ResumeError,
    plot_curves,
    settings_record,
    summarise,
    summary_markdown,
    write_summary,
)
from ..apps.metrics.insertion import DEFAULT_STEPS
from ..core.files import write_atomically
from ..run.batching import EVALUATE_CPU_BATCH_SIZE, evaluate_batch_size
from ..run.jobs import evaluate_local, save_records, unique_records
from . import SUBCOMMANDS
from .common import (
    add_model_arguments,
    add_out_argument,
    add_scale_out_arguments,
    batch_size_value,
    check_scale_out,
    check_writable_folder,
    note,
    open_session,
    parse_methods,
    progress_bar,
    raise_ray_failure,
    require_extra,
    split_names,
    usage_error,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help=SUBCOMMANDS["evaluate"],
        description="Score saliency methods on annotated images: pointing game, energy "
        "pointing game, map density (rho_plus, rho_minus), insertion and deletion. DATA is "
        "a JSON list of {file, objects: [{class_index, boxes}]}, a COCO instances JSON, or "
        "a Pascal VOC / ImageNet bounding-box XML folder.",
    )
    parser.add_argument("data", metavar="DATA", help="annotation file or folder")
    parser.add_argument(
        "--images",
        type=Path,
        help="image folder (default: beside the annotations; VOC: JPEGImages/)",
    )
    parser.add_argument(
        "--class-map",
        type=Path,
        help="JSON object mapping dataset labels (names or COCO ids) to model class "
        "indices or names (default: none)",
    )
    parser.add_argument(
        "--methods",
        type=split_names,
        default=list(DEFAULT_METHODS),
        help=f"comma-separated (default: {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument(
        "--metrics",
        type=split_names,
        default=list(METRICS),
        help=f"comma-separated subset of {','.join(METRICS)} (default: all)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help="insertion/deletion steps (default: %(default)s)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=15.0,
        help="pointing game tolerance in original pixels (default: %(default)s)",
    )
    parser.add_argument(
        "--fill",
        choices=["mean", "black"],
        default="mean",
        help="deletion's replacement colour: the normalisation mean (default) or black",
    )
    parser.add_argument(
        "--batch-size",
        type=batch_size_value,
        default=None,
        metavar="N|auto",
        help="images of one model-input size per forward pass, gathered from a look-ahead "
        "of a few batches, and masked images per metric pass (default: auto: 16 off a GPU; "
        "on a GPU as many as its free memory holds, up to 32)",
    )
    parser.add_argument(
        "--limit", type=int, help="evaluate only the first N records (default: all)"
    )
    add_out_argument(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out, skipping finished images (default: start afresh)",
    )
    add_model_arguments(parser)
    add_scale_out_arguments(parser, batch_size=None, workers_help="image-loading processes")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    require_extra("scipy", "eval", "evaluate")
    ray_address = check_scale_out(args)
    actor_device = args.device
    if ray_address is not None:
        args.device = "cpu"  # the driver only checks the arguments; the actors take GPUs
    settings = _check_arguments(args)
    session = open_session(args)
    if args.batch_size is None:  # auto: the session's device chooses
        args.batch_size = _auto_batch_size(session, settings, ray_address is not None)
        settings = replace(settings, batch_size=args.batch_size)
    annotations, records = _read_records(args, session)
    evaluator = _evaluator(session, settings)
    settings = _detector_metrics(args, settings, evaluator)
    store = ResultStore(args.out)
    identity = settings_record(
        settings, data=str(Path(args.data).resolve()), model=args.model, weights=_path(args)
    )
    identity["layer"] = evaluator.layer
    try:
        finished = store.start(identity, args.resume)
    except ResumeError as error:
        raise usage_error(str(error)) from None
    failures = 0
    for line in annotations.errors:
        failures += 1
        store.problem(line)
        print(f"error: {line}", file=sys.stderr)
    todo = unique_records([r for r in records if r.key not in finished])
    if finished:
        print(
            f"resuming: {len(records) - len(todo)} of {len(records)} images already done",
            file=sys.stderr,
        )
    if ray_address is not None:
        from ..run.ray import EvaluateJob, evaluate_ray

        spec = session.spec.for_workers(actor_device, evaluator.layer)
        job = EvaluateJob(spec, replace(settings, layer=evaluator.layer))
        stream = evaluate_ray(todo, job, session.prep, ray_address, args.workers, args.batch_size)
    else:
        stream = evaluate_local(todo, session.prep, evaluator, args.workers, args.batch_size)
    failures += _save(stream, store, len(todo))
    return _summarise(args, store, settings, failures)


def _check_arguments(args: argparse.Namespace) -> EvalSettings:
    """Everything that needs no model, as the run's ``EvalSettings``; usage errors."""
    if args.limit is not None and args.limit < 1:
        raise usage_error(f"--limit {args.limit}: must be at least 1")
    parse_methods("--methods", args.methods)
    if args.steps < 1:
        raise usage_error(f"--steps {args.steps}: must be at least 1")
    if not 0 <= args.tolerance < float("inf"):
        raise usage_error(f"--tolerance {args.tolerance}: must be a finite number, 0 or more")
    if args.out.exists() and not args.out.is_dir():
        raise usage_error(f"--out {args.out}: exists and is not a folder")
    check_writable_folder("--out", args.out)
    try:
        return EvalSettings(
            methods=tuple(args.methods),
            metrics=tuple(args.metrics),
            steps=args.steps,
            tolerance=args.tolerance,
            batch_size=args.batch_size or EVALUATE_CPU_BATCH_SIZE,  # auto: chosen later
            scales=tuple(args.scales) if args.scales else None,
            layer=args.layer,
            fill=args.fill,
        )
    except ValueError as error:
        raise usage_error(str(error)) from None


def _auto_batch_size(session, settings: EvalSettings, on_ray: bool) -> int:
    """``--batch-size auto``: by the session's device (``run.batching``); with Ray the
    actors' devices are not known here, so the CPU's size."""
    if on_ray:
        return EVALUATE_CPU_BATCH_SIZE
    return evaluate_batch_size(session.method(settings.methods[0]), session.prep.size)


def _read_records(args: argparse.Namespace, session) -> tuple:
    """(annotations, the records to evaluate: --limit applied); a usage error when the
    annotations cannot be read or hold no image."""
    try:
        class_map = load_class_map(args.class_map) if args.class_map else None
        resolver = ClassResolver(session.class_names, session.num_classes, class_map)
        annotations = read_annotations(args.data, args.images, resolver)
    except AnnotationError as error:
        raise usage_error(str(error)) from None
    records = annotations.records[: args.limit] if args.limit else annotations.records
    if not records:
        for line in annotations.errors:
            print(f"error: {line}", file=sys.stderr)
        unreadable = f" ({len(annotations.errors)} unreadable)" if annotations.errors else ""
        raise usage_error(f"{args.data}: no annotated images to evaluate{unreadable}")
    return annotations, records


def _evaluator(session, settings: EvalSettings) -> Evaluator:
    try:
        return Evaluator(session, settings=replace(settings, layer=session.layer))
    except ValueError as error:
        raise usage_error(str(error)) from None


# What a detection model is scored by: per annotated box, the map against that box; the
# other metrics read class scores, which a detector does not have.
BOX_METRICS = ("pointing", "energy")


def _detector_metrics(args: argparse.Namespace, settings: EvalSettings, evaluator) -> EvalSettings:
    """The settings for a detector (``Evaluator.detector``): pointing and energy per box; a
    usage error when --metrics names another one."""
    if not evaluator.detector:
        return settings
    other = [m for m in settings.metrics if m not in BOX_METRICS]
    if other and list(args.metrics) != list(METRICS):  # named by the user, not the default
        raise usage_error(
            f"--metrics {','.join(other)}: a detection model is scored per box with "
            f"{' and '.join(BOX_METRICS)} only"
        )
    kept = tuple(m for m in settings.metrics if m in BOX_METRICS)
    evaluator.settings = replace(evaluator.settings, metrics=kept)
    return replace(settings, metrics=kept)


def _summarise(args: argparse.Namespace, store: ResultStore, settings, failures: int) -> int:
    """Print and write the summary of every stored row; the exit status."""
    rows = store.rows()
    if not rows:
        print(
            f"cameras evaluate: error: {args.data}: no image could be evaluated "
            f"(see the errors above and {args.out / 'problems.txt'})",
            file=sys.stderr,
        )
        return 1
    summaries = summarise(rows, settings.methods, settings.metrics)
    table = summary_markdown(summaries)
    write_summary(summaries, args.out / "summary.csv")
    write_atomically({args.out / "summary.md": table + "\n"})
    written = ["summary.csv", "summary.md"]
    if plot_curves(store.curves(), args.out / "curves.png"):
        written.append("curves.png")
    print(table)
    print(f"wrote {args.out / 'results.csv'}, {', '.join(written)}", file=sys.stderr)
    return 1 if failures else 0


def _save(stream, store: ResultStore, total: int) -> int:
    """Store each record's rows as it finishes (``run.jobs.save_records``), printing its
    problems; returns how many records had problems."""
    if not total:
        return 0
    progress = progress_bar(total=total, desc="evaluate", unit="image")

    def report(item, rows) -> None:
        for problem in item.problems:
            note(f"warning: {item.record.file}: {problem} (skipped)", error=True)
        if item.error is not None:
            note(f"error: {item.error} (record skipped)", error=True)
        progress.update(1)

    try:
        return save_records(stream, store, report)
    except RuntimeError as error:
        raise_ray_failure(error)
    finally:
        progress.close()


def _path(args) -> str | None:
    return str(Path(args.weights).resolve()) if args.weights else None

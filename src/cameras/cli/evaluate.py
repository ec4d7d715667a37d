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

import torch

from ..datasets import AnnotationError, ClassResolver, load_class_map, read_annotations
from ..evaluation import (
    DEFAULT_METHODS,
    METRICS,
    EvalSettings,
    Evaluator,
    RecordDataset,
    ResultStore,
    ResumeError,
    collate_items,
    plot_curves,
    settings_record,
    summarise,
    summary_markdown,
    write_summary,
)
from ..metrics.insertion import DEFAULT_STEPS
from .common import (
    add_model_arguments,
    add_out_argument,
    note,
    open_session,
    parse_methods,
    parse_scales,
    progress_bar,
    require_extra,
    split_names,
    usage_error,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score saliency methods on images with bounding boxes",
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
        "--scales",
        type=parse_scales,
        help="CAMERAS sizes, e.g. 224,324,424 (default: 224..924 for a 224 input)",
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
        "--batch-size", type=int, default=16, help="images per forward pass (default: 16)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="image-loading processes (default: 2; 0: none)"
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
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    require_extra("scipy", "eval", "evaluate")
    if args.workers < 0:
        raise usage_error(f"--workers {args.workers}: must be 0 or more")
    if args.limit is not None and args.limit < 1:
        raise usage_error(f"--limit {args.limit}: must be at least 1")
    parse_methods("--methods", args.methods)
    try:
        settings = EvalSettings(
            methods=tuple(args.methods),
            metrics=tuple(args.metrics),
            steps=args.steps,
            tolerance=args.tolerance,
            batch_size=args.batch_size,
            scales=tuple(args.scales) if args.scales else None,
            layer=args.layer,
            fill=args.fill,
        )
    except ValueError as error:
        raise usage_error(str(error)) from None
    session = open_session(args)
    model, prep, classes = session.model, session.prep, session.class_names
    try:
        class_map = load_class_map(args.class_map) if args.class_map else None
        resolver = ClassResolver(classes, session.num_classes, class_map)
        annotations = read_annotations(args.data, args.images, resolver)
    except AnnotationError as error:
        raise usage_error(str(error)) from None
    try:
        evaluator = Evaluator(model, prep, classes, replace(settings, layer=session.layer))
    except ValueError as error:
        raise usage_error(str(error)) from None
    records = annotations.records[: args.limit] if args.limit else annotations.records
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
    todo = [r for r in records if r.key not in finished]
    if finished:
        print(
            f"resuming: {len(records) - len(todo)} of {len(records)} images already done",
            file=sys.stderr,
        )
    failures += _evaluate(todo, prep, evaluator, store, args.workers)
    rows = store.rows()
    summaries = summarise(rows, settings.methods, settings.metrics)
    table = summary_markdown(summaries)
    write_summary(summaries, args.out / "summary.csv")
    (args.out / "summary.md").write_text(table + "\n")
    written = ["summary.csv", "summary.md"]
    if plot_curves(store.curves(), args.out / "curves.png"):
        written.append("curves.png")
    print(table)
    print(f"wrote {args.out / 'results.csv'}, {', '.join(written)}", file=sys.stderr)
    return 1 if failures else 0


def _evaluate(records, prep, evaluator: Evaluator, store: ResultStore, workers: int) -> int:
    """Score the records, writing each as it finishes; returns how many had problems."""
    if not records:
        return 0
    loader = torch.utils.data.DataLoader(
        RecordDataset(records, prep),
        batch_size=1,
        num_workers=workers,
        collate_fn=collate_items,
    )
    failures = 0
    progress = progress_bar(total=len(records), desc="evaluate", unit="image")
    try:
        for (item,) in loader:
            name = item.record.file
            for problem in item.problems:
                store.problem(f"{name}: {problem}")
                note(f"warning: {name}: {problem} (skipped)", error=True)
            if item.error is not None:
                store.problem(f"{item.error} (record skipped)")
                note(f"error: {item.error} (record skipped)", error=True)
            else:
                store.add(item.record.key, evaluator([item]))
            failures += bool(item.problems) or item.error is not None
            progress.update(1)
    finally:
        progress.close()
    return failures


def _path(args) -> str | None:
    return str(Path(args.weights).resolve()) if args.weights else None

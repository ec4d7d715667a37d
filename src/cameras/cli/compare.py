"""``cameras compare IMAGE``: one figure with several methods, classes or models side by side.

Rows are (model, class) pairs, columns are methods. With exactly two classes each model
gets a third row: the difference of the two maps, per method, which shows where the
model tells the classes apart. With several models and no --classes, each model explains
its own top-1 class. ``--box`` (a detection) or ``--mask`` with ``--class`` (a region of
a segmentation) explain one target instead (``cli.targets``); a ``+`` in ``--classes``
joins classes into one multi-label row (``3+7``: the sum of their scores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..apps.detection import box_label
from ..apps.viz import Panel, comparison_figure, difference_map, save_figure
from ..core.classes import ClassError
from ..core.images import ImageError, load_image
from ..core.targets import Classes
from ..methods import METHODS
from ..models import DEFAULT_MODEL
from ..run.outputs import write_failure
from ..session import Session
from . import SUBCOMMANDS
from .common import (
    add_device_argument,
    add_method_arguments,
    check_writable_folder,
    method_of,
    open_session,
    parse_class,
    parse_methods,
    progress_bar,
    split_names,
    usage_error,
)
from .targets import (
    TargetRequest,
    add_target_arguments,
    parse_box,
    parse_class_set,
    parse_target,
    target_of_photo,
)

# Formats the figure can be written in (matplotlib's Agg canvas; PNG through Pillow).
_FORMATS = {".png", ".jpg", ".jpeg", ".pdf", ".svg", ".tif", ".tiff", ".webp"}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help=SUBCOMMANDS["compare"],
        description="Draw one figure: the photo, then one panel per method (columns) and per "
        "model x class (rows), titled with method, class and probability, with a shared colour "
        "bar. With exactly two classes, a third row per model shows map(class 1) - map(class "
        "2): where the model separates them.",
    )
    parser.add_argument("image", type=Path, metavar="IMAGE", help="the image to explain")
    parser.add_argument(
        "--methods",
        default="cameras,gradcam",
        help=f"comma-separated, from {', '.join(METHODS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--classes",
        help='comma-separated class indices or names, one row each, e.g. 243,281 or "tabby,'
        "Egyptian cat\"; 3+7 is one multi-label row (default: each model's top-1)",
    )
    add_target_arguments(parser, class_option=True, class_set=False)
    parser.add_argument(
        "--models",
        default=DEFAULT_MODEL,
        help="comma-separated model names, e.g. efficientnet_lite0,efficientnet_lite1, or "
        "Keras model files with --preprocess (default: %(default)s)",
    )
    parser.add_argument(
        "--weights", type=Path, help="local state dict, one model only (default: none)"
    )
    add_device_argument(parser)
    add_method_arguments(parser)
    parser.add_argument(
        "--out",
        type=Path,
        help="the figure to write, .png, .jpg, .pdf or .svg "
        "(default: cameras-out/<image stem>_compare.png)",
    )
    parser.add_argument("--cmap", default="jet", help="colour map of the maps (default: jet)")
    parser.add_argument(
        "--diff-cmap", default="RdBu_r", help="colour map of the difference (default: RdBu_r)"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default: 0.5)")
    parser.add_argument(
        "--panel-height", type=int, default=224, help="pixels per panel (default: 224)"
    )
    parser.add_argument(
        "--colors",
        type=int,
        help="PNG only: a dithered palette of this many colours (2-256), files ~2.5x smaller "
        "(default: every colour)",
    )
    parser.set_defaults(run=run)


def _check_arguments(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Everything that needs no model: methods, models, colour maps, sizes, --out."""
    from matplotlib import colormaps

    methods = parse_methods("--methods", split_names(args.methods))
    models = split_names(args.models)
    if not models:
        raise usage_error("--models: give at least one model")
    if len(set(models)) != len(models):
        raise usage_error(f"--models {args.models}: a model is listed twice")
    if args.weights is not None and len(models) > 1:
        raise usage_error("--weights: only with a single model in --models")
    for option, name in (("--cmap", args.cmap), ("--diff-cmap", args.diff_cmap)):
        if name not in colormaps:
            raise usage_error(f"{option} {name}: not a matplotlib colour map (try jet, viridis)")
    if not 0.0 <= args.alpha <= 1.0:
        raise usage_error(f"--alpha {args.alpha}: must be between 0 and 1")
    if not 16 <= args.panel_height <= 2048:
        raise usage_error(f"--panel-height {args.panel_height}: must be between 16 and 2048")
    if args.colors is not None and not 2 <= args.colors <= 256:
        raise usage_error(f"--colors {args.colors}: must be between 2 and 256")
    out = args.out
    if args.colors is not None and out.suffix.lower() != ".png":
        raise usage_error(f"--colors: only for a .png --out, not {out.suffix or 'no suffix'}")
    if out.is_dir():
        raise usage_error(f"--out {out}: is a folder; give a file name such as figure.png")
    if out.suffix.lower() not in _FORMATS:
        raise usage_error(f"--out {out}: use one of {', '.join(sorted(_FORMATS))}")
    check_writable_folder("--out", out.parent)
    if out.resolve() == args.image.resolve() or (
        out.exists() and args.image.exists() and out.samefile(args.image)
    ):
        raise usage_error(f"--out {out}: is the input image; choose another file")
    return methods, models


def _open_sessions(args, names: list[str], methods: list[str]) -> list[tuple[str, Session]]:
    opened = []
    for name in names:
        session = open_session(args, name, option="--models")
        for method in methods:
            method_of(session, method, option="--methods")
        opened.append((name, session))
    return opened


def _row_targets(args, session: Session, photo_size, input_size) -> list | None:
    """What each row of one model explains: the --box / --mask / --class target (one row),
    the --classes rows (a class, or a multi-label set for "a+b"), or None (the top-1)."""
    if args.classes is not None:
        if args.box is not None or args.mask is not None or args.target is not None:
            raise usage_error("--classes: one row per class; not with --box, --mask or --class")
        parts = split_names(args.classes)
        if not parts:
            raise usage_error("--classes: give at least one class")
        rows = [
            Classes(parse_class_set("--classes", part, session))
            if "+" in part
            else parse_class("--classes", part, session)
            for part in parts
        ]
        if len({r if isinstance(r, int) else tuple(r.classes) for r in rows}) != len(rows):
            raise usage_error(f"--classes {args.classes}: a class is listed twice")
        return rows
    request = parse_target(args, session)
    if isinstance(request, TargetRequest):
        return [target_of_photo(request, photo_size, input_size)]
    return None if request is None else [request]


def _short_name(session: Session, result, i: int) -> str:
    target = result.targets[i]
    if isinstance(target, int):
        return session.class_name(target)
    return target.label(i, session.class_names)


def _row_measure(result, i: int, digits: int) -> str:
    """ "p=0.62" for a class of a classifier, else the target's score at the first scale."""
    target = result.targets[i]
    if isinstance(target, int) and result.probabilities is not None:
        return f"p={float(result.probabilities[i, target]):.{digits}f}"
    score = result.scales[i][0].score
    return "score=?" if score is None else f"score={score:.{digits}f}"


def _labels(args, session: Session, result) -> list[str]:
    """The rows' labels: ``Explanation.target_labels``, except that a box is shown as the
    user typed it, in the photo's pixels (the target holds it in the input's)."""
    labels = list(result.target_labels)
    if args.box is not None:
        index = getattr(result.targets[0], "index", None)
        labels[0] = box_label(parse_box(args.box), index, session.class_names)
    return labels


def _rows_of(
    name: str, session: Session, results: list, prefix: str, labels: list[str]
) -> list[list[Panel]]:
    """One row per target explained (a panel per method); with two targets, a third row of
    differences. Prints each target's probability or score (and CAMERAS's kept scales)."""
    rows = []
    first = results[0]
    for i, label in enumerate(labels):
        title = f"{label} {_row_measure(first, i, 2)}"
        rows.append([Panel(r.maps[i], f"{prefix}{r.method}\n{title}") for r in results])
        line = f"{name}: {label} {_row_measure(first, i, 3)}"
        for result in results:
            if result.method == "cameras":
                line += f", cameras scales kept {[s.scale for s in result.scales[i] if s.kept]}"
                if result.scale_warnings[i]:
                    line += f"\n  warning: {result.scale_warnings[i]}"
        absent = [
            r.method
            for r in results
            if not isinstance(r.targets[i], int) and not any(s.kept for s in r.scales[i])
        ]
        if absent:
            line += f"\n  warning: {', '.join(absent)}: the target is absent at every scale "
            line += "(no detection matches the box, or the class does not hold the region)"
        print(line, file=sys.stderr)
    if len(first.targets) == 2:
        a, b = (_short_name(session, first, i) for i in range(2))
        rows.append(
            [
                Panel(
                    difference_map(r.maps[0], r.maps[1]),
                    f"{prefix}{r.method}: difference\n{a} \u2212 {b}",
                    signed=True,
                )
                for r in results
            ]
        )
    return rows


def _explain(session: Session, x, method: str, wanted: list | None):
    """The session's map; a class the model's output does not have (a detector's or a
    segmenter's, known only once it has run) is a usage error naming --class."""
    try:
        return session.explain(x, method, targets=wanted)
    except ClassError as error:
        raise usage_error(f"--class: {error}") from None


def run(args: argparse.Namespace) -> int:
    if args.out is None:
        args.out = Path("cameras-out") / f"{args.image.stem}_compare.png"
    method_names, model_names = _check_arguments(args)
    try:
        image = load_image(args.image)
    except ImageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    opened = _open_sessions(args, model_names, method_names)
    photo_size = (image.height, image.width)
    inputs = [session.input(image) for _, session in opened]
    targets = [
        _row_targets(args, session, photo_size, tuple(x.shape[-2:]))
        for (_, session), x in zip(opened, inputs, strict=True)
    ]
    several = len(opened) > 1

    steps = [(k, name) for k in range(len(opened)) for name in method_names]
    progress = progress_bar(steps, desc="compare", unit="map", disable=len(steps) < 2)
    batches: dict[int, object] = {}
    by_model: dict[int, list] = {k: [] for k in range(len(opened))}
    for k, method in progress:
        (name, session), wanted = opened[k], targets[k]
        progress.set_postfix_str(f"{name} {method}")
        if k not in batches:
            # One image per row: every method explains all rows in one batched call.
            x = inputs[k]
            batches[k] = x if wanted is None else x.repeat(len(wanted), 1, 1, 1)
        by_model[k].append(_explain(session, batches[k], method, wanted))
    progress.close()

    rows: list[list[Panel]] = []
    for k, (name, session) in enumerate(opened):
        prefix = f"{name} \u00b7 " if several else ""
        labels = _labels(args, session, by_model[k][0])
        rows.extend(_rows_of(name, session, by_model[k], prefix, labels))

    diff_labels = None
    if len(by_model[0][0].targets) == 2 and opened[0][1].class_names:
        diff_labels = tuple(_short_name(opened[0][1], by_model[0][0], i) for i in range(2))
    figure = comparison_figure(
        image,
        rows,
        cmap=args.cmap,
        alpha=args.alpha,
        diff_cmap=args.diff_cmap,
        panel_height=args.panel_height,
        photo_title=f"{args.image.name} ({image.width}\u00d7{image.height})",
        diff_labels=diff_labels,
    )
    try:
        width, height = save_figure(figure, args.out, colors=args.colors)
    except OSError as error:
        print(f"error: {args.image}: {write_failure(error, args.out)}", file=sys.stderr)
        return 1
    print(f"{args.out}: {len(rows)} rows x {len(method_names)} methods, {width}x{height} pixels")
    return 0

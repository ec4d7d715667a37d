"""``cameras compare IMAGE``: one figure with several methods, classes or models side by side.

Rows are (model, class) pairs, columns are methods. With exactly two classes each model
gets a third row: the difference of the two maps, per method, which shows where the
model tells the classes apart. With several models and no --classes, each model explains
its own top-1 class.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..images import ImageError, load_image
from ..methods import METHODS, SaliencyMethod
from ..models import DEFAULT_MODEL, ModelError, load_model
from ..viz import Panel, comparison_figure, difference_map, save_figure
from .common import add_rule_argument, build_method, parse_scales, pick_device, usage_error

# Formats the figure can be written in (matplotlib's Agg canvas; PNG through Pillow).
_FORMATS = {".png", ".jpg", ".jpeg", ".pdf", ".svg", ".tif", ".tiff", ".webp"}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="one figure comparing methods, classes or models on an image",
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
        help='comma-separated class indices or names, e.g. 243,281 or "tabby,Egyptian cat" '
        "(default: each model's top-1)",
    )
    parser.add_argument(
        "--models",
        default=DEFAULT_MODEL,
        help="comma-separated model names, e.g. efficientnet_lite0,efficientnet_lite1 "
        "(default: %(default)s)",
    )
    parser.add_argument("--weights", type=Path, help="local state dict (one model only)")
    parser.add_argument("--layer", help="layer to explain (default: last spatial layer)")
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s"
    )
    parser.add_argument(
        "--scales", type=parse_scales, help="CAMERAS shorter-side sizes, e.g. 224,324,424"
    )
    add_rule_argument(parser)
    parser.add_argument(
        "--out", type=Path, required=True, help="the figure to write (.png, .jpg, .pdf, .svg)"
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
        help="PNG only: a dithered palette of this many colours (2-256), files ~2.5x smaller",
    )
    parser.set_defaults(run=run)


@dataclass
class _Model:
    name: str
    model: object
    prep: object
    classes: list[str] | None
    methods: list[SaliencyMethod]


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _check_arguments(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Everything that needs no model: methods, models, colour maps, sizes, --out."""
    from matplotlib import colormaps

    methods = _split(args.methods)
    if not methods:
        raise usage_error("--methods: give at least one method")
    for name in methods:
        if name not in METHODS:
            raise usage_error(
                f"--methods: unknown method {name!r}; choose from {', '.join(METHODS)}"
            )
    if len(set(methods)) != len(methods):
        raise usage_error(f"--methods {args.methods}: a method is listed twice")
    models = _split(args.models)
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
    if out.resolve() == args.image.resolve() or (
        out.exists() and args.image.exists() and out.samefile(args.image)
    ):
        raise usage_error(f"--out {out}: is the input image; choose another file")
    return methods, models


def _open_models(args, names: list[str], methods: list[str]) -> list[_Model]:
    device = pick_device(args.device)
    opened = []
    for name in names:
        try:
            model, prep, classes = load_model(name, weights=args.weights, device=device)
        except ModelError as error:
            raise usage_error(f"--models {name}: {error}") from None
        built = [
            build_method(m, model, classes, args.layer, args.scales, args.rule) for m in methods
        ]
        opened.append(_Model(name, model, prep, classes, built))
    return opened


def _parse_classes(text: str | None, entry: _Model) -> list[int] | None:
    if text is None:
        return None
    wanted = _split(text)
    if not wanted:
        raise usage_error("--classes: give at least one class")
    method = entry.methods[0]
    indices = []
    for part in wanted:
        try:
            indices.append(method.class_index(int(part) if part.isdigit() else part))
        except (ValueError, TypeError) as error:
            raise usage_error(f"--classes {part}: {error} ({entry.name})") from None
    if len(set(indices)) != len(indices):
        raise usage_error(f"--classes {text}: a class is listed twice")
    return indices


def _class_label(index: int, classes: list[str] | None) -> str:
    return f"{classes[index]} ({index})" if classes else f"class {index}"


def _rows_of(entry: _Model, results: list, prefix: str) -> list[list[Panel]]:
    """One row per class explained (a panel per method); with two classes, a third row of
    differences. Prints each class's probability (and CAMERAS's kept scales) to stderr."""
    rows = []
    used = results[0].targets
    for i, target in enumerate(used):
        label = _class_label(target, entry.classes)
        probability = float(results[0].probabilities[i, target])
        rows.append(
            [Panel(r.maps[i], f"{prefix}{r.method}\n{label} p={probability:.2f}") for r in results]
        )
        line = f"{entry.name}: {label} p={probability:.3f}"
        for result in results:
            if result.method == "cameras":
                line += f", cameras scales kept {[s.scale for s in result.scales[i] if s.kept]}"
                if result.scale_warnings[i]:
                    line += f"\n  warning: {result.scale_warnings[i]}"
        print(line, file=sys.stderr)
    if len(used) == 2:
        a, b = (entry.classes[t] if entry.classes else str(t) for t in used)
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


def run(args: argparse.Namespace) -> int:
    method_names, model_names = _check_arguments(args)
    try:
        image = load_image(args.image)
    except ImageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    opened = _open_models(args, model_names, method_names)
    targets = [_parse_classes(args.classes, entry) for entry in opened]
    several = len(opened) > 1

    steps = [(k, method) for k, entry in enumerate(opened) for method in entry.methods]
    progress = tqdm(steps, desc="compare", unit="map", file=sys.stderr, disable=len(steps) < 2)
    inputs: dict[int, object] = {}
    by_model: dict[int, list] = {k: [] for k in range(len(opened))}
    for k, method in progress:
        entry, wanted = opened[k], targets[k]
        progress.set_postfix_str(f"{entry.name} {method.name}")
        if k not in inputs:
            x = entry.prep(image)[None]
            # One image per class: every method explains all classes in one batched call.
            inputs[k] = x if wanted is None else x.repeat(len(wanted), 1, 1, 1)
        by_model[k].append(method(inputs[k], targets=wanted))
    progress.close()

    rows: list[list[Panel]] = []
    for k, entry in enumerate(opened):
        rows.extend(_rows_of(entry, by_model[k], prefix=f"{entry.name} \u00b7 " if several else ""))

    diff_labels = None
    if targets[0] is not None and len(targets[0]) == 2 and opened[0].classes:
        diff_labels = tuple(opened[0].classes[t] for t in targets[0])
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    width, height = save_figure(figure, args.out, colors=args.colors)
    print(f"{args.out}: {len(rows)} rows x {len(method_names)} methods, {width}x{height} pixels")
    return 0

"""``cameras sanity IMAGE...``: the model-parameter randomisation test (Adebayo et al. 2018).

For each image writes OUT/<stem>_sanity.png (one row per method, one column per
randomisation step) and adds rows to OUT/sanity.csv (similarity of each step's map to
the trained model's); at the end prints the mean similarities per step and method and
writes OUT/sanity_summary.md and OUT/sanity_similarity.png. The user's model is never
changed: every randomisation happens on a deep copy.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..evaluation import DEFAULT_METHODS, make_method
from ..images import ImageError, load_image
from ..metrics.sanity import (
    MODES,
    SIMILARITIES,
    randomisation_steps,
    sanity_check,
    sanity_figure,
    similarity_figure,
)
from .common import (
    add_model_arguments,
    gather_images,
    open_model,
    parse_class,
    parse_scales,
    split_names,
    usage_error,
)
from .explain import check_output_folder, output_stems

CSV_FIELDS = ["image", "method", "mode", "step", "label", *SIMILARITIES]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sanity",
        help="model-parameter randomisation test of saliency methods",
        description="Randomise the model's weights block by block from the logits down (on "
        "a copy) and measure how far each method's map moves from the trained model's "
        "(Spearman rank correlation with and without absolute values, SSIM, HOG).",
    )
    parser.add_argument("paths", nargs="+", metavar="IMAGE", help="image files or folders")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="cascading",
        help="cascading: blocks randomised cumulatively (default); independent: one at a time",
    )
    parser.add_argument(
        "--methods",
        type=split_names,
        default=list(DEFAULT_METHODS),
        help=f"comma-separated (default: {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument(
        "--class", dest="target", help="class index or name (default: the trained model's top-1)"
    )
    parser.add_argument("--scales", type=parse_scales, help="CAMERAS sizes, e.g. 224,324,424")
    parser.add_argument(
        "--blocks",
        type=int,
        help="randomise only the first N blocks from the logits down (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="randomisation seed (default: 0)")
    parser.add_argument(
        "--out", type=Path, default=Path("cameras-sanity"), help="default: %(default)s"
    )
    add_model_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out, args.paths)
    if not args.methods:
        raise usage_error("--methods: give at least one method")
    model, prep, classes = open_model(args)
    try:
        first = make_method(args.methods[0], model, classes, args.layer)
        layer = first.layer_name
        for name in args.methods:
            make_method(name, model, classes, layer, args.scales)
    except ValueError as error:
        raise usage_error(str(error)) from None
    target = parse_class(args.target, first)
    steps = randomisation_steps(model)
    if args.blocks is not None:
        if args.blocks < 1:
            raise usage_error(f"--blocks {args.blocks}: must be at least 1")
        steps = steps[: args.blocks]

    def factory(name: str):
        return lambda m: make_method(name, m, classes, layer, args.scales)

    factories = {name: factory(name) for name in args.methods}
    images, failures = gather_images(args.paths, args.out)
    if not images:
        return 1
    inputs = {p.resolve() for p in images}
    table_path = args.out / "sanity.csv"
    if table_path.resolve() in inputs:
        raise usage_error(f"--out {args.out}: sanity.csv would overwrite an input")
    all_rows: list[dict] = []
    total = len(images) * (len(steps) + 1) * len(factories)
    progress = tqdm(total=total, desc="sanity", unit="map", file=sys.stderr)
    with open(table_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, CSV_FIELDS)
        writer.writeheader()
        for path, stem in zip(images, output_stems(images), strict=True):
            figure_path = args.out / f"{stem}_sanity.png"
            try:
                if figure_path.resolve() in inputs:
                    raise ImageError(f"{path}: output {figure_path.name} would overwrite an input")
                image = load_image(path)
                x = prep(image)[None]
                result = sanity_check(
                    model,
                    x,
                    factories,
                    targets=None if target is None else [target],
                    mode=args.mode,
                    steps=steps,
                    seed=args.seed,
                    progress=lambda: progress.update(1),
                )
            except ImageError as error:
                failures += 1
                progress.update((len(steps) + 1) * len(factories))
                tqdm.write(f"error: {error}", file=sys.stderr)
                continue
            rows = [
                {**row, "image": str(path), "mode": args.mode}
                | {m: round(row[m], 6) for m in SIMILARITIES}
                for row in result.rows
            ]
            writer.writerows(rows)
            handle.flush()
            all_rows.extend(rows)
            pixels = np.clip(prep.denormalise(x[0]).permute(1, 2, 0).cpu().numpy(), 0, 1)
            chosen = result.targets[0]
            name = classes[chosen] if classes else str(chosen)
            sanity_figure(
                result,
                (pixels * 255 + 0.5).astype(np.uint8),
                figure_path,
                title=f"{path.name}: {name} ({chosen}), {args.mode} randomisation from the "
                "logits down",
            )
            tqdm.write(f"{path}: {name} ({chosen}) -> {figure_path}", file=sys.stderr)
    progress.close()
    if all_rows:
        labels = [s.label for s in steps]
        means = _means(all_rows, list(factories), len(steps))
        table = _summary(means, labels, args.mode, len({r["image"] for r in all_rows}))
        (args.out / "sanity_summary.md").write_text(table + "\n")
        similarity_figure(means, labels, args.out / "sanity_similarity.png", args.mode)
        print(table)
    return 1 if failures else 0


def _means(rows: list[dict], methods: list[str], count: int) -> dict[str, dict[str, list[float]]]:
    """measure -> method -> mean over images of each step's similarity."""
    out: dict[str, dict[str, list[float]]] = {}
    for measure in SIMILARITIES:
        out[measure] = {}
        for method in methods:
            out[measure][method] = [
                float(
                    np.mean([r[measure] for r in rows if r["method"] == method and r["step"] == k])
                )
                for k in range(1, count + 1)
            ]
    return out


def _summary(means: dict, labels: list[str], mode: str, images: int) -> str:
    """Markdown: one table per measure, a row per step, a column per method."""
    parts = [
        f"Similarity to the trained model's map ({mode} randomisation, mean over "
        f"{images} image{'s' if images != 1 else ''}; 1 = unchanged, 0 = unrelated):"
    ]
    for measure, per_method in means.items():
        methods = list(per_method)
        parts.append("")
        parts.append(f"| {measure} | " + " | ".join(methods) + " |")
        parts.append("|---|" + "---|" * len(methods))
        for k, label in enumerate(labels):
            cells = " | ".join(f"{per_method[m][k]:.3f}" for m in methods)
            parts.append(f"| {k + 1}. {label} | {cells} |")
    return "\n".join(parts)

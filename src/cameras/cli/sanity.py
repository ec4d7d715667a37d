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
import io

from ..apps.evaluation import DEFAULT_METHODS
from ..apps.metrics.sanity import (
    MODES,
    SIMILARITIES,
    mean_similarities,
    sanity_check,
    similarity_markdown,
)
from ..apps.viz import sanity_figure, similarity_figure
from ..core.files import append_lines, complete_lines, write_atomically
from ..core.images import ImageError
from ..run.outputs import OutputGuard, write_failure
from . import SUBCOMMANDS
from .common import (
    add_model_arguments,
    add_out_argument,
    check_output_folder,
    gather_images,
    note,
    open_session,
    output_stems,
    parse_class,
    parse_methods,
    progress_bar,
    refuse_overwrite,
    require_extra,
    split_names,
    usage_error,
)

CSV_FIELDS = ["image", "method", "mode", "step", "label", *SIMILARITIES]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sanity",
        help=SUBCOMMANDS["sanity"],
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
    parser.add_argument(
        "--blocks",
        type=int,
        help="randomise only the first N blocks from the logits down (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="randomisation seed (default: 0)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep sanity.csv's rows and skip the images it already holds (with their figure) "
        "(default: start afresh)",
    )
    add_out_argument(parser)
    add_model_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    require_extra("scipy", "eval", "sanity")
    require_extra("skimage", "eval", "sanity")
    check_output_folder(args.out, args.paths)
    parse_methods("--methods", args.methods)
    if args.blocks is not None and args.blocks < 1:
        raise usage_error(f"--blocks {args.blocks}: must be at least 1")
    session = open_session(args)
    target = parse_class("--class", args.target, session)
    steps = session.backend.randomisation_steps()[: args.blocks]
    # Each randomised copy of the model gets its own method objects, on the session's layer.
    factories = {name: session.method_factory(name) for name in args.methods}
    images, failures = gather_images(args.paths, args.out)
    if not images:
        return 1
    inputs = OutputGuard(images)
    for fixed in ("sanity.csv", "sanity_summary.md", "sanity_similarity.png"):
        if inputs.covers(args.out / fixed):
            raise usage_error(f"--out {args.out}: {fixed} would overwrite an input")
    table = SanityTable(args.out / "sanity.csv", args.resume)
    progress = SanityProgress(len(images), len(steps) + 1, len(factories))
    stems = output_stems(images, args.out, ["{stem}_sanity.png"])
    for path, stem in zip(images, stems, strict=True):
        figure_path = args.out / f"{stem}_sanity.png"
        if args.resume and table.done(path) and figure_path.exists():
            progress.skip(path)
            continue
        try:
            failures += check_one(args, session, factories, steps, target, path, figure_path,
                                  inputs, table, progress)  # fmt: skip
        except ImageError as error:
            failures += 1
            progress.failed()
            note(f"error: {error}", error=True)
    progress.close()
    if table.rows:
        labels = [s.label for s in steps]
        means = mean_similarities(table.rows, list(factories), len(steps))
        images_done = len({r["image"] for r in table.rows})
        summary = similarity_markdown(means, labels, args.mode, images_done)
        write_atomically({args.out / "sanity_summary.md": summary + "\n"})
        similarity_figure(means, labels, args.out / "sanity_similarity.png", args.mode)
        print(summary)
    return 1 if failures else 0


def check_one(args, session, factories, steps, target, path, figure_path, inputs, table,
              progress) -> int:  # fmt: skip
    """One image: its rows go to the table at once, then its figure; returns 1 when the
    figure could not be written (its rows are kept), else 0."""
    refuse_overwrite(figure_path, inputs, path)
    _, x = session.open(path)
    progress.start(path)
    result = sanity_check(
        session.model,
        x,
        factories,
        backend=session.backend,
        targets=None if target is None else [target],
        mode=args.mode,
        steps=steps,
        seed=args.seed,
        progress=progress.map_done,
    )
    table.add(
        [
            {**row, "image": str(path), "mode": args.mode}
            | {m: round(row[m], 6) for m in SIMILARITIES}
            for row in result.rows
        ]
    )
    chosen = session.class_label(result.targets[0])
    title = f"{path.name}: {chosen}, {args.mode} randomisation from the logits down"
    try:
        sanity_figure(result, session.pixels(x), figure_path, title=title)
    except OSError as error:  # this image's failure; the others still run
        note(f"error: {path}: {write_failure(error, figure_path)}", error=True)
        return 1
    note(f"{path}: {chosen} -> {figure_path}", error=True)
    return 0


class SanityTable:
    """sanity.csv: each image's rows appended as whole lines as soon as they are known.
    A new run starts the file afresh; ``resume`` keeps the rows there (a torn last line
    dropped), and ``done`` tells which images they cover."""

    def __init__(self, path, resume: bool) -> None:
        self.path = path
        self.rows: list[dict] = []
        if resume and path.exists():
            for row in csv.DictReader(complete_lines(path)):
                if None in row.values():
                    continue  # a row cut short
                row["step"] = int(row["step"])
                self.rows.append(row | {m: float(row[m]) for m in SIMILARITIES})
        else:
            write_atomically({path: ",".join(CSV_FIELDS) + "\n"})

    def done(self, image) -> bool:
        return any(row["image"] == str(image) for row in self.rows)

    def add(self, rows: list[dict]) -> None:
        buffer = io.StringIO()
        csv.DictWriter(buffer, CSV_FIELDS, lineterminator="\n").writerows(rows)
        append_lines(self.path, [buffer.getvalue()])
        self.rows.extend(rows)


class SanityProgress:
    """A bar of maps on a terminal; elsewhere (a log, a pipe) a line per image and per
    randomisation step, so a long run is never silent."""

    def __init__(self, images: int, stages: int, methods: int) -> None:
        self.stages, self.methods = stages, methods
        self.bar = progress_bar(total=images * stages * methods, desc="sanity", unit="map")
        self.lines = self.bar.disable
        self.images, self.image, self.maps = images, 0, 0

    def start(self, path) -> None:
        self.image += 1
        self.maps = 0
        if self.lines:
            note(f"sanity: image {self.image}/{self.images} {path}: {self.stages} steps",
                 error=True)  # fmt: skip

    def map_done(self) -> None:
        self.bar.update(1)
        self.maps += 1
        if self.lines and self.maps % self.methods == 0:
            note(f"  step {self.maps // self.methods}/{self.stages} done", error=True)

    def skip(self, path) -> None:
        self.image += 1
        self.bar.update(self.stages * self.methods)
        note(f"{path}: already in sanity.csv (--resume), skipped", error=True)

    def failed(self) -> None:
        self.bar.update(self.stages * self.methods - self.maps)

    def close(self) -> None:
        self.bar.close()

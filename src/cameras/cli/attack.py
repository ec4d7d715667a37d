"""``cameras attack PATH...``: saliency-focused PGD against plain PGD, per image and in sum.

Parsing, files and printing only: the attacks and their summary come from
``cameras.apps.attack`` (``plain_and_focused``, ``compare_outcomes``, ``summarise_attacks``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..apps.attack import (
    DEFAULT_BETA,
    DEFAULT_NORM,
    DEFAULT_STEP_SIZE,
    DEFAULT_STEPS,
    NORMS,
    PAPER_REDUCTION,
    PENALTIES,
    compare_outcomes,
    plain_and_focused,
    reaches_when_saved,
    summarise_attacks,
    to_uint8,
)
from ..apps.viz import perturbation_figure, save_png
from ..core.files import append_lines, complete_lines, write_atomically
from ..core.images import ImageError
from ..run.outputs import OutputGuard, write_failure
from . import SUBCOMMANDS
from .common import (
    add_model_arguments,
    add_out_argument,
    check_output_folder,
    gather_images,
    method_of,
    note,
    open_session,
    output_stems,
    parse_class,
    parse_methods,
    progress_bar,
    refuse_overwrite,
    usage_error,
)

JSONL = "attack.jsonl"
SUMMARY = "attack_summary.json"


def parse_amount(text: str) -> float:
    """A number, or a fraction such as ``8/255`` (pixel units on [0, 1])."""
    try:
        if "/" in text:
            top, bottom = text.split("/", 1)
            return float(top) / float(bottom)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a number such as 0.5 or 2/255"
        ) from None


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "attack",
        help=SUBCOMMANDS["attack"],
        description="Targeted PGD (towards each image's least-likely class unless --target) "
        "minimising CE + beta * ||p * (1 - map)||_2, and plain PGD with the same settings. "
        "Per image it writes OUT/<stem>_adversarial_<method>.png (lossless 8-bit PNG at the "
        "model's input resolution, shorter side e.g. 224, not the photo's own size), "
        "OUT/<stem>_perturbation_<method>.png (the perturbations beside the map) and a JSON "
        f"line in OUT/{JSONL}; then it prints the fooling rates and the mean norm reduction. "
        "Norms, step sizes and eps are in [0, 1] pixel units on the command line and in the "
        "JSON files; printed Linf amounts are in 8-bit levels (x/255).",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--method",
        default="cameras",
        help="map that focuses the attack: cameras (default), gradcam, ... or none (plain only)",
    )
    parser.add_argument(
        "--beta",
        type=float,
        default=DEFAULT_BETA,
        help="weight of the penalty outside the salient region (default: %(default)s)",
    )
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help="most PGD steps (default: %(default)s)"
    )
    parser.add_argument(
        "--norm", default=DEFAULT_NORM, choices=NORMS, help="step and eps norm (default: linf)"
    )
    parser.add_argument(
        "--step-size",
        type=parse_amount,
        help="per-pixel step for linf (default: 2/255), L2 length of a step for l2 "
        f"(default: {DEFAULT_STEP_SIZE['l2']})",
    )
    parser.add_argument(
        "--eps",
        type=parse_amount,
        help="bound on the perturbation's norm, e.g. 8/255 (default: no bound)",
    )
    parser.add_argument(
        "--penalty",
        default="gradient",
        choices=PENALTIES,
        help="how the penalty acts: its gradient joins each step (gradient, the default) or its "
        "proximal map holds the perturbation outside the map at zero (proximal)",
    )
    parser.add_argument(
        "--beta-patience",
        type=int,
        help="halve beta after every N steps that miss the target (default: beta fixed)",
    )
    parser.add_argument("--target", help="class to reach, index or name (default: least-likely)")
    parser.add_argument(
        "--no-early-stop",
        dest="early_stop",
        action="store_false",
        help="take every step instead of stopping each image once its target is top-1 "
        "(default: stop early)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"keep the rows in OUT/{JSONL} (same settings) and skip the images they cover "
        "(default: start afresh)",
    )
    add_out_argument(parser)
    add_model_arguments(parser)
    parser.set_defaults(run=run)


def check_arguments(args: argparse.Namespace) -> None:
    if args.steps < 0:
        raise usage_error(f"--steps {args.steps}: must be 0 or more")
    if not 0 <= args.beta < float("inf"):
        raise usage_error(f"--beta {args.beta}: must be a finite number, 0 or more")
    if args.beta_patience is not None and args.beta_patience < 1:
        raise usage_error(f"--beta-patience {args.beta_patience}: must be 1 or more")
    if args.step_size is not None and not 0 < args.step_size < float("inf"):
        raise usage_error(f"--step-size {args.step_size}: must be a positive finite number")
    if args.eps is not None and not args.eps > 0:
        raise usage_error(f"--eps {args.eps}: must be positive")
    if args.method != "none":
        parse_methods("--method", [args.method])


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    check_output_folder(args.out, args.paths)
    session = open_session(args)
    method = method_of(session, args.method) if args.method != "none" else None
    target = parse_class("--target", args.target, session)
    step_size = args.step_size if args.step_size is not None else DEFAULT_STEP_SIZE[args.norm]
    images, failures = gather_images(args.paths, args.out)
    inputs = OutputGuard(images)
    jsonl = args.out / JSONL
    if inputs.covers(jsonl) or inputs.covers(args.out / SUMMARY):
        raise usage_error(f"--out {args.out}: {JSONL} would overwrite an input; choose another")
    settings = {
        "norm": args.norm,
        "steps": args.steps,
        "step_size": step_size,
        "eps": args.eps,
        "beta": args.beta,
        "early_stop": args.early_stop,
    }
    rows = earlier_rows(jsonl, settings) if args.resume else []
    if not args.resume:
        write_atomically({jsonl: ""})
    done = {row["file"] for row in rows}
    name = args.method
    patterns = [f"{{stem}}_adversarial_{name}.png", f"{{stem}}_perturbation_{name}.png"]
    pairs = list(zip(images, output_stems(images, args.out, patterns), strict=True))
    bar = progress_bar(total=len(pairs), desc="attack", unit="image", disable=len(images) < 2)
    for number, (path, stem) in enumerate(pairs, 1):
        bar.update(1)
        if str(path) in done:
            note(f"{path}: already in {JSONL} (--resume), skipped", error=True)
            continue
        if bar.disable:  # not on a terminal: a line as each image starts
            note(f"attack: image {number}/{len(pairs)} {path}", error=True)
        try:
            row = attack_one(args, session, method, target, step_size, path, stem, inputs)
        except ImageError as error:
            failures += 1
            note(f"error: {error}", error=True)
            continue
        except OSError as error:  # this image's files; the others still run
            failures += 1
            note(f"error: {path}: {write_failure(error)}", error=True)
            continue
        rows.append(row)
        append_lines(jsonl, [json.dumps(row) + "\n"])
        # The summary so far, after every image: a stopped run keeps one of what it did.
        summary = summarise_attacks(rows, method.name if method else None, settings)
        write_atomically({args.out / SUMMARY: json.dumps(summary, indent=2) + "\n"})
        note(describe(row))
    bar.close()
    summary = summarise_attacks(rows, method.name if method else None, settings)
    write_atomically({args.out / SUMMARY: json.dumps(summary, indent=2) + "\n"})
    for line in summary_lines(summary):
        print(line)
    return 1 if failures else 0


def earlier_rows(jsonl: Path, settings: dict) -> list[dict]:
    """--resume: the rows of an earlier run (a torn last line dropped), if its settings
    were these; a usage error otherwise (mixing them would make the summary meaningless)."""
    rows = [json.loads(line) for line in complete_lines(jsonl)]
    for key in ("norm", "steps_max", "step_size", "eps"):
        own = {"steps_max": settings["steps"]}.get(key, settings.get(key))
        theirs = {row.get(key) for row in rows}
        if theirs and theirs != {own}:
            raise usage_error(
                f"--resume: {jsonl} holds rows with {key} {sorted(theirs, key=str)[0]!r}, "
                f"this run has {own!r}; use another --out"
            )
    return rows


def attack_one(args, session, method, target, step_size, path: Path, stem: str, inputs) -> dict:
    """Attack one image (plain and, with a method, focused); write its files; return its row."""
    name = args.method
    adversarial_png = args.out / f"{stem}_adversarial_{name}.png"
    picture_png = args.out / f"{stem}_perturbation_{name}.png"
    for output in (adversarial_png, picture_png):
        refuse_overwrite(output, inputs, path)
    _, x = session.open(path)
    saliency = method(x).maps[0] if method is not None else None
    bar = progress_bar(total=args.steps, desc=f"  {path.name}", unit="step", leave=False)
    try:
        result = plain_and_focused(
            session.scorer,
            x,
            saliency,
            beta=args.beta,
            target=target,
            steps=args.steps,
            step_size=step_size,
            eps=args.eps,
            norm=args.norm,
            prep=session.prep,
            stop_when_reached=args.early_stop,
            penalty=args.penalty,
            beta_patience=args.beta_patience,
            class_names=session.class_names,
            progress=lambda step, _running: bar.update(step - bar.n),
        )
    finally:
        bar.close()
    row_index = len(result.reached) - 1  # the focused row, or the only (plain) one
    adversarial = to_uint8(result.pixels[row_index])
    save_png(adversarial, adversarial_png)
    chosen, original = result.targets[row_index], result.original[row_index]
    outcomes = compare_outcomes(result)
    titles = {
        "map": f"{name} map: {session.class_name(original)}"[:40],
        "image": f"input: {session.class_name(original)}"[:40],
        "adversarial": f"-> {session.class_name(chosen)[:24]} "
        f"({outcomes['confidence']:.2f}){'' if outcomes['reached'] else ' not reached'}",
    }
    perturbations = []
    if method is not None:
        perturbations.append((name, result.perturbation[1]))
        titles[name] = f"{name}-focused L2 {outcomes['l2']:.2f}"
    perturbations.append(("plain", result.perturbation[0]))
    titles["plain"] = f"plain L2 {float(result.l2[0]):.2f}"
    clean = session.pixels(x)
    perturbation_figure(clean, saliency, perturbations, adversarial, titles, picture_png)
    return {
        "file": str(path),
        "method": name,
        "norm": args.norm,
        "beta": args.beta if method is not None else 0.0,
        "steps_max": args.steps,
        "step_size": step_size,
        "eps": args.eps,
        "input_size": list(x.shape[2:]),
        "original": {"index": original, "name": session.class_name(original)},
        "target": {"index": chosen, "name": session.class_name(chosen)},
        **outcomes,
        "png": adversarial_png.name,
        "png_reached": reaches_when_saved(session.scorer, session.prep, adversarial, chosen),
        "picture": picture_png.name,
    }


def levels(value: float) -> str:
    """A Linf amount in [0, 1] pixel units, printed in 8-bit levels: 0.0078 -> "2.0/255"."""
    return f"{value * 255:.1f}/255"


def describe(row: dict) -> str:
    verdict = "reached" if row["reached"] else "NOT reached"
    text = (
        f"{row['file']}: {row['original']['name']} -> {row['target']['name']} "
        f"({row['target']['index']}) {verdict}, confidence {row['confidence']:.3f}, "
        f"L2 {row['l2']:.3f}, Linf {levels(row['linf'])}, {row['steps']} steps"
    )
    if "plain" in row:
        plain = row["plain"]
        text += (
            f"; plain: {'reached' if plain['reached'] else 'NOT reached'}, "
            f"L2 {plain['l2']:.3f}, Linf {levels(plain['linf'])}, {plain['steps']} steps"
        )
    return text


def summary_lines(summary: dict) -> list[str]:
    if not summary["images"]:
        return ["no image was attacked"]
    s = summary["settings"]
    linf = s["norm"] == "linf"
    step = levels(s["step_size"]) if linf else f"{s['step_size']:.4g}"
    eps = "none" if s["eps"] is None else (levels(s["eps"]) if linf else f"{s['eps']:.4g}")
    lines = [
        f"summary over {summary['images']} images ({s['norm']} steps of {step}, "
        f"at most {s['steps']}, eps {eps}, early stop {'on' if s['early_stop'] else 'off'}):"
    ]
    for key, values in summary.items():
        if isinstance(values, dict) and "fooling_rate_percent" in values:
            label = "plain PGD" if key == "plain" else f"{key}-focused PGD (beta {s['beta']:g})"
            lines.append(
                f"  {label}: fooling rate {values['fooling_rate_percent']:.1f} %, mean L2 "
                f"{values['mean_l2']:.3f}, mean Linf {levels(values['mean_linf'])}"
            )
    if "l2_reduction_percent" in summary:
        lines.append(
            f"  mean norm reduction against plain PGD: L2 {summary['l2_reduction_percent']:.1f} %"
            f" (paper, ResNet-50 on ImageNet val: {PAPER_REDUCTION} %), "
            f"Linf {summary['linf_reduction_percent']:.1f} %"
        )
    return lines

"""``cameras attack PATH...``: saliency-focused PGD against plain PGD, per image and in sum."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..attack import (
    DEFAULT_BETA,
    DEFAULT_NORM,
    DEFAULT_STEP_SIZE,
    DEFAULT_STEPS,
    NORMS,
    PENALTIES,
    AttackResult,
    pgd,
)
from ..capture import eval_mode, logits_of, model_device
from ..images import ImageError, load_image
from ..methods import METHODS
from ..models import find_class
from ..viz import perturbation_figure
from .common import (
    add_model_arguments,
    build_method,
    gather_images,
    open_model,
    parse_scales,
    usage_error,
)
from .explain import check_output_folder, output_stems

PAPER_REDUCTION = 56.5  # % smaller perturbation norm, ResNet-50 on ImageNet val, beta = 50
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
        help="saliency-focused PGD towards the least-likely class, against plain PGD",
        description="Targeted PGD (towards each image's least-likely class unless --target) "
        "minimising CE + beta * ||p * (1 - map)||_2, and plain PGD with the same settings. "
        "Per image it writes OUT/<stem>_adversarial_<method>.png (lossless 8-bit PNG at the "
        "model's input resolution, shorter side e.g. 224, not the photo's own size), "
        "OUT/<stem>_perturbation_<method>.png (the perturbations beside the map) and a JSON "
        f"line in OUT/{JSONL}; then it prints the fooling rates and the mean norm reduction. "
        "Norms and step sizes are in [0, 1] pixel units.",
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
        help="take every step instead of stopping each image once its target is top-1",
    )
    parser.add_argument("--scales", type=parse_scales, help="CAMERAS sizes, e.g. 224,324,424")
    parser.add_argument(
        "--out", type=Path, default=Path("cameras-out"), help="default: %(default)s"
    )
    add_model_arguments(parser)
    parser.set_defaults(run=run)


def check_arguments(args: argparse.Namespace) -> None:
    if args.steps < 0:
        raise usage_error(f"--steps {args.steps}: must be 0 or more")
    if not args.beta >= 0:
        raise usage_error(f"--beta {args.beta}: must be 0 or more")
    if args.beta_patience is not None and args.beta_patience < 1:
        raise usage_error(f"--beta-patience {args.beta_patience}: must be 1 or more")
    if args.step_size is not None and not args.step_size > 0:
        raise usage_error(f"--step-size {args.step_size}: must be positive")
    if args.eps is not None and not args.eps > 0:
        raise usage_error(f"--eps {args.eps}: must be positive")
    if args.method != "none" and args.method not in METHODS:
        raise usage_error(f"--method {args.method!r}: choose from {', '.join(METHODS)}, none")


def parse_target(text: str | None, classes: list[str] | None) -> int | None:
    if text is None:
        return None
    try:
        if text.strip().isdigit():
            index = int(text)
            if classes is not None and index >= len(classes):
                raise ValueError(f"class {index} is out of range: the model has {len(classes)}")
            return index
        if classes is None:
            raise ValueError("the model has no class names; pass an index")
        return find_class(text, classes)
    except ValueError as error:
        raise usage_error(f"--target {text}: {error}") from None


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded to the nearest level."""
    return (pixels.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()


def png_reaches(model, prep, image: np.ndarray, target: int) -> bool:
    """Whether the 8-bit image, as saved, still has ``target`` as top-1."""
    pixels = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
    with eval_mode(model), torch.no_grad():
        logits = logits_of(model(prep.normalise(pixels.to(model_device(model)))))
    return int(logits.argmax(1)[0]) == target


def record_of(result: AttackResult, i: int) -> dict:
    return {
        "reached": bool(result.reached[i]),
        "confidence": round(float(result.confidence[i]), 6),
        "l2": round(float(result.l2[i]), 6),
        "linf": round(float(result.linf[i]), 6),
        "steps": int(result.steps[i]),
    }


def class_entry(index: int, classes: list[str] | None) -> dict:
    return {"index": int(index), "name": classes[index] if classes else str(index)}


def reduction(focused: float, plain: float) -> float | None:
    """How much smaller the focused norm is, in % of the plain one (None if plain is 0)."""
    return None if plain == 0 else round(100.0 * (1.0 - focused / plain), 3)


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    check_output_folder(args.out, args.paths)
    model, prep, classes = open_model(args)
    method = None
    if args.method != "none":
        method = build_method(args.method, model, classes, args.layer, args.scales)
    target = parse_target(args.target, classes)
    step_size = args.step_size if args.step_size is not None else DEFAULT_STEP_SIZE[args.norm]
    images, failures = gather_images(args.paths, args.out)
    inputs = {p.resolve() for p in images}
    jsonl = args.out / JSONL
    if jsonl.resolve() in inputs or (args.out / SUMMARY).resolve() in inputs:
        raise usage_error(f"--out {args.out}: {JSONL} would overwrite an input; choose another")
    name = args.method
    rows: list[dict] = []
    progress = tqdm(
        list(zip(images, output_stems(images), strict=True)),
        desc="attack",
        unit="image",
        disable=len(images) < 2,
        file=sys.stderr,
    )
    with jsonl.open("w") as lines:
        for path, stem in progress:
            try:
                row = attack_one(
                    args, model, prep, classes, method, target, step_size, path, stem, inputs
                )
            except ImageError as error:
                failures += 1
                tqdm.write(f"error: {error}", file=sys.stderr)
                continue
            lines.write(json.dumps(row) + "\n")
            lines.flush()
            rows.append(row)
            tqdm.write(describe(row), file=sys.stdout)
    summary = summarise(rows, name, args, step_size)
    (args.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    for line in summary_lines(summary):
        print(line)
    return 1 if failures else 0


def attack_one(
    args, model, prep, classes, method, target, step_size, path: Path, stem: str, inputs: set
) -> dict:
    """Attack one image (plain and, with a method, focused); write its files; return its row."""
    name = args.method
    adversarial_png = args.out / f"{stem}_adversarial_{name}.png"
    picture_png = args.out / f"{stem}_perturbation_{name}.png"
    for output in (adversarial_png, picture_png):
        if output.resolve() in inputs:
            raise ImageError(f"{path}: output {output.name} would overwrite an input; use --out")
    image = load_image(path)
    x = prep(image)[None]
    saliency = None
    if method is not None:
        explanation = method(x)
        saliency = explanation.maps[0]
        # One batch: row 0 is plain PGD (Psi = 1 everywhere makes the penalty exactly 0),
        # row 1 the focused attack, so both get identical settings and one pass per step.
        batch = x.expand(2, -1, -1, -1)
        maps = torch.stack([torch.ones_like(saliency), saliency])
    else:
        batch, maps = x, None
    bar = tqdm(total=args.steps, desc=f"  {path.name}", unit="step", leave=False, file=sys.stderr)
    try:
        result = pgd(
            model,
            batch,
            target=target,
            saliency=maps,
            beta=args.beta if method is not None else 0.0,
            steps=args.steps,
            step_size=step_size,
            eps=args.eps,
            norm=args.norm,
            prep=prep,
            stop_when_reached=args.early_stop,
            penalty=args.penalty,
            beta_patience=args.beta_patience,
            class_names=classes,
            progress=lambda step, _running: bar.update(step - bar.n),
        )
    finally:
        bar.close()
    row_index = 1 if method is not None else 0
    adversarial = to_uint8(result.pixels[row_index])
    Image.fromarray(adversarial).save(adversarial_png)
    chosen = result.targets[row_index]
    record = record_of(result, row_index)
    titles = {
        "map": f"{name} map: {class_entry(result.original[0], classes)['name']}"[:40],
        "image": f"input: {class_entry(result.original[0], classes)['name']}"[:40],
        "adversarial": f"-> {class_entry(chosen, classes)['name'][:24]} "
        f"({record['confidence']:.2f}){'' if record['reached'] else ' not reached'}",
    }
    perturbations = []
    if method is not None:
        perturbations.append((name, result.perturbation[1]))
        titles[name] = f"{name}-focused L2 {record['l2']:.2f}"
    perturbations.append(("plain", result.perturbation[0]))
    titles["plain"] = f"plain L2 {float(result.l2[0]):.2f}"
    clean = to_uint8(prep.denormalise(x[0]))
    perturbation_figure(clean, saliency, perturbations, adversarial, titles, picture_png)
    row = {
        "file": str(path),
        "method": name,
        "norm": args.norm,
        "beta": args.beta if method is not None else 0.0,
        "steps_max": args.steps,
        "step_size": step_size,
        "eps": args.eps,
        "input_size": list(x.shape[2:]),
        "original": class_entry(result.original[row_index], classes),
        "target": class_entry(chosen, classes),
        **record,
        "png": adversarial_png.name,
        "png_reached": png_reaches(model, prep, adversarial, chosen),
        "picture": picture_png.name,
    }
    if method is not None:
        plain = record_of(result, 0)
        row["plain"] = plain
        row["l2_reduction_percent"] = reduction(record["l2"], plain["l2"])
        row["linf_reduction_percent"] = reduction(record["linf"], plain["linf"])
    return row


def describe(row: dict) -> str:
    verdict = "reached" if row["reached"] else "NOT reached"
    text = (
        f"{row['file']}: {row['original']['name']} -> {row['target']['name']} "
        f"({row['target']['index']}) {verdict}, confidence {row['confidence']:.3f}, "
        f"L2 {row['l2']:.3f}, Linf {row['linf'] * 255:.1f}/255, {row['steps']} steps"
    )
    if "plain" in row:
        plain = row["plain"]
        text += (
            f"; plain: {'reached' if plain['reached'] else 'NOT reached'}, "
            f"L2 {plain['l2']:.3f}, Linf {plain['linf'] * 255:.1f}/255, {plain['steps']} steps"
        )
    return text


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 3) if kept else None


def summarise(rows: list[dict], name: str, args: argparse.Namespace, step_size: float) -> dict:
    """Fooling rates and mean norms of both attacks; norm reductions averaged per image."""
    summary: dict = {
        "images": len(rows),
        "settings": {
            "norm": args.norm,
            "steps": args.steps,
            "step_size": step_size,
            "eps": args.eps,
            "beta": args.beta,
            "early_stop": args.early_stop,
        },
    }
    if not rows:
        return summary
    attacks = {"plain": [r.get("plain", r) for r in rows]}
    if name != "none":
        attacks[name] = rows
    for key, records in attacks.items():
        summary[key] = {
            "fooling_rate_percent": round(100.0 * np.mean([r["reached"] for r in records]), 3),
            "mean_l2": _mean([r["l2"] for r in records]),
            "mean_linf": _mean([r["linf"] for r in records]),
        }
    if name != "none":
        summary["l2_reduction_percent"] = _mean([r["l2_reduction_percent"] for r in rows])
        summary["linf_reduction_percent"] = _mean([r["linf_reduction_percent"] for r in rows])
    return summary


def summary_lines(summary: dict) -> list[str]:
    if not summary["images"]:
        return ["no image was attacked"]
    s = summary["settings"]
    eps = "none" if s["eps"] is None else f"{s['eps']:.4g}"
    lines = [
        f"summary over {summary['images']} images ({s['norm']} steps of {s['step_size']:.4g}, "
        f"at most {s['steps']}, eps {eps}, early stop {'on' if s['early_stop'] else 'off'}):"
    ]
    for key, values in summary.items():
        if isinstance(values, dict) and "fooling_rate_percent" in values:
            label = "plain PGD" if key == "plain" else f"{key}-focused PGD (beta {s['beta']:g})"
            lines.append(
                f"  {label}: fooling rate {values['fooling_rate_percent']:.1f} %, mean L2 "
                f"{values['mean_l2']:.3f}, mean Linf {values['mean_linf'] * 255:.2f}/255"
            )
    if "l2_reduction_percent" in summary:
        lines.append(
            f"  mean norm reduction against plain PGD: L2 {summary['l2_reduction_percent']:.1f} %"
            f" (paper, ResNet-50 on ImageNet val: {PAPER_REDUCTION} %), "
            f"Linf {summary['linf_reduction_percent']:.1f} %"
        )
    return lines

"""Which scales count: the scale rules and scale ranges measured on real photos.

    python benchmarks/scale_rules.py [--models efficientnet_lite0,...] [--device cpu|cuda]

With no class given (each photo's top-1 at its own size is explained), on the shipped
evaluation set plus the bundled photos it lacks, this prints:

1. per photo, the scales each rule keeps (the default model, the paper's scales);
2. per rule and scale range, the median number of kept scales, the photos left with only
   the base scale, and the metrics of the resulting maps: pointing game and energy (photos
   with boxes), rho_plus / rho_minus and deletion AUC (every photo, the explained class);
3. per model (EfficientNet-Lite0/1/2), the share of scales each rule keeps and the top-1
   and top-5 accuracy on the evaluation set's classes.

Rules (``cameras.CAMERAS(rule=...)``): top1 keeps a scale whose own top-1 is the class (the
paper's rule); top5 keeps it while the class is in that scale's top 5; all keeps every
scale (what the authors' code does when the class is passed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from photo_sets import Photo, evaluation_photos

import cameras
from cameras.apps.metrics import deletion, energy_pointing_game, map_density, pointing_game
from cameras.core.capture import LayerCapture
from cameras.core.fusion import fuse_scales, normalise_maps
from cameras.core.images import resize_map
from cameras.methods.base import top1_of
from cameras.methods.cameras import SCALE_RULES, kept_by_rule, resize_to_scale

# Scale ranges as factors of the input's shorter side (224 for Lite0).
SCALE_RANGES = {
    "paper": [224, 324, 424, 524, 624, 724, 824, 924],
    "compact": [224, 264, 304, 344, 384, 424, 464, 504],
}


def scale_set(name: str, shorter_side: int) -> list[int]:
    return [round(shorter_side * s / 224) for s in SCALE_RANGES[name]]


def per_scale_logits(model, x: torch.Tensor, scales: list[int]) -> list[torch.Tensor]:
    """The (K,) class scores at each scale, as CAMERAS resizes the input."""
    with torch.no_grad():
        return [model(resize_to_scale(x, s)).float()[0] for s in scales]


def maps_per_rule(model, x: torch.Tensor, scales: list[int]) -> dict:
    """CAMERAS with each rule, no class given, from one pass over the scales.

    The rules differ only in which scales count (the class is the base scale's top-1 in
    every rule), so every scale's activations and gradients are captured once and fused
    with each rule's weights: the same steps as ``CAMERAS(rule=...)``, which ``main``
    checks on the first photo.
    """
    method = cameras.CAMERAS(model, scales=scales)
    activations, gradients, logits = [], [], []
    wanted = top1_of
    with LayerCapture(model, method.layer) as capture:
        for scale in scales:
            step, wanted = capture.run(resize_to_scale(x, scale), wanted)
            activations.append(step.activations)
            gradients.append(step.gradients)
            logits.append(step.logits)
    results = {}
    for rule in SCALE_RULES:
        kept = torch.stack([kept_by_rule(rule, lg, wanted) for lg in logits], 1).float()
        weights = kept / kept.sum(1, keepdim=True).clamp(min=1)
        maps = normalise_maps(fuse_scales(activations, gradients, weights, tuple(x.shape[2:])))
        results[rule] = RuleMap(
            maps, int(wanted[0]), [s for s, k in zip(scales, kept[0], strict=True) if k]
        )
    return results


@dataclass
class RuleMap:
    maps: torch.Tensor  # (1, H, W) in [0, 1]
    target: int
    kept: list[int]


def metrics_for(
    model, prep, photo: Photo, x: torch.Tensor, result, deletion_steps: int
) -> dict[str, float]:
    target = result.target
    maps = result.maps
    rho_plus, rho_minus = map_density(model, x, maps, [target], prep)
    row = {"rho_plus": float(rho_plus[0]), "rho_minus": float(rho_minus[0])}
    if deletion_steps:
        curves = deletion(model, x, maps, [target], steps=deletion_steps, prep=prep)
        row["deletion"] = float(curves.auc[0])
    if photo.boxes:
        width, height = photo.image.size
        full = resize_map(maps[0], height, width)
        boxes = [box for class_boxes in photo.boxes.values() for box in class_boxes]
        row["pointing"] = float(pointing_game([full], [boxes])[0])
        row["energy"] = float(energy_pointing_game([full], [boxes])[0])
    return row


def mean(values: list[float]) -> str:
    values = [v for v in values if v == v]
    return f"{np.mean(values):.3f}" if values else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--models", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"
    )
    parser.add_argument(
        "--deletion-steps", type=int, default=25, help="deletion curve steps (paper scales only)"
    )
    parser.add_argument("--part", choices=["all", "rules", "models"], default="all")
    args = parser.parse_args()
    started = time.perf_counter()
    photos = evaluation_photos()
    print(f"{len(photos)} photos ({sum(bool(p.boxes) for p in photos)} with boxes)\n")
    names = args.models.split(",")

    if args.part in ("all", "rules"):
        rules_tables(args, photos, names[0])
    if args.part in ("all", "models"):
        models_table(args, photos, names)
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


def rules_tables(args, photos: list[Photo], name: str) -> None:
    """Sections 1 and 2: the default model, every rule and scale range, maps and metrics."""
    model, prep, classes = cameras.load_model(name, device=args.device)
    inputs = [prep(p.image)[None].to(args.device) for p in photos]
    # The shortcut in maps_per_rule gives what the library gives, rule by rule.
    scales = scale_set("paper", min(inputs[0].shape[2:]))
    for rule, got in maps_per_rule(model, inputs[0], scales).items():
        library = cameras.CAMERAS(model, scales=scales, rule=rule)(inputs[0])
        assert [s.scale for s in library.scales[0] if s.kept] == got.kept, rule
        assert (library.maps - got.maps).abs().max() <= 1e-5, rule
    rows: dict[tuple[str, str], list[dict]] = {}
    print(f"## Kept scales per photo ({name}, paper scales, no class given)\n")
    print("| photo | class at base scale | " + " | ".join(SCALE_RULES) + " |")
    print("|---|---|" + "---|" * len(SCALE_RULES))
    for photo, x in zip(photos, inputs, strict=True):
        cells = {}
        for range_name in SCALE_RANGES:
            scales = scale_set(range_name, min(x.shape[2:]))
            for rule, result in maps_per_rule(model, x, scales).items():
                kept = result.kept
                steps = args.deletion_steps if range_name == "paper" else 0
                row = metrics_for(model, prep, photo, x, result, steps)
                row["kept"] = len(kept)
                rows.setdefault((range_name, rule), []).append(row)
                if range_name == "paper":
                    cells[rule] = ",".join(map(str, kept))
                    label = classes[result.target]
        print(f"| {photo.name} | {label} | " + " | ".join(cells[r] for r in SCALE_RULES) + " |")
        sys.stdout.flush()

    print(f"\n## Rules and scale ranges ({name}, {len(photos)} photos, no class given)\n")
    print(
        "| scales | rule | median kept | only base | pointing ↑ | energy ↑ | rho_plus ↑ "
        "| rho_minus ↓ | deletion ↓ |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (range_name, rule), got in rows.items():
        kept = [r["kept"] for r in got]
        print(
            f"| {range_name} {SCALE_RANGES[range_name][0]}-{SCALE_RANGES[range_name][-1]} | "
            f"{rule} | {statistics.median(kept):g} of 8 | {sum(k == 1 for k in kept)} | "
            + " | ".join(
                mean([r.get(m, float("nan")) for r in got])
                for m in ("pointing", "energy", "rho_plus", "rho_minus", "deletion")
            )
            + " |"
        )


def models_table(args, photos: list[Photo], names: list[str]) -> None:
    """Section 3: the three offline models: share of scales kept, accuracy on the classes."""
    print(
        f"\n## Models ({len(photos)} photos; accuracy on the {sum(bool(p.boxes) for p in photos)}"
        " photos with classes)\n"
    )
    print(
        "| model | input | top-1 acc | top-5 acc | "
        + " | ".join(f"{r} kept ({g})" for g in SCALE_RANGES for r in SCALE_RULES if r != "all")
        + " |"
    )
    print("|---|---|---|---|" + "---|" * (len(SCALE_RANGES) * 2))
    for name in names:
        model, prep, _ = cameras.load_model(name, device=args.device)
        top1_hits, top5_hits, shares = [], [], {}
        for photo in photos:
            x = prep(photo.image)[None].to(args.device)
            for range_name in SCALE_RANGES:
                scales = scale_set(range_name, min(x.shape[2:]))
                logits = per_scale_logits(model, x, scales)
                target = logits[0].argmax()[None]
                for rule in SCALE_RULES:
                    if rule == "all":
                        continue
                    kept = [bool(kept_by_rule(rule, lg[None], target)) for lg in logits]
                    shares.setdefault((range_name, rule), []).append(np.mean(kept))
            if photo.boxes:
                base = per_scale_logits(model, x, [min(x.shape[2:])])[0]
                top5 = set(base.topk(5).indices.tolist())
                top1_hits.append(int(base.argmax()) in photo.boxes)
                top5_hits.append(bool(top5 & set(photo.boxes)))
        print(
            f"| {name} | {prep.size} | {np.mean(top1_hits):.2f} | {np.mean(top5_hits):.2f} | "
            + " | ".join(
                f"{100 * np.mean(shares[(g, r)]):.0f} %"
                for g in SCALE_RANGES
                for r in SCALE_RULES
                if r != "all"
            )
            + " |"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())

"""Saliency-focused PGD against plain PGD on the photos bundled with scikit-image,
scikit-learn and matplotlib: fooling rate and norm reduction (README figures).

    python benchmarks/attack_table.py [--device cpu|cuda] [--steps N] [--beta B] [--norm linf|l2]

Every photo is attacked towards its least-likely class three times in one batch, with
identical settings (the library defaults unless overridden): plain PGD (Psi = 1, so the
penalty is zero), focused by the CAMERAS map (default scales) and focused by the Grad-CAM
map, both maps for the photo's top-1 class. Norms are in [0, 1] pixel units at the
model's input size; the reduction is ``1 - focused / plain`` per photo, then averaged.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from photo_sets import bundled_photos

import cameras
from cameras.attack import DEFAULT_BETA, DEFAULT_NORM, DEFAULT_STEPS, NORMS, pgd

PAPER_REDUCTION = 56.5


VARIANTS = ("plain", "cameras", "gradcam")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--beta", type=float, default=DEFAULT_BETA)
    parser.add_argument("--norm", default=DEFAULT_NORM, choices=NORMS)
    parser.add_argument("--step-size", type=float, help="default: the library's for --norm")
    args = parser.parse_args()

    model, prep, classes = cameras.load_model(device=args.device)
    explainers = {"cameras": cameras.CAMERAS(model), "gradcam": cameras.GradCAM(model)}
    rows: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    started = time.perf_counter()
    print(f"device {args.device}, norm {args.norm}, steps {args.steps}, beta {args.beta:g}")
    for name, photo in bundled_photos().items():
        x = prep(photo)[None].to(args.device)
        maps = [explainers[m](x).maps[0] for m in ("cameras", "gradcam")]
        saliency = torch.stack([torch.ones_like(maps[0]), *maps])
        result = pgd(
            model,
            x.expand(3, -1, -1, -1),
            saliency=saliency,
            beta=args.beta,
            steps=args.steps,
            step_size=args.step_size,
            norm=args.norm,
            prep=prep,
        )
        cells = []
        for i, variant in enumerate(VARIANTS):
            row = {
                "reached": result.reached[i],
                "l2": float(result.l2[i]),
                "linf": float(result.linf[i]),
                "steps": result.steps[i],
            }
            rows[variant].append(row)
            mark = "ok" if row["reached"] else "FAIL"
            cells.append(
                f"{variant} {mark} {row['steps']:3d} steps L2 {row['l2']:.2f} "
                f"Linf {row['linf'] * 255:.0f}/255"
            )
        target = classes[result.targets[0]]
        print(f"{name:13s} -> {target[:22]:22s} | " + " | ".join(cells), flush=True)

    print()
    print("| attack | fooling rate | mean L2 | mean Linf | L2 reduction | Linf reduction |")
    print("| --- | --- | --- | --- | --- | --- |")
    plain = rows["plain"]
    for variant in VARIANTS:
        got = rows[variant]
        fooling = 100.0 * np.mean([r["reached"] for r in got])
        l2_cut = np.mean([100 * (1 - r["l2"] / p["l2"]) for r, p in zip(got, plain, strict=True)])
        linf_cut = np.mean(
            [100 * (1 - r["linf"] / p["linf"]) for r, p in zip(got, plain, strict=True)]
        )
        label = "plain PGD" if variant == "plain" else f"{variant}-focused (beta {args.beta:g})"
        cuts = "- | -" if variant == "plain" else f"{l2_cut:.1f} % | {linf_cut:.1f} %"
        print(
            f"| {label} | {fooling:.1f} % ({sum(r['reached'] for r in got)}/{len(got)}) | "
            f"{np.mean([r['l2'] for r in got]):.2f} | "
            f"{255 * np.mean([r['linf'] for r in got]):.1f}/255 | {cuts} |"
        )
    print(
        f"| paper (ResNet-50, ImageNet val, CAMERAS, beta 50) | 99.99 % | | | "
        f"{PAPER_REDUCTION} % | |"
    )
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

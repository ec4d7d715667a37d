"""Does batching pay on this machine? Two measurements, each side by side in one run.

    .venv/bin/python benchmarks/batching.py api [--rounds 3] [--batch 4]
    .venv/bin/python benchmarks/batching.py cli [--rounds 2] [--old-src /work/main/src]

api: EfficientNet-Lite0 (the default model), CAMERAS at its default scales, four bundled
     photos resized to one size (451 x 300, so one model-input size): ms per image at
     batch 1 (four calls) and at batch --batch (one call), in alternating rounds; the best
     round of each is kept. This is the figure ``--batch-size auto`` keeps for the CPU
     (``cameras.run.batching.CPU_BATCH_SIZE``).
cli: ``cameras explain FOLDER`` on 12 photos of mixed sizes (the seven bundled photos and
     five resized copies), with the code in --old-src (the defaults before look-ahead
     batching), with this checkout's defaults, and with this checkout at --batch-size 4,
     alternating; images/s over the whole command (start-up included).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from photo_sets import bundled_photos

ROOT = Path(__file__).resolve().parent.parent


def measure_api(rounds: int, batch: int) -> None:
    import torch

    import cameras

    model, prep, _ = cameras.load_model()
    method = cameras.CAMERAS(model)
    photos = list(bundled_photos().values())[:batch]
    x = torch.stack([prep(photo.convert("RGB").resize((451, 300))) for photo in photos])
    method(x[:1])  # warm up (the memory probe, first-call allocations)
    best = {1: float("inf"), batch: float("inf")}
    for _ in range(rounds):
        for size in (1, batch):
            started = time.perf_counter()
            for first in range(0, len(x), size):
                method(x[first : first + size])
            best[size] = min(best[size], (time.perf_counter() - started) / len(x))
    print(f"input {tuple(x.shape[1:])}, scales {method.scales_for(*x.shape[2:])}")
    for size, seconds in best.items():
        print(f"batch {size}: {1000 * seconds:.0f} ms per image ({1 / seconds:.3f} images/s)")
    print(f"batch {batch} / batch 1 time: {best[batch] / best[1]:.2f}x")


def mixed_folder(folder: Path) -> list[Path]:
    """12 photos of mixed sizes: the seven bundled ones and five resized copies."""
    photos = bundled_photos()
    paths = []
    for name, photo in photos.items():
        paths.append(folder / f"{name}.png")
        photo.convert("RGB").save(paths[-1])
    resized = [(451, 300), (451, 300), (300, 451), (640, 427), (451, 300)]
    for name, size in zip(list(photos)[:5], resized, strict=True):
        paths.append(folder / f"{name}_{size[0]}x{size[1]}.png")
        photos[name].convert("RGB").resize(size).save(paths[-1])
    return paths[:12]


def measure_cli(rounds: int, old_src: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "photos"
        folder.mkdir()
        count = len(mixed_folder(folder))
        new = str(ROOT / "src")
        runs = {
            "old default": (old_src, []),
            "new default": (new, []),
            "new, --batch-size 4": (new, ["--batch-size", "4"]),
        }
        best = {name: float("inf") for name in runs}
        for round_number in range(rounds):
            for number, (name, (source, options)) in enumerate(runs.items()):
                out = Path(work) / f"out-{round_number}-{number}"
                command = [sys.executable, "-m", "cameras", "explain", str(folder)]
                command += ["--out", str(out), *options]
                environment = {**os.environ, "PYTHONPATH": source}
                started = time.perf_counter()
                subprocess.run(command, env=environment, check=True, capture_output=True)
                seconds = time.perf_counter() - started
                best[name] = min(best[name], seconds)
                print(f"round {round_number + 1}, {name}: {seconds:.1f} s", flush=True)
        print(f"cameras explain FOLDER, {count} photos of mixed sizes, best of {rounds}")
        for name, seconds in best.items():
            print(f"{name}: {seconds:.1f} s, {count / seconds:.3f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["api", "cli"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--old-src", default="/work/main/src")
    args = parser.parse_args()
    if args.part == "api":
        measure_api(args.rounds, args.batch)
    else:
        measure_cli(args.rounds, args.old_src)


if __name__ == "__main__":
    main()

"""How far float16 / bfloat16 maps are from float32 maps, and what they cost, per method.

    python benchmarks/half_precision.py [--device cpu|cuda] [--size 64x96] [--scales 64,96]

A copy of the default model (EfficientNet-Lite0) is cast to each dtype and explains the
bundled chelsea photo; each method's map is compared with the float32 model's map: max
abs difference, correlation, and the time ratio against float32 (measured in this run).
The figures quoted in README "Reliability" come from the defaults on the CPU.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import photo_batch  # noqa: E402

import cameras  # noqa: E402
from cameras.methods import METHODS  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="64x96", help="input height x width")
    parser.add_argument("--scales", default="64,96", help="CAMERAS's scales")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    scales = [int(s) for s in args.scales.split(",")]
    model, _, _ = cameras.load_model(device=args.device)
    x = photo_batch(("chelsea",), size=(height, width)).to(args.device)

    maps: dict[tuple[str, torch.dtype], torch.Tensor] = {}
    seconds: dict[tuple[str, torch.dtype], float] = {}
    for dtype in DTYPES:
        copy_ = copy.deepcopy(model).to(dtype)
        for name, cls in METHODS.items():
            method = cls(copy_, scales=scales) if name == "cameras" else cls(copy_)
            method(x)  # warm-up: kernels for this dtype and size
            start = time.perf_counter()
            maps[name, dtype] = method(x).maps.float().cpu()
            seconds[name, dtype] = time.perf_counter() - start

    print(f"{'method':10} {'dtype':15} {'max abs diff':>12} {'correlation':>11} {'time x':>7}")
    for name in METHODS:
        reference = maps[name, torch.float32].flatten()
        for dtype in DTYPES[1:]:
            current = maps[name, dtype].flatten()
            difference = float((current - reference).abs().max())
            correlation = float(torch.corrcoef(torch.stack([current, reference]))[0, 1])
            ratio = seconds[name, dtype] / seconds[name, torch.float32]
            print(f"{name:10} {str(dtype):15} {difference:12.4f} {correlation:11.4f} {ratio:7.1f}")


if __name__ == "__main__":
    main()

"""CAMERAS against the batched no-grad forward floor, on a GPU (or the CPU), in one run.

    python benchmarks/gpu_check.py                      # CUDA when present: the full table
    python benchmarks/gpu_check.py --device cpu --quick # CI-sized (< 60 s), same columns

Measured side by side, one markdown table per part:

1. ms per image of a CAMERAS call and of its floor, the model's batched no-grad forward
   at the same scales (same precision and layout), and their ratio; the fusion's share
   of the call's time; peak memory (``torch.cuda.max_memory_allocated`` on CUDA, the
   process's peak RSS on the CPU). ResNet-50 (torchvision, random weights: timing only)
   at batch 1/16/32 in fp32, bf16 (``precision="bf16"``) and bf16 + channels_last,
   EfficientNet-Lite0 (``cameras.load_model()``) and, on CUDA or with ``--vit``, a
   ViT-B/16 (timm ``vit_base_patch16_224``, random weights).
2. ``cameras explain`` on a folder of mixed-size photos (resized copies of the bundled
   photos) against the API's batched throughput on the same photos.
3. CUDA only: CAMERAS maps on CUDA against the CPU (cuDNN TF32 on and off).

``--quick`` uses 96 x 96 inputs, two scales, batches 1 and 2 and 4 photos at one scale:
numbers to check that everything runs, not to quote. On the CPU every time is the
process's CPU time (its children's for the CLI), so that other work on shared cores
does not inflate it; on CUDA, wall-clock time.
"""

from __future__ import annotations

import argparse
import copy
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

import cameras
import cameras.methods.cameras as cameras_module
from cameras.core.precision import autocast_for
from cameras.methods import build_method
from cameras.methods.cameras import resize_to_scale


@dataclass(frozen=True)
class Row:
    """One model, batch, precision and layout: seconds are per call of ``batch`` images."""

    model: str
    batch: int
    precision: str
    layout: str
    call_s: float  # one CAMERAS call
    floor_s: float  # the batched no-grad forward at the same scales
    fusion_s: float  # the fusion's part of a call (timed in a separate call)
    fused_call_s: float  # that separate call's time
    peak_mib: float

    @property
    def ms_per_image(self) -> float:
        return 1000 * self.call_s / self.batch

    @property
    def floor_ms_per_image(self) -> float:
        return 1000 * self.floor_s / self.batch

    @property
    def ratio(self) -> float:
        return self.call_s / self.floor_s

    @property
    def fusion_share(self) -> float:
        return self.fusion_s / self.fused_call_s


@dataclass(frozen=True)
class FolderRow:
    """The CLI on a folder of photos against the API's batched calls on the same photos."""

    photos: int
    startup_s: float  # the CLI on one photo: start-up, model load, one map
    cli_s: float  # the CLI on all photos, less the start-up run
    api_s: float  # the API, photos grouped by size into batches

    @property
    def cli_ms_per_image(self) -> float:
        return 1000 * self.cli_s / (self.photos - 1)

    @property
    def api_ms_per_image(self) -> float:
        return 1000 * self.api_s / self.photos

    @property
    def throughput_ratio(self) -> float:
        """The CLI's throughput as a fraction of the API's (1 = as fast)."""
        return self.api_ms_per_image / self.cli_ms_per_image


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> Callable[[], float]:
    """Wall-clock seconds on CUDA; on the CPU the process's CPU seconds (all its threads),
    which other processes sharing the cores do not inflate as they do wall-clock time."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def seconds(
    run: Callable[[], object], device: torch.device, repeats: int, warm_up: bool = True
) -> float:
    """Mean seconds of ``run``, after one warm-up call (kernels, caches, the layer probe)
    unless the same call has just run."""
    now = clock(device)
    if warm_up:
        run()
    synchronize(device)
    start = now()
    for _ in range(repeats):
        run()
    synchronize(device)
    return (now() - start) / repeats


def floor_call(model, x: torch.Tensor, scales: Sequence[int], precision: str) -> Callable:
    """One plain batched forward per scale, no gradient: the least an exact CAMERAS runs."""

    @torch.no_grad()
    def run():
        with autocast_for(precision, x.device):
            for scale in scales:
                model(resize_to_scale(x, scale))

    return run


@contextmanager
def fusion_timer(device: torch.device, spent: list[float]):
    """Time every fusion of the calls in the block (synchronised around it on CUDA)."""
    original = cameras_module.fuse_scales

    now = clock(device)

    def timed(*args, **kwargs):
        synchronize(device)
        start = now()
        maps = original(*args, **kwargs)
        synchronize(device)
        spent.append(now() - start)
        return maps

    cameras_module.fuse_scales = timed
    try:
        yield
    finally:
        cameras_module.fuse_scales = original


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # kB on Linux


def measure(
    label: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    scales: Sequence[int],
    precision: str = "fp32",
    channels_last: bool = False,
    repeats: int = 3,
) -> Row:
    """One row: CAMERAS on the batch ``x`` against its floor, with the fusion's share."""
    device = x.device
    if channels_last:  # a converted copy: the other rows keep the NCHW model
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    method = build_method("cameras", model, scales=list(scales), precision=precision)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    call_s = seconds(lambda: method(x), device, repeats)
    peak = peak_mib(device)
    # Warmed up too: a no-grad pass picks kernels of its own on its first run.
    floor_s = seconds(floor_call(model, x, scales, precision), device, repeats)
    spent: list[float] = []
    with fusion_timer(device, spent):
        fused_call_s = seconds(lambda: method(x), device, 1, warm_up=False)
    return Row(
        label,
        x.shape[0],
        precision,
        "channels_last" if channels_last else "NCHW",
        call_s,
        floor_s,
        spent[-1],
        fused_call_s,
        peak,
    )


def model_table(rows: Sequence[Row]) -> str:
    lines = [
        "| model | batch | precision | layout | CAMERAS ms/image | floor ms/image | "
        "x floor | fusion share | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.batch} | {r.precision} | {r.layout} | {r.ms_per_image:.1f} | "
            f"{r.floor_ms_per_image:.1f} | {r.ratio:.2f}x | {r.fusion_share:.1%} | "
            f"{r.peak_mib:.0f} |"
        )
    return "\n".join(lines)


def folder_table(row: FolderRow) -> str:
    return "\n".join(
        [
            "| photos | CLI start-up s | CLI ms/image after start-up | API batched ms/image "
            "| CLI throughput / API |",
            "|---|---|---|---|---|",
            f"| {row.photos} | {row.startup_s:.1f} | {row.cli_ms_per_image:.1f} | "
            f"{row.api_ms_per_image:.1f} | {row.throughput_ratio:.2f}x |",
        ]
    )


# ---------------------------------------------------------------- the parts


def model_rows(device: torch.device, quick: bool, vit: bool) -> list[Row]:
    import torchvision

    size = 96 if quick else 224
    scales = [size, size * 3 // 2] if quick else cameras.default_scales(size)
    batches = (1, 2) if quick else (1, 16, 32)
    repeats = 1 if quick else 5
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50().eval().to(device)
    lite, _, _ = cameras.load_model(device=device)

    def batch(n: int) -> torch.Tensor:
        return torch.randn(n, 3, size, size, device=device)

    largest = batches[-1]
    rows = [measure("ResNet-50", resnet, batch(n), scales, repeats=repeats) for n in batches]
    rows.append(measure("ResNet-50", resnet, batch(largest), scales, "bf16", repeats=repeats))
    rows.append(measure("ResNet-50", resnet, batch(largest), scales, "bf16", True, repeats=repeats))
    for precision in ("fp32", "bf16"):
        rows.append(
            measure("EfficientNet-Lite0", lite, batch(largest), scales, precision, repeats=repeats)
        )
    if vit:
        import timm

        model = timm.create_model("vit_base_patch16_224", pretrained=False).eval().to(device)
        for precision in ("fp32", "bf16"):
            rows.append(
                measure("ViT-B/16", model, batch(largest), scales, precision, repeats=repeats)
            )
    return rows


def photo_folder(folder: Path, count: int) -> list[Path]:
    """``count`` photos of mixed sizes: the bundled photos, resized (JPEG)."""
    from PIL import Image
    from skimage import data

    names = ("chelsea", "coffee", "astronaut", "rocket")
    sizes = ((320, 240), (400, 300), (300, 400), (500, 375), (256, 256), (448, 336))
    paths = []
    for i in range(count):
        image = Image.fromarray(getattr(data, names[i % len(names)])())
        path = folder / f"photo{i:03d}.jpg"
        image.convert("RGB").resize(sizes[(i // len(names)) % len(sizes)]).save(path)
        paths.append(path)
    return paths


def cli_seconds(paths: Sequence[Path], out: Path, options: Sequence[str], cuda: bool) -> float:
    """The CLI's seconds: wall-clock with CUDA, else its CPU seconds (as ``clock``)."""
    command = [sys.executable, "-m", "cameras", "explain", *map(str, paths), "--out", str(out)]
    start = time.perf_counter() if cuda else _children_cpu_seconds()
    subprocess.run([*command, *options], check=True, capture_output=True)
    return (time.perf_counter() if cuda else _children_cpu_seconds()) - start


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def api_seconds(paths: Sequence[Path], device: torch.device, scales, batch_size: int) -> float:
    """The API on the same photos: opened, grouped by input size, explained in batches."""
    session = cameras.Session.load(device=str(device), scales=scales)
    inputs = [session.open(path)[1] for path in paths]
    groups: dict[tuple[int, int], list[torch.Tensor]] = {}
    for x in inputs:
        groups.setdefault(tuple(x.shape[2:]), []).append(x)
    batches = [
        torch.cat(group[i : i + batch_size]).to(device)
        for group in groups.values()
        for i in range(0, len(group), batch_size)
    ]
    session.explain(batches[0][:1])  # warm-up: the layer probe, kernels
    now = clock(device)
    synchronize(device)
    start = now()
    for x in batches:
        session.explain(x)
    synchronize(device)
    return now() - start


def folder_row(device: torch.device, quick: bool) -> FolderRow:
    count = 4 if quick else 48
    scales = [224] if quick else None
    options = ["--device", device.type]
    if scales:
        options += ["--scales", ",".join(map(str, scales))]
    with tempfile.TemporaryDirectory() as tmp:
        paths = photo_folder(Path(tmp), count)
        cuda = device.type == "cuda"
        startup = cli_seconds(paths[:1], Path(tmp) / "one", options, cuda)
        total = cli_seconds(paths, Path(tmp) / "all", options, cuda)
        api = api_seconds(paths, device, scales, batch_size=4 if quick else 16)
    return FolderRow(count, startup, max(total - startup, 1e-9), api)


def cuda_agreement() -> list[str]:
    """Max |CUDA - CPU| of CAMERAS maps, and whether targets and kept scales agree."""
    import torchvision
    from PIL import Image
    from skimage import data

    lines = []
    model, prep, _ = cameras.load_model()
    x = prep(Image.fromarray(data.chelsea()))[None]
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50().eval()
    for label, net, inp in (
        ("EfficientNet-Lite0, chelsea", model, x),
        ("ResNet-50 (random), batch of 2", resnet, torch.randn(2, 3, 224, 224)),
    ):
        cpu = cameras.CAMERAS(net.cpu())(inp)
        for tf32 in (True, False):
            torch.backends.cudnn.allow_tf32 = tf32
            gpu = cameras.CAMERAS(net.cuda())(inp.cuda())
            diff = (gpu.maps.cpu() - cpu.maps).abs().max().item()
            same = gpu.targets == cpu.targets and [[s.kept for s in r] for r in gpu.scales] == [
                [s.kept for s in r] for r in cpu.scales
            ]
            lines.append(
                f"- {label}, cuDNN TF32 {'on' if tf32 else 'off'}: max |CUDA - CPU| = "
                f"{diff:.1e}, same targets and kept scales: {same}"
            )
        torch.backends.cudnn.allow_tf32 = True
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="CI-sized: small and few")
    parser.add_argument("--vit", action="store_true", help="ViT-B/16 also off CUDA")
    parser.add_argument("--no-cli", action="store_true", help="skip the folder part")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    start = time.perf_counter()
    print(model_table(model_rows(device, args.quick, args.vit or device.type == "cuda")))
    if not args.no_cli:
        print()
        print(folder_table(folder_row(device, args.quick)))
    if device.type == "cuda":
        print()
        print("\n".join(cuda_agreement()))
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()

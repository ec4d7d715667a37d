"""Shared by the speed benchmarks: each variant in its own process, rounds interleaved.

A benchmark script calls itself with ``--child VARIANT`` for one measurement, which
prints one JSON line ``{"time": s, "rss_mib": ..., "gpu_mib": ...}``; ``best_of_rounds``
keeps each variant's best time and largest peak memory over the rounds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def arguments(description: str, rounds: int) -> argparse.Namespace:
    """--device, --rounds, --repeats and the hidden --child of a speed benchmark."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=rounds, help="processes per variant")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed runs per process (first is warm-up)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


def measure(job: Callable[[], object], device: str, repeats: int) -> None:
    """Time ``job`` ``repeats`` times in this (child) process and print the JSON line:
    the best time after the warm-up run, peak RSS and, on CUDA, peak GPU memory."""
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        job()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    print(json.dumps({"time": min(times[1:] or times), "rss_mib": rss, "gpu_mib": gpu_peak}))


def best_of_rounds(
    script: str, variants: list[str], device: str, repeats: int, rounds: int
) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for round_index in range(rounds):
        for variant in variants:
            command = [sys.executable, script, "--child", variant, "--device", device]
            command += ["--repeats", str(repeats)]
            line = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(line.strip().splitlines()[-1])
            print(f"round {round_index + 1} {variant:8s} {result}", file=sys.stderr)
            kept = best.setdefault(variant, result)
            kept["time"] = min(kept["time"], result["time"])
            kept["rss_mib"] = max(kept["rss_mib"], result["rss_mib"])
    return best


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} threads"


def print_variants(best: dict[str, dict], variants: list[str], device: str) -> None:
    """One line per variant: best time, peak RSS (and peak GPU memory on CUDA)."""
    print(
        f"{'variant':10s} {'time s':>8s} {'peak RSS MiB':>13s}"
        + ("  peak GPU MiB" if device == "cuda" else "")
    )
    for variant in variants:
        r = best[variant]
        gpu = f"  {r['gpu_mib']:12.0f}" if r["gpu_mib"] is not None else ""
        print(f"{variant:10s} {r['time']:8.3f} {r['rss_mib']:13.0f}{gpu}")

"""Shared by the speed benchmarks: each variant in its own process, rounds interleaved.

A benchmark script calls itself with ``--child VARIANT`` for one measurement, which
prints one JSON line ``{"time": s, "rss_mib": ..., "gpu_mib": ...}``; ``best_of_rounds``
keeps each variant's best time and largest peak memory over the rounds.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch


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

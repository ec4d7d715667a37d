"""Peak memory of ``cameras explain`` on the extreme inputs of issue 10.

Each case runs the CLI in its own process; a watchdog polls the resident memory of that
process and its children (summed, every 50 ms) and kills the tree past ``--kill-gb``, so
the unbounded code of before can be measured without taking the machine down::

    python benchmarks/memory_peaks.py                  # this checkout (PYTHONPATH=src)
    python benchmarks/memory_peaks.py --src /tmp/old/src --kill-gb 6

Prints one line per case: the peak RSS of the tree in MB (or ">N GB, killed"), the
largest single process's own peak (VmHWM; what the tests assert), the wall time and the
exit code.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_inputs(folder: Path) -> dict[str, Path]:
    """The extreme inputs: a 10000 x 50 noise PNG, a normal photo, a 12000 x 12000 1-bit PNG."""
    from skimage import data

    rng = np.random.default_rng(0)
    wide = folder / "wide.png"
    Image.fromarray(rng.integers(0, 256, (50, 10000, 3), dtype=np.uint8)).save(wide)
    photo = folder / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(photo)
    huge = folder / "huge.png"
    bits = np.zeros((12000, 12000), dtype=bool)
    bits[3000:9000, 3000:9000] = True  # a white square on black: compresses to a few KB
    Image.fromarray(bits).save(huge)
    return {"wide": wide, "photo": photo, "huge": huge}


CASES = [
    ("10000x50 PNG, default scales", "wide", []),
    ("10000x50 PNG, --scales 224", "wide", ["--scales", "224"]),
    ("normal photo, --scales 5000", "photo", ["--scales", "5000"]),
    ("12000x12000 1-bit PNG, --scales 224", "huge", ["--scales", "224"]),
]


def tree_rss(pid: int, high_water: dict[int, int] | None = None) -> int:
    """Bytes resident in process ``pid`` and all its descendants; ``high_water`` collects
    each process's own peak (VmHWM) by pid."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                    elif line.startswith("VmHWM:") and high_water is not None:
                        high_water[current] = int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    stack.extend(int(c) for c in children.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run_case(command: list[str], env: dict, kill_bytes: int, timeout: float):
    start = time.monotonic()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    peak, killed, high_water = 0, False, {}
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid, high_water))
        if peak > kill_bytes or time.monotonic() - start > timeout:
            killed = True
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    output = process.communicate()[0].decode(errors="replace")
    largest = max(high_water.values(), default=0)
    return peak, largest, killed, time.monotonic() - start, process.returncode, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", default="src", help="the cameras source folder to run")
    parser.add_argument("--kill-gb", type=float, default=6.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(Path(args.src).resolve()))
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp))
        for label, name, extra in CASES:
            out = Path(tmp) / f"out-{name}-{len(extra)}"
            command = [sys.executable, "-m", "cameras", "explain", str(inputs[name]), "--out"]
            command += [str(out), *extra]
            peak, largest, killed, wall, code, output = run_case(
                command, env, int(args.kill_gb * 2**30), args.timeout
            )
            shown = f">{args.kill_gb:g} GB, killed" if killed else f"{peak / 2**20:.0f} MB"
            one = f"{largest / 2**20:.0f} MB"
            last = output.strip().splitlines()[-1][:150] if output.strip() else ""
            print(
                f"{label:38s} tree {shown:>16s}  largest process {one:>8s}  {wall:6.1f} s  "
                f"exit {code}  | {last}"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()

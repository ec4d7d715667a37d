"""The web page's bounds (README "Reliability"): large uploads are worked on at most
``WORK_SIDE`` a side, a new opacity writes no map again, and SIGTERM removes the page's
temporary folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import PEAK_LIMIT_BYTES, PRINT_PEAK
from PIL import Image

from cameras import web

SRC = Path(__file__).resolve().parents[1] / "src"


def test_the_working_copy_of_a_large_photo():
    small = Image.new("RGB", (300, 200))
    assert web.working_copy(small) is small
    tall = Image.new("RGB", (3000, 8000), (10, 200, 30))
    copy = web.working_copy(tall)
    assert copy.size == (768, 2048)
    assert copy.getpixel((5, 5)) == (10, 200, 30)


# A child process: an 8000 x 8000 upload, explained with Grad-CAM, then a new opacity;
# prints what was written and the largest resident set.
_UPLOAD = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
import cameras
from cameras import web
folder = Path(sys.argv[1])
pixels = np.zeros((8000, 8000, 3), np.uint8)
pixels[1000:7000, 2000:6000] = (200, 120, 40)
Image.fromarray(pixels).save(folder / "big.png")
del pixels
session = cameras.Session.load()
folders = web.ResultFolders()
page = web.handle_upload(session, str(folder / "big.png"))
print("STATUS", page["status"])
state, choice = page["state"], page["choice"]
done = web.handle_explain(session, state, choice, ["gradcam"], "fewer", 0.5, folders)
print("MAP", np.load(done["files"][1]).shape)
maps_before = sorted(folders.root.rglob("*.npy"))
again = web.handle_opacity(done["done"], 0.2, folders)
maps_after = sorted(folders.root.rglob("*.npy"))
print("MAPS", len(maps_before), len(maps_after), again["files"][1] == done["files"][1])
print("OVERLAY", Image.open(again["files"][0]).size)
"""
_UPLOAD += PRINT_PEAK


def test_an_8000_pixel_upload_is_bounded(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC), TMPDIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", _UPLOAD, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert lines["STATUS"].startswith("**big.png**: 8000 x 8000 px, maps at 2048 x 2048.")
    assert lines["MAP"] == "(2048, 2048)"
    assert lines["MAPS"] == "1 1 True"  # the opacity change wrote no map
    assert lines["OVERLAY"] == "(2048, 2048)"
    peak = int(lines["PEAK_KB"]) * 1024
    print(f"8000 x 8000 upload: peak {peak / 2**20:.0f} MB")
    assert peak < PEAK_LIMIT_BYTES, f"peak {peak / 2**20:.0f} MB"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sigterm_removes_the_pages_temporary_folder(tmp_path):
    pytest.importorskip("gradio")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(SRC), TMPDIR=str(tmp_path))
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    server = subprocess.Popen(
        [sys.executable, "-m", "cameras", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        assert server.poll() is None, server.stderr.read()
        folders = list(tmp_path.glob("cameras-web-*"))
        assert len(folders) == 1 and folders[0].is_dir()
        (folders[0] / "result").mkdir()  # what an explanation leaves there
        np.save(folders[0] / "result" / "map.npy", np.zeros((64, 64), np.float32))
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert code == 0, server.stderr.read()
    assert not list(tmp_path.glob("cameras-web-*"))

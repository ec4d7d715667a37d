"""The memory budget (cameras.core.budget, README "Reliability"): the aspect cap, the refusal
that says what fits, overlays built in bands, the pixel cap on decoded images, and the
peak memory of the extreme inputs, watched in a child process."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PEAK_LIMIT_BYTES, PRINT_PEAK, TinyNet
from matplotlib import colormaps
from PIL import Image

import cameras
from cameras.apps import viz
from cameras.core import budget, images
from cameras.core.budget import MAX_ASPECT, MemoryBudgetError, nominal_side
from cameras.methods.cameras import default_scales, resized_size

# PEAK_LIMIT_BYTES (helpers) bounds any process of a `cameras explain` run on the extreme
# inputs below. The watchdog stops a run (the old code's) that goes far past it.
KILL_BYTES = 5 * 2**30
SRC = Path(__file__).resolve().parents[1] / "src"


# --- the aspect cap -----------------------------------------------------------------------


def test_ordinary_inputs_keep_the_papers_sizes():
    assert resized_size(300, 451, 224) == (224, 337)
    assert resized_size(224, 896, 924) == (924, 3696)  # 4:1 is still resized exactly
    assert nominal_side(224, 337) == 224 and nominal_side(896, 224) == 224
    _, prep, _ = cameras.load_model("resnet18", pretrained=False)
    assert prep.resized_size(451, 300) == (337, 224)


def test_a_thin_strip_is_capped_at_every_scale():
    """A 10000 x 50 photo: the model input and every scale hold about 4 * s**2 pixels
    (aspect kept), where the old rule made them 224 x 44800 and up to 924 x 184800."""
    _, prep, _ = cameras.load_model("resnet18", pretrained=False)
    width, height = prep.resized_size(10000, 50)
    assert (height, width) == (32, 6336)
    assert abs(width / height - 200) < 200 * 0.02
    assert nominal_side(height, width) == 225
    method = cameras.CAMERAS(TinyNet().eval(), layer="features")
    assert method.scales_for(height, width) == default_scales(225)  # 225, 325, ..., 928
    # The first and the last of the default scales (all eight cost 4 times as long).
    method.scales = [225, 928]
    result = method(torch.randn(1, 3, height, width))
    for record in result.scales[0]:
        h, w = record.size
        assert h * w <= MAX_ASPECT * record.scale**2 * 1.02
        assert abs(w / h - 200) < 200 * 0.1
    assert result.scales[0][0].size == (32, 6336)  # the input as it is
    assert result.scales[0][-1].size == (132, 26116)  # 3.4 million pixels, not 171 million
    assert tuple(result.maps.shape) == (1, height, width)


# --- the budget ---------------------------------------------------------------------------


def test_a_call_over_the_budget_is_refused_and_says_what_fits(monkeypatch):
    monkeypatch.setenv("CAMERAS_MEMORY_GB", "0.005")
    model = TinyNet().eval()
    x = torch.randn(1, 3, 64, 96)
    refused = cameras.CAMERAS(model, layer="features", scales=[64, 5000])
    with pytest.raises(MemoryBudgetError) as caught:
        refused(x)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("scale 5000 (5000 x 7500 pixels) needs about ")
    assert "over the memory budget of 5.12 MB (CAMERAS_MEMORY_GB); scales up to about " in message
    fits = int(message.rsplit("scales up to about ", 1)[1].split()[0])
    assert 64 < fits < 5000
    # The figure is right: that scale runs, a little more is refused.
    cameras.CAMERAS(model, layer="features", scales=[64, fits])(x)
    with pytest.raises(MemoryBudgetError):
        cameras.CAMERAS(model, layer="features", scales=[64, int(fits * 1.1)])(x)
    monkeypatch.setenv("CAMERAS_MEMORY_GB", "40")
    assert refused(x).maps.shape == (1, 64, 96)  # a larger budget lets it run


def test_the_budget_is_per_image_so_a_batch_is_not_refused(monkeypatch):
    """A scale that fits for one image also runs for a batch of eight (the batch size is
    the caller's choice; README: "a batch of B images may use B times it")."""
    monkeypatch.setenv("CAMERAS_MEMORY_GB", "0.005")
    model = TinyNet().eval()
    x = torch.randn(8, 3, 64, 96)
    probe = cameras.CAMERAS(model, layer="features", scales=[64, 5000])
    with pytest.raises(MemoryBudgetError) as caught:
        probe(x[:1])
    fits = int(str(caught.value).rsplit("scales up to about ", 1)[1].split()[0])
    one = cameras.CAMERAS(model, layer="features", scales=[64, fits])
    batch = one(x).maps
    assert batch.shape == (8, 64, 96)
    torch.testing.assert_close(batch[3], one(x[3:4]).maps[0], atol=1e-5, rtol=0)


def test_a_baseline_on_a_huge_input_is_refused_before_its_pass(monkeypatch):
    monkeypatch.setenv("CAMERAS_MEMORY_GB", "0.005")
    method = cameras.GradCAM(TinyNet().eval(), layer="features")
    with pytest.raises(MemoryBudgetError, match=r"^scale 2000 \(2000 x 3000 pixels\) needs"):
        method(torch.zeros(1, 3, 2000, 3000))
    assert method(torch.randn(1, 3, 64, 96)).maps.shape == (1, 64, 96)


@pytest.mark.parametrize("text", ["lots", "-1", "0", "nan"])
def test_a_bad_budget_variable_is_named(monkeypatch, text):
    monkeypatch.setenv("CAMERAS_MEMORY_GB", text)
    with pytest.raises(ValueError, match=f"CAMERAS_MEMORY_GB={text!r}: expected a positive"):
        budget.budget_bytes()


def test_the_estimate_bounds_a_real_pass():
    """The probe's estimate of one pass is no less than the tensors the pass really
    holds at once: each module's input and output (lower bound, measured by hooks)."""
    model = TinyNet().eval()
    small, large = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 320, 480)
    cost = budget.probe_pass_cost(model, model.features, small)
    measured = budget.probe_pass_cost(model, model.features, large)
    pixels = 320 * 480
    assert cost.scale_bytes(pixels) >= measured.forward * pixels
    assert cost.forward == pytest.approx(measured.forward, rel=0.05)


# --- overlays and maps of large photos ----------------------------------------------------


def _old_overlay(pixels: np.ndarray, saliency: np.ndarray, cmap: str, alpha: float):
    rgba = colormaps[cmap](np.clip(saliency, 0.0, 1.0))
    colours = (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8).astype(np.float32)
    blended = (1.0 - alpha) * pixels.astype(np.float32) + alpha * colours
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("cmap", ["jet", "viridis", "gray"])
def test_overlay_in_bands_equals_the_whole_image_formula(monkeypatch, cmap):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    saliency = rng.random((37, 53)).astype(np.float32)
    saliency[0, :4] = [0.0, 1.0, 0.5, 255 / 256]
    expected = _old_overlay(pixels, saliency, cmap, 0.35)
    monkeypatch.setattr(viz, "BAND_PIXELS", 53 * 5)  # bands of 5 rows, the last one of 2
    from_array = viz.overlay(pixels, saliency, cmap, 0.35)
    from_image = viz.overlay(Image.fromarray(pixels).convert("P"), saliency, cmap, 0.35)
    np.testing.assert_array_equal(np.asarray(from_array), expected)
    palette = np.asarray(Image.fromarray(pixels).convert("P").convert("RGB"))
    np.testing.assert_array_equal(
        np.asarray(from_image), _old_overlay(palette, saliency, cmap, 0.35)
    )
    np.testing.assert_array_equal(
        viz.colorize(saliency, cmap),
        (colormaps[cmap](saliency)[..., :3] * 255 + 0.5).astype(np.uint8),
    )


def test_map_file_bytes_equal_numpy_save():
    for array in (np.random.default_rng(2).random((30, 41), dtype=np.float32), np.eye(3)[:, ::2]):
        saved = io.BytesIO()
        np.save(saved, array)
        assert bytes(viz.npy_bytes(array)) == saved.getvalue()


def test_images_over_the_pixel_cap_are_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("1", (300, 200)).save(path)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 300 * 200 - 1)
    with pytest.raises(images.ImageError) as caught:
        images.load_image(path)
    assert str(caught.value) == (
        f"{path}: 300 x 200 pixels is over the limit of 0.059999 million pixels"
    )
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 300 * 200)
    assert images.load_image(path).size == (300, 200)


# --- peak memory of the extreme cases, in a child process ---------------------------------


@pytest.fixture(scope="module")
def extreme_inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("extreme")
    rng = np.random.default_rng(0)
    wide = folder / "wide.png"  # 10000 x 50, 1.5 MB of noise
    Image.fromarray(rng.integers(0, 256, (50, 10000, 3), dtype=np.uint8)).save(wide)
    photo = folder / "chelsea.png"
    from skimage import data

    Image.fromarray(data.chelsea()).save(photo)
    huge = folder / "huge.png"  # 12000 x 12000, 1 bit a pixel: a few KB on disk
    bits = np.zeros((12000, 12000), dtype=bool)
    bits[3000:9000, 3000:9000] = True
    Image.fromarray(bits).save(huge)
    del bits
    return {"wide": wide, "photo": photo, "huge": huge}


# Runs the CLI in this child and prints the largest resident set of it and its children
# (decoding workers, the render process).
_CHILD = f"""
import sys
from cameras.cli import main
code = main(sys.argv[1:])
{PRINT_PEAK}
sys.exit(code)
"""


def _tree_rss(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                total += sum(int(ln.split()[1]) * 1024 for ln in status if ln.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    stack.extend(int(c) for c in children.read().split())
        except OSError:
            continue
    return total


def run_watched(arguments: list[str], timeout: float = 240.0) -> tuple[int, int, str]:
    """(exit code, peak RSS in bytes of the largest process, output) of ``cameras
    ARGUMENTS`` in a child process; a watchdog kills it past KILL_BYTES (the whole tree)
    or ``timeout`` seconds, and the test fails."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    env.pop("CAMERAS_MEMORY_GB", None)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, *arguments],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    start = time.monotonic()
    while child.poll() is None:
        over = _tree_rss(child.pid) > KILL_BYTES
        if over or time.monotonic() - start > timeout:
            child.kill()
            child.communicate()
            reason = f"over {KILL_BYTES / 2**30:g} GB" if over else f"over {timeout:g} s"
            pytest.fail(f"cameras {' '.join(arguments)}: killed, {reason}")
        time.sleep(0.05)
    output = child.communicate()[0].decode(errors="replace")
    peak = [line for line in output.splitlines() if line.startswith("PEAK_KB ")]
    assert peak, output
    peak_bytes = int(peak[-1].split()[1]) * 1024
    wall = time.monotonic() - start
    print(f"cameras {' '.join(arguments[2:])}: peak {peak_bytes / 2**20:.0f} MB, {wall:.1f} s")
    return child.returncode, peak_bytes, output


def _map_of(out: Path, stem: str, shape: tuple[int, int]) -> np.ndarray:
    saliency = np.load(out / f"{stem}_cameras.npy")
    assert saliency.shape == shape and saliency.dtype == np.float32
    assert 0.0 <= saliency.min() and saliency.max() <= 1.0
    return saliency


# The default scales of this strip run from 225 to 928; the peak is the largest pass
# plus the layer outputs kept, so its first and last scale bound it (all eight take four
# times as long; benchmarks/memory_peaks.py runs them).
@pytest.mark.parametrize("scales", ["224", "225,928"], ids=["one-scale", "largest-default"])
def test_a_thin_strip_is_explained_within_the_budget(extreme_inputs, tmp_path, scales, lite0):
    arguments = ["explain", str(extreme_inputs["wide"]), "--out", str(tmp_path)]
    code, peak, output = run_watched([*arguments, "--scales", scales])
    assert code == 0, output
    assert peak < PEAK_LIMIT_BYTES, f"peak {peak / 2**20:.0f} MB"
    saliency = _map_of(tmp_path, "wide", (50, 10000))
    assert Image.open(tmp_path / "wide_cameras.png").size == (10000, 50)
    if scales == "224":  # the library's own map of the capped input, at the photo's size
        model, prep, classes = lite0
        x = prep(Image.open(extreme_inputs["wide"]))[None]
        assert tuple(x.shape[2:]) == (32, 6336)
        expected = cameras.CAMERAS(model, scales=[224], class_names=classes)(x).maps[0]
        np.testing.assert_allclose(saliency, images.resize_map(expected, 50, 10000), atol=1e-4)


def test_a_scale_over_the_budget_is_refused_in_one_line(extreme_inputs, tmp_path):
    arguments = ["explain", str(extreme_inputs["photo"]), "--out", str(tmp_path)]
    code, peak, output = run_watched([*arguments, "--scales", "5000"], timeout=120)
    assert code == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert errors[0].startswith(
        f"error: {extreme_inputs['photo']}: scale 5000 (5000 x 7522 pixels) needs about "
    )
    assert "over the memory budget of 2 GB (CAMERAS_MEMORY_GB); scales up to about" in errors[0]
    assert peak < PEAK_LIMIT_BYTES, f"peak {peak / 2**20:.0f} MB"
    assert not list(tmp_path.glob("*.npy"))


def test_a_huge_photo_gets_its_map_and_overlay_within_the_budget(extreme_inputs, tmp_path):
    arguments = ["explain", str(extreme_inputs["huge"]), "--out", str(tmp_path)]
    code, peak, output = run_watched([*arguments, "--scales", "224"])
    assert code == 0, output
    assert peak < PEAK_LIMIT_BYTES, f"peak {peak / 2**20:.0f} MB"
    saliency = _map_of(tmp_path, "huge", (12000, 12000))
    del saliency
    with Image.open(tmp_path / "huge_cameras.png") as picture:
        assert picture.size == (12000, 12000) and picture.mode == "RGB"


def test_other_subcommands_refuse_over_the_budget_in_one_line(lite0, chelsea, tmp_path, capsys):
    """compare (like sanity, attack and evaluate) stops with one line and exit 2."""
    from cameras.cli import main

    photo = tmp_path / "chelsea.png"
    chelsea.save(photo)
    out = tmp_path / "figure.png"
    code = main(
        ["compare", str(photo), "--methods", "cameras", "--scales", "5000", "--out", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("cameras compare: error: scale 5000 (5000 x 7522 pixels) needs")
    assert not out.exists()

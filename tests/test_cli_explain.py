"""``cameras explain`` end to end, and every kind of bad input it must survive."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cameras.cli import main

FAST = ["--scales", "224,324"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture
def photos(tmp_path, chelsea, coffee) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    chelsea.save(folder / "chelsea.jpg", quality=92)
    coffee.save(folder / "coffee.png")
    return folder


def test_explain_writes_overlay_and_map_at_the_image_size(capsys, photos, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "explain", photos / "chelsea.jpg", "--out", out, *FAST)
    assert code == 0
    saliency = np.load(out / "chelsea_cameras.npy")
    assert saliency.dtype == np.float32 and saliency.shape == (300, 451)
    assert saliency.min() >= 0 and saliency.max() <= 1 and saliency.max() > 0.99
    with Image.open(out / "chelsea_cameras.png") as overlay:
        assert overlay.size == (451, 300)
    assert "top-5: Egyptian cat (285)" in stdout


def test_explain_a_folder_with_a_class_name_and_another_method(capsys, photos, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "explain", photos, "--method", "gradcam", "--out", out)
    assert code == 0
    top1 = np.load(out / "chelsea_gradcam.npy")
    code, stdout, _ = run(
        capsys, "explain", photos, "--class", "tabby", "--method", "gradcam", "--out", out
    )
    assert code == 0
    # A given class gets its own names: the top-1 maps written before are kept as they were.
    assert sorted(p.name for p in out.iterdir()) == [
        "chelsea_gradcam.npy",
        "chelsea_gradcam.png",
        "chelsea_gradcam_class281.npy",
        "chelsea_gradcam_class281.png",
        "coffee_gradcam.npy",
        "coffee_gradcam.png",
        "coffee_gradcam_class281.npy",
        "coffee_gradcam_class281.png",
    ]
    np.testing.assert_array_equal(np.load(out / "chelsea_gradcam.npy"), top1)
    assert not np.array_equal(np.load(out / "coffee_gradcam_class281.npy"), top1)
    assert stdout.count("gradcam map for tabby (281)") == 2


def test_one_broken_file_among_good_ones(capsys, photos, tmp_path):
    (photos / "broken.png").write_text("this is not an image")
    (photos / "empty.jpg").write_bytes(b"")
    good = (photos / "chelsea.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(good[: len(good) // 3])
    before = digest(photos)
    out = tmp_path / "out"
    code, _, err = run(capsys, "explain", photos, "--out", out, *FAST)
    assert code == 1
    assert f"{photos / 'broken.png'}: not an image" in err
    assert f"{photos / 'empty.jpg'}: empty file" in err
    assert f"{photos / 'truncated.jpg'}: unreadable image" in err
    assert (out / "chelsea_cameras.npy").exists() and (out / "coffee_cameras.npy").exists()
    assert not (out / "broken_cameras.npy").exists()
    assert digest(photos) == before, "an input file was changed"
    assert all(len(line) < 300 for line in err.splitlines() if line.startswith("error"))


def test_missing_path_is_reported_and_the_rest_runs(capsys, photos, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(
        capsys, "explain", tmp_path / "nope.jpg", photos / "coffee.png", "--out", out, *FAST
    )
    assert code == 1
    assert f"error: {tmp_path / 'nope.jpg'}: no such file or folder" in err
    assert (out / "coffee_cameras.npy").exists()


def test_out_pointing_at_the_input_folder_is_refused(capsys, photos):
    before = digest(photos)
    code, _, err = run(capsys, "explain", photos, "--out", photos, *FAST)
    assert code == 2
    assert "--out" in err and "input folder" in err
    assert digest(photos) == before


def test_output_never_overwrites_an_input(capsys, tmp_path, chelsea):
    folder = tmp_path / "mixed"
    folder.mkdir()
    chelsea.save(folder / "cat.jpg")
    chelsea.save(folder / "cat_cameras.png")  # an input that an output would be named after
    before = digest(folder)
    code, _, err = run(
        capsys, "explain", folder / "cat.jpg", folder / "cat_cameras.png", "--out", folder, *FAST
    )
    # cat.jpg's outputs take the next free name instead of replacing the input.
    assert code == 0
    assert digest(folder)["cat_cameras.png"] == before["cat_cameras.png"]
    assert np.load(folder / "cat-2_cameras.npy").shape == (300, 451)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--layer", "bn3"], "--layer: layer 'bn3' is not a module of the model; closest: bn2"),
        (
            ["--class", "5000"],
            "--class 5000: class 5000 is out of range: the model has 1000 classes (0 to 999)",
        ),
        (
            ["--class", "-3"],
            "--class -3: class -3 is out of range: the model has 1000 classes (0 to 999)",
        ),
        (["--class", "\u00b2"], "--class \u00b2: unknown class name '\u00b2'; no close match"),
        (["--class", " "], "--class  : empty class: give an index or a name"),
        (
            ["--class", "expresso"],
            "--class expresso: unknown class name 'expresso'; closest: espresso",
        ),
        (["--model", "resnet_50"], "--model resnet_50: unknown model 'resnet_50'"),
        (
            ["--method", "gradcat"],
            "--method: unknown method 'gradcat'; choose from cameras, gradcam",
        ),
        (["--alpha", "2"], "--alpha 2.0: must be between 0 and 1"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys, photos, tmp_path, argv, message):
    code, _, err = run(capsys, "explain", photos / "coffee.png", "--out", tmp_path / "o", *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_awkward_image_modes_give_correct_maps(capsys, tmp_path, coffee):
    folder = tmp_path / "modes"
    folder.mkdir()
    gray = coffee.convert("L")
    gray.save(folder / "gray.png")
    rgba = coffee.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "rgba.png")
    sixteen = (np.asarray(gray, dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(folder / "sixteen.png")
    # EXIF orientation 6: stored landscape, shown rotated 90 degrees (portrait).
    exif = Image.Exif()
    exif[0x0112] = 6
    coffee.save(folder / "rotated.jpg", exif=exif)
    out = tmp_path / "out"
    code, _, err = run(capsys, "explain", folder, "--out", out, *FAST)
    assert code == 0, err
    assert np.load(out / "gray_cameras.npy").shape == (400, 600)
    assert np.load(out / "rgba_cameras.npy").shape == (400, 600)
    assert np.load(out / "rotated_cameras.npy").shape == (600, 400)  # upright: portrait
    # 16-bit data is scaled to 8 bits, not clipped to white: same map as the 8-bit gray.
    assert (
        np.abs(np.load(out / "sixteen_cameras.npy") - np.load(out / "gray_cameras.npy")).max()
        < 1e-3
    )


def test_duplicate_stems_get_distinct_outputs(capsys, tmp_path, chelsea, coffee):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    chelsea.save(tmp_path / "a" / "x.jpg")
    coffee.save(tmp_path / "b" / "x.jpg")
    out = tmp_path / "out"
    code, _, _ = run(
        capsys, "explain", tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", "--out", out, *FAST
    )
    assert code == 0
    assert np.load(out / "x_cameras.npy").shape == (300, 451)
    assert np.load(out / "x-2_cameras.npy").shape == (400, 600)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_a_gpu_is_a_usage_error(capsys, photos, tmp_path):
    code, _, err = run(
        capsys, "explain", photos / "coffee.png", "--out", tmp_path / "o", "--device", "cuda"
    )
    assert code == 2
    assert err.strip() == "cameras explain: error: --device cuda: no CUDA device is available"


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "cameras", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    for command in ("explain", "compare", "evaluate", "sanity", "attack", "serve"):
        assert command in done.stdout

"""``cameras compare``: a comparison of real maps on a bundled photo, and the CLI end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import cameras
from cameras.apps.viz import (
    Panel,
    colorize,
    comparison_figure,
    difference_map,
    figure_size,
    figure_to_image,
    fit_height,
    panel_boxes,
    panel_image,
)
from cameras.cli import main

CLASSES = ["tabby", "Egyptian cat"]


@pytest.fixture(scope="module")
def chelsea_file(tmp_path_factory, chelsea):
    # PNG: lossless, so the CLI reads back exactly the pixels the test uses.
    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    chelsea.save(path)
    return path


@pytest.fixture(scope="module")
def two_class_maps(lite0, chelsea):
    """Grad-CAM and LayerCAM maps of chelsea for tabby and Egyptian cat, computed the way
    ``cameras compare`` does (one batch, one image per class)."""
    model, prep, classes = lite0
    x = prep(chelsea)[None].repeat(2, 1, 1, 1)
    return {
        name: cameras.METHODS[name](model, class_names=classes)(x, targets=CLASSES)
        for name in ("gradcam", "layercam")
    }


def test_comparison_of_real_maps(chelsea, two_class_maps):
    results = list(two_class_maps.values())
    rows = [[Panel(r.maps[i], f"{r.method}\n{CLASSES[i]}") for r in results] for i in range(2)]
    rows.append([Panel(difference_map(r.maps[0], r.maps[1]), signed=True) for r in results])
    figure = comparison_figure(chelsea, rows, alpha=1.0, panel_height=100)
    boxes = panel_boxes(figure)
    pixels = np.asarray(figure_to_image(figure)).astype(np.int16)
    # 451 x 300 photo -> 150 x 100 cells; a photo cell plus 3 rows x 2 methods.
    assert len([k for k in boxes if k.startswith("panel ")]) == 6
    assert all(
        boxes[k][2] - boxes[k][0] == 150 and boxes[k][3] - boxes[k][1] == 100
        for k in boxes
        if k.startswith(("panel", "photo"))
    )
    assert pixels.shape[:2][::-1] == figure_size(chelsea.size, rows, 100)
    # Each plain panel is the colour map of its own map (alpha 1), nearest to it of all.
    expected = {
        (i, j): colorize(
            cameras.core.images.resize_map(rows[i][j].saliency, 100, 150), "jet"
        ).astype(np.int16)
        for i in range(2)
        for j in range(2)
    }
    for i, j in expected:
        left, top, right, bottom = boxes[f"panel {i},{j}"]
        crop = pixels[top:bottom, left:right]
        errors = {k: np.abs(crop - other).mean() for k, other in expected.items()}
        assert errors[(i, j)] < 0.5
        assert min(e for k, e in errors.items() if k != (i, j)) > 5 * max(errors[(i, j)], 0.1)


def _compare(args, capsys):
    code = main(["compare", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_two_classes_with_difference(chelsea_file, chelsea, two_class_maps, tmp_path, capsys):
    out = tmp_path / "figure.png"
    code, stdout, stderr = _compare(
        [
            chelsea_file,
            "--methods",
            "gradcam,layercam,cameras",
            "--classes",
            ",".join(CLASSES),
            "--scales",
            "224,324",
            "--panel-height",
            "96",
            "--device",
            "cpu",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0, stderr
    assert str(out) in stdout and "tabby (281)" in stderr and "Egyptian cat (285)" in stderr
    # Layout: tabby row, Egyptian cat row, difference row; three methods.
    layout = [[Panel(np.zeros((2, 2)))] * 3] * 2 + [[Panel(np.zeros((2, 2)), signed=True)] * 3]
    with Image.open(out) as written:
        assert written.format == "PNG"
        assert written.size == figure_size(chelsea.size, layout, 96)
        pixels = np.asarray(written.convert("RGB")).astype(np.int16)
    boxes = panel_boxes(comparison_figure(chelsea, layout, panel_height=96))
    cell = fit_height(chelsea, 96)
    # The Grad-CAM and LayerCAM panels (columns 0 and 1) are the overlays of their own maps.
    for j, name in enumerate(["gradcam", "layercam"]):
        for i in range(2):
            left, top, right, bottom = boxes[f"panel {i},{j}"]
            own = np.asarray(panel_image(cell, Panel(two_class_maps[name].maps[i])))
            assert np.abs(pixels[top:bottom, left:right] - own).mean() < 1.0, (i, name)
    # The difference row: red (class 1) where the Grad-CAM difference is positive, blue
    # where it is negative, on a grey photo.
    diff = difference_map(two_class_maps["gradcam"].maps[0], two_class_maps["gradcam"].maps[1])
    diff = (
        cameras.core.images.resize_map(torch.from_numpy(diff + 1.0) / 2.0, 96, cell.width) * 2 - 1
    )
    left, top, right, bottom = boxes["panel 2,0"]
    # A grey photo has R == B, so R - B is the colour map's tint alone.
    tint = pixels[top:bottom, left:right, 0] - pixels[top:bottom, left:right, 2]
    assert np.corrcoef(tint.ravel(), diff.ravel())[0, 1] > 0.9
    assert np.abs(diff).max() > 0.05  # the classes do differ somewhere
    # The input is untouched.
    assert np.array_equal(np.asarray(Image.open(chelsea_file).convert("RGB")), np.asarray(chelsea))


def test_cli_models_use_their_own_top1(chelsea_file, chelsea, tmp_path, capsys):
    out = tmp_path / "models.png"
    names = ["efficientnet_lite0", "efficientnet_lite1"]
    code, _, stderr = _compare(
        [
            chelsea_file,
            "--models",
            ",".join(names),
            "--methods",
            "gradcam",
            "--device",
            "cpu",
            "--panel-height",
            "64",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0, stderr
    for name in names:
        model, prep, classes = cameras.load_model(name)
        with torch.no_grad():
            probabilities = model(prep(chelsea)[None]).softmax(1)[0]
        top1 = int(probabilities.argmax())
        assert f"{name}: {classes[top1]} ({top1}) p={float(probabilities[top1]):.3f}" in stderr
    layout = [[Panel(np.zeros((2, 2)))]] * 2  # one row per model, one method
    with Image.open(out) as written:
        assert written.size == figure_size(chelsea.size, layout, 64)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "gradcam,nope"], "unknown method 'nope'"),
        (["--methods", "gradcam,gradcam"], "listed twice"),
        (["--classes", "tabby,no such class"], "--classes no such class"),
        (["--classes", "5000"], "out of range"),
        (["--models", "efficientnet_lite0,efficientnet_lite9"], "--models efficientnet_lite9"),
        (["--cmap", "nope"], "--cmap nope"),
        (["--alpha", "1.5"], "--alpha 1.5"),
        (["--panel-height", "4"], "--panel-height 4"),
        (["--colors", "300"], "--colors 300"),
        (["--models", "efficientnet_lite0,efficientnet_lite1", "--weights", "w.pt"], "--weights"),
    ],
)
def test_cli_usage_errors(chelsea_file, tmp_path, capsys, extra, message):
    out = tmp_path / "figure.png"
    code, _, stderr = _compare([chelsea_file, "--methods", "gradcam", "--out", out, *extra], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cameras compare: error:"), stderr
    assert message in lines[0]
    assert not out.exists()


def test_cli_never_overwrites_the_input(chelsea_file, tmp_path, capsys):
    before = chelsea_file.read_bytes()
    for out in [
        chelsea_file,
        chelsea_file.parent / ".." / chelsea_file.parent.name / "chelsea.png",
    ]:
        code, _, stderr = _compare([chelsea_file, "--methods", "gradcam", "--out", out], capsys)
        assert code == 2 and "is the input image" in stderr
    code, _, stderr = _compare([chelsea_file, "--out", tmp_path / "figure.txt"], capsys)
    assert code == 2 and "--out" in stderr
    code, _, stderr = _compare([chelsea_file, "--out", tmp_path], capsys)
    assert code == 2 and "is a folder" in stderr
    assert chelsea_file.read_bytes() == before


def test_cli_unreadable_image(tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    for path, message in [(tmp_path / "missing.jpg", "no such file"), (broken, "not an image")]:
        code, _, stderr = _compare(
            [path, "--methods", "gradcam", "--out", tmp_path / "f.png"], capsys
        )
        assert code == 1
        assert stderr == f"error: {path}: {message}" + stderr.split(message, 1)[1]
        assert len(stderr.splitlines()) == 1
    assert not (tmp_path / "f.png").exists()

"""Overlays and comparison figures: sizes, colours, and that each panel shows its own map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cameras.apps.viz import (
    Panel,
    colorize,
    comparison_figure,
    difference_map,
    figure_size,
    figure_to_image,
    fit_height,
    overlay,
    panel_boxes,
    panel_image,
    save_figure,
    symmetric_range,
)
from cameras.core.images import resize_map


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    # A small non-square photo-like image (smooth colours) for fast rendering.
    yy, xx = np.mgrid[0:60, 0:90]
    pixels = np.stack([xx * 2.5, yy * 4.0, 255 - xx * 2.5], -1)
    return Image.fromarray(pixels.astype(np.uint8))


def _synthetic_maps(h: int = 20, w: int = 30) -> list[np.ndarray]:
    """Four maps that look nothing alike: left-right ramp, top-down ramp, a blob, a checker."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    blob = np.exp(-((yy - h / 2) ** 2 + (xx - w / 3) ** 2) / 20.0)
    checker = ((yy // 5 + xx // 5) % 2).astype(np.float32)
    return [xx / (w - 1), yy / (h - 1), blob / blob.max(), checker]


# --- overlay / colorize ------------------------------------------------------------------


def test_colorize_ends_of_the_colour_map():
    colours = colorize(np.array([[0.0, 1.0, -3.0, 7.0]]), "gray")
    assert colours.dtype == np.uint8 and colours.shape == (1, 4, 3)
    assert colours[0].tolist() == [[0, 0, 0], [255, 255, 255], [0, 0, 0], [255, 255, 255]]
    with pytest.raises(ValueError, match="unknown colour map"):
        colorize(np.zeros((2, 2)), "no-such-map")


def test_overlay_alpha_and_size(photo):
    small = np.linspace(0, 1, 6 * 9, dtype=np.float32).reshape(6, 9)
    only_map = overlay(photo, small, "viridis", alpha=1.0)
    assert only_map.size == photo.size  # the map is resized to the image's own size
    expected = colorize(resize_map(torch.from_numpy(small), 60, 90), "viridis")
    assert np.array_equal(np.asarray(only_map), expected)
    only_photo = overlay(photo, torch.from_numpy(small), alpha=0.0)
    assert np.array_equal(np.asarray(only_photo), np.asarray(photo))
    half = np.asarray(overlay(photo, small, "viridis", alpha=0.5), dtype=np.float32)
    mean = (np.asarray(photo, dtype=np.float32) + expected) / 2
    assert np.abs(half - mean).max() <= 1.0
    with pytest.raises(ValueError, match="alpha"):
        overlay(photo, small, alpha=1.5)


# --- difference maps --------------------------------------------------------------------


def test_difference_map_by_hand():
    a = np.array([[1.0, 0.0], [0.5, 0.25]])
    b = torch.tensor([[0.0, 1.0], [0.5, 0.75]])
    diff = difference_map(a, b)
    assert diff.dtype == np.float32
    assert diff.tolist() == [[1.0, -1.0], [0.0, -0.5]]
    with pytest.raises(ValueError, match="shapes differ"):
        difference_map(a, np.zeros((3, 2)))


def test_symmetric_range_rounds_up_the_largest_difference():
    rows = [[Panel(np.full((2, 2), 0.3))], [Panel(np.array([[0.12, -0.21]]), signed=True)]]
    assert symmetric_range(rows) == pytest.approx(0.25)  # plain panels do not count
    assert symmetric_range([[Panel(np.array([[0.2]]), signed=True)]]) == pytest.approx(0.2)
    assert symmetric_range([[Panel(np.zeros((2, 2)), signed=True)]]) == pytest.approx(0.05)
    assert symmetric_range([[Panel(np.ones((2, 2)))]]) == 1.0


def test_signed_panel_colours(photo):
    # alpha 1: the panel is the diverging colour map alone; 0 is the middle colour, and
    # the range R puts +R and -R at the two ends.
    diff = np.array([[0.2, -0.2], [0.0, 0.1]], dtype=np.float32)
    pixels = np.asarray(panel_image(photo, Panel(diff, signed=True), alpha=1.0, signed_range=0.2))
    resized = resize_map(torch.from_numpy((diff / 0.2 + 1) / 2), 60, 90)
    assert np.array_equal(pixels, colorize(resized, "RdBu_r"))
    assert pixels[0, 0].tolist() == colorize(np.array([[1.0]]), "RdBu_r")[0, 0].tolist()
    assert pixels[0, -1].tolist() == colorize(np.array([[0.0]]), "RdBu_r")[0, 0].tolist()
    # alpha 0: the photo in grey (its own colours would read as evidence).
    grey = np.asarray(panel_image(photo, Panel(diff, signed=True), alpha=0.0))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


# --- comparison figures -----------------------------------------------------------------


def _rows(maps: list[np.ndarray], with_difference: bool) -> list[list[Panel]]:
    rows = [
        [Panel(maps[0], "a\nclass 1"), Panel(maps[1], "b\nclass 1")],
        [Panel(maps[2], "a\nclass 2"), Panel(maps[3], "b\nclass 2")],
    ]
    if with_difference:
        rows.append(
            [
                Panel(difference_map(maps[0], maps[2]), "a: difference", signed=True),
                Panel(difference_map(maps[1], maps[3]), "b: difference", signed=True),
            ]
        )
    return rows


@pytest.mark.parametrize("with_difference", [False, True])
def test_figure_layout(photo, with_difference):
    rows = _rows(_synthetic_maps(), with_difference)
    figure = comparison_figure(photo, rows, panel_height=80, diff_labels=("cat", "dog"))
    boxes = panel_boxes(figure)
    n_rows = 3 if with_difference else 2
    panels = sorted(k for k in boxes if k.startswith("panel "))
    assert panels == [f"panel {i},{j}" for i in range(n_rows) for j in range(2)]
    # Every cell, the photo included, is 80 px high and as wide as the photo's aspect.
    for key in [*panels, "photo"]:
        left, top, right, bottom = boxes[key]
        assert (right - left, bottom - top) == (120, 80), key
    # A grid: same row, same top; same column, same left; photo in column 0 of row 0.
    assert boxes["panel 0,0"][1] == boxes["panel 0,1"][1] == boxes["photo"][1]
    assert boxes["panel 0,0"][0] == boxes["panel 1,0"][0] > boxes["photo"][2]
    assert ("colorbar signed" in boxes) is with_difference
    assert "colorbar" in boxes
    if with_difference:
        # Stacked in one column: the plain bar beside rows 0-1, the signed one beside row 2.
        assert boxes["colorbar"][0] == boxes["colorbar signed"][0]
        assert boxes["colorbar"][3] == boxes["panel 1,0"][3]
        assert boxes["colorbar signed"][1] == boxes["panel 2,0"][1]
    picture = figure_to_image(figure)
    assert picture.size == figure_size(photo.size, rows, 80)
    assert all(0 <= b[2] <= picture.width and 0 <= b[3] <= picture.height for b in boxes.values())


def test_each_panel_shows_its_own_map(photo):
    maps = _synthetic_maps()
    rows = _rows(maps, with_difference=True)
    figure = comparison_figure(photo, rows, cmap="viridis", alpha=1.0, panel_height=80)
    pixels = np.asarray(figure_to_image(figure)).astype(np.int16)
    boxes = panel_boxes(figure)
    cell = fit_height(photo, 80)
    signed_range = symmetric_range(rows)
    rendered = {
        (i, j): np.asarray(panel_image(cell, p, "viridis", 1.0, signed_range=signed_range))
        for i, row in enumerate(rows)
        for j, p in enumerate(row)
    }
    for (i, j), expected in rendered.items():
        left, top, right, bottom = boxes[f"panel {i},{j}"]
        crop = pixels[top:bottom, left:right]
        # Drawn one pixel per pixel: exactly the panel's overlay...
        assert np.abs(crop - expected).max() <= 1, (i, j)
        # ... which, at alpha 1, is the colour map of that panel's own map and no other's.
        if not rows[i][j].signed:
            own = colorize(resize_map(torch.from_numpy(rows[i][j].saliency), 80, 120), "viridis")
            assert np.array_equal(expected, own)
        errors = {k: np.abs(crop - other).mean() for k, other in rendered.items()}
        assert min(errors, key=errors.get) == (i, j)
        assert sorted(errors.values())[1] > 10  # the runner-up is far off
    left, top, right, bottom = boxes["photo"]
    assert np.array_equal(pixels[top:bottom, left:right], np.asarray(cell))


def test_mixed_rows_put_colour_bars_side_by_side(photo):
    maps = _synthetic_maps()
    rows = [[Panel(maps[0]), Panel(difference_map(maps[0], maps[1]), signed=True)]]
    figure = comparison_figure(photo, rows, panel_height=40)
    boxes = panel_boxes(figure)
    assert boxes["colorbar signed"][0] > boxes["colorbar"][2]
    assert figure_to_image(figure).size == figure_size(photo.size, rows, 40)


def test_title_and_ragged_rows(photo):
    maps = _synthetic_maps()
    rows = [[Panel(maps[0], "one")], [Panel(maps[1]), Panel(maps[2]), Panel(maps[3])]]
    plain = figure_size(photo.size, rows, 50)
    titled = comparison_figure(photo, rows, panel_height=50, title="a title")
    assert figure_to_image(titled).size == figure_size(photo.size, rows, 50, titled=True)
    assert figure_size(photo.size, rows, 50, titled=True)[1] > plain[1]
    assert len([k for k in panel_boxes(titled) if k.startswith("panel ")]) == 4


def test_figure_argument_errors(photo):
    maps = _synthetic_maps()
    with pytest.raises(ValueError, match="no panels"):
        comparison_figure(photo, [])
    with pytest.raises(ValueError, match="unknown colour map"):
        comparison_figure(photo, [[Panel(maps[0])]], cmap="nope")
    with pytest.raises(ValueError, match="alpha"):
        comparison_figure(photo, [[Panel(maps[0])]], alpha=-0.1)
    with pytest.raises(ValueError, match="2-D"):
        comparison_figure(photo, [[Panel(np.zeros((1, 4, 4)))]])


def test_save_figure_keeps_pixel_size(photo, tmp_path):
    rows = _rows(_synthetic_maps(), with_difference=False)
    figure = comparison_figure(photo, rows, panel_height=64)
    expected = figure_size(photo.size, rows, 64)
    assert save_figure(figure, tmp_path / "grid.png") == expected
    with Image.open(tmp_path / "grid.png") as written:
        assert written.size == expected and written.mode == "RGB"
    save_figure(figure, tmp_path / "grid.jpg")
    with Image.open(tmp_path / "grid.jpg") as written:
        assert written.size == expected


def test_save_figure_palette(photo, tmp_path):
    figure = comparison_figure(photo, _rows(_synthetic_maps(), True), panel_height=64)
    full = save_figure(figure, tmp_path / "full.png")
    small = save_figure(figure, tmp_path / "small.png", colors=64)
    assert full == small
    with Image.open(tmp_path / "small.png") as written:
        assert written.mode == "P" and written.size == full
        assert len(written.getcolors(256)) <= 64
        # Close to the full-colour figure: a palette, not a different picture.
        reference = np.asarray(Image.open(tmp_path / "full.png"), dtype=np.int16)
        assert np.abs(np.asarray(written.convert("RGB"), dtype=np.int16) - reference).mean() < 6
    with pytest.raises(ValueError, match="colors"):
        save_figure(figure, tmp_path / "bad.png", colors=1)

"""The web page on a detection model: the upload lists detections, a box is typed or drawn
by two clicks on the photo, and Explain explains that box (its handlers, no browser)."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from helpers import TinyDetector
from PIL import Image

from cameras import Session, web
from cameras.apps.detection import top_detections
from cameras.core.images import resize_map
from cameras.models import Preprocess
from cameras.targets import Box
from cameras.web import ResultFolders, handle_corner, handle_explain, handle_upload

PHOTO = (101, 67)  # width, height; the model input is 96 x 64
LABELS = ["background", "cat", "dog"]


@pytest.fixture(scope="module")
def session():
    torch.manual_seed(0)
    prep = Preprocess(64, (0.5,) * 3, (0.25,) * 3)
    return Session(TinyDetector().eval(), prep, LABELS, layer="act")


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory):
    pixels = np.random.default_rng(2).integers(0, 256, (PHOTO[1], PHOTO[0], 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("web") / "street.png"
    Image.fromarray(pixels).save(path)
    return path


def _in_photo(box):
    return [box[0] * 101 / 96, box[1] * 67 / 64, box[2] * 101 / 96, box[3] * 67 / 64]


def test_upload_lists_the_detectors_best_detections_in_the_photos_pixels(session, photo_file):
    page = handle_upload(session, str(photo_file))
    photo = Image.open(photo_file).convert("RGB")
    found = top_detections(session.model, session.input(photo), 5)
    assert len(page["top5"]) == 5
    for (text, score), (label, expected, box) in zip(page["top5"].items(), found, strict=True):
        assert score == pytest.approx(expected)
        name, corners = text.split(" at ")
        assert name == f"{LABELS[label]} ({label})"
        assert [float(v) for v in corners.split(",")] == pytest.approx(_in_photo(box), abs=0.06)
    assert page["box"] == next(iter(page["top5"])).split(" at ")[1]
    assert (
        page["choice"] == str(found[0][0])
        and (f"{LABELS[found[0][0]]} ({found[0][0]})", page["choice"]) in page["choices"]
    )
    assert page["state"]["photo_size"] == PHOTO
    # The preview shows the best box outlined in red.
    drawn = np.asarray(page["preview"])
    left, top = (round(v) for v in _in_photo(found[0][2])[:2])
    assert tuple(drawn[top + 2, left]) == (255, 0, 0)


def test_two_clicks_on_a_scaled_preview_make_a_box_in_the_photos_pixels(
    session, photo_file, monkeypatch
):
    monkeypatch.setattr(web, "PREVIEW_SIDE", 50)  # the preview is smaller than the photo
    state = handle_upload(session, str(photo_file))["state"]
    width, height = state["preview"].size
    assert width == 50
    first = handle_corner(state, None, [30, 20], "1,2,3,4")
    assert first["box"] == "1,2,3,4" and first["corner"] == pytest.approx(
        (30 * 101 / width, 20 * 67 / height)
    )
    second = handle_corner(state, first["corner"], [10, 5], first["box"])
    expected = [10 * 101 / width, 5 * 67 / height, 30 * 101 / width, 20 * 67 / height]
    assert [float(v) for v in second["box"].split(",")] == pytest.approx(expected, abs=0.06)
    assert second["corner"] is None and second["status"].startswith(f"Box {second['box']}:")
    same = handle_corner(state, first["corner"], [30, 20], "1,2,3,4")
    assert same["box"] == "1,2,3,4" and same["status"] == "**Error:** click two different corners"
    assert handle_corner(None, None, [1, 1], "")["status"] == "**Error:** upload a photo first"


def test_explain_explains_the_typed_box_with_the_library(session, photo_file):
    state = handle_upload(session, str(photo_file))["state"]
    photo = Image.open(photo_file).convert("RGB")
    x = session.input(photo)
    with torch.no_grad():
        found = session.model(x)[0]
    cell = int(found["scores"].argmax())  # the best detection: its box, in the photo's pixels
    typed = ",".join(f"{v:g}" for v in _in_photo(found["boxes"][cell].tolist()))
    label = int(found["labels"][cell])
    folders = ResultFolders()
    page = handle_explain(
        session, state, LABELS[label], ["gradcam"], "fewer", 1.0, folders, box=typed
    )
    corners = [float(v) for v in typed.split(",")]
    mapped = (
        corners[0] * 96 / 101,
        corners[1] * 64 / 67,
        corners[2] * 96 / 101,
        corners[3] * 64 / 67,
    )
    expected = session.method("gradcam")(x, targets=Box(mapped, label))
    assert expected.scales[0][0].kept and float(expected.maps[0].max()) == 1.0  # found: a real map
    np.testing.assert_allclose(
        np.load(page["files"][1]), resize_map(expected.maps[0], 67, 101), atol=1e-6
    )
    # Named as typed, in the photo's pixels (the target holds the input's).
    name = f"box {typed} {LABELS[label]} ({label})"
    assert page["status"] == f"Explained **{name}**."
    assert page["items"][0][1] == f"gradcam: {name}"
    anything = handle_explain(session, state, " ", ["gradcam"], "fewer", 1.0, folders, box=typed)
    assert anything["status"] == f"Explained **box {typed}**."
    np.testing.assert_allclose(np.load(anything["files"][1]), np.load(page["files"][1]), atol=1e-6)
    # A label that detection does not have: nothing matches, and the page says so.
    other = LABELS[(label + 1) % 3]
    empty = handle_explain(session, state, other, ["gradcam"], "fewer", 1.0, folders, box=typed)
    assert empty["status"].endswith(
        ". Warning: no detection of the model matches this box (and label), so the map is empty."
    )
    shutil.rmtree(folders.root)


@pytest.mark.parametrize(
    ("label", "box", "message"),
    [
        ("", "", "type a box as x1,y1,x2,y2 or click two corners on the photo"),
        ("", "1,2,3", "box 1,2,3: expected X1,Y1,X2,Y2"),
        ("", "10,5,200,20", "box 10,5,200,20: not inside the photo, which is 101x67 pixels"),
        ("zebra", "1,2,30,40", "unknown class name 'zebra'"),
    ],
)
def test_box_mistakes_are_one_line_on_the_page(session, photo_file, label, box, message):
    state = handle_upload(session, str(photo_file))["state"]
    page = handle_explain(
        session, state, label, ["gradcam"], "fewer", 0.5, ResultFolders(), box=box
    )
    assert page["status"].startswith(f"**Error:** {message}") and "\n" not in page["status"]
    assert page["items"] == [] and page["done"] is None


def test_the_detector_page_wires_clicks_and_keeps_model_work_in_one_slot(session):
    pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")
    with warnings.catch_warnings():  # Gradio warns when it cannot see the click's parameter
        warnings.simplefilter("error", UserWarning)
        app = web.build_app(session)
    events = {fn.name: fn for fn in app.fns.values()}
    assert set(events) == {"on_upload_box", "on_corner", "on_explain_box", "on_opacity"}
    for name in ("on_upload_box", "on_explain_box"):
        assert events[name].concurrency_id == "model" and events[name].concurrency_limit == 1

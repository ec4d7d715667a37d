"""``cameras evaluate`` on a detector: the pointing game per annotated box, each box
explained as ``Box(box, label)``, on a tiny detector whose hits and misses are known.

LayerCAM at the detector's last feature map (``act``, read by a 1x1 head) puts all its
mass on the one cell whose features score the matched detection, so the map's maximum
is that cell; the tests place the annotated boxes relative to it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyDetector
from PIL import Image

from cameras import Session
from cameras.apps.datasets import Record
from cameras.apps.detection import is_detector
from cameras.apps.evaluation import EvalSettings, Evaluator, load_item
from cameras.models import Preprocess

PHOTO = (101, 67)  # width, height; the model input is 96 x 64
CELL = (5, 6)  # row, column of the stride-4 grid (16 x 24 cells)
SHIFT = 48.0  # input pixels the shifted detector reports its boxes to the right


class ShiftedDetector(TinyDetector):
    """TinyDetector whose every box is reported SHIFT input pixels to the right of the
    cells that score it: the evidence is far from the box."""

    def forward(self, x):
        found = super().forward(x)
        offset = torch.tensor([SHIFT, 0.0, SHIFT, 0.0])
        return [{**d, "boxes": d["boxes"] + offset} for d in found]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    pixels = np.random.default_rng(1).integers(0, 256, (PHOTO[1], PHOTO[0], 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("boxes") / "street.png"
    Image.fromarray(pixels).save(path)
    return path


def _session(model):
    return Session(model.eval(), Preprocess(64, (0.5,) * 3, (0.25,) * 3), layer="act")


def _cell_detection(session, item):
    """The detection of CELL at the input's size: its box in the photo's pixels, its label."""
    with torch.no_grad():
        found = session.model(item.x[None])[0]
    index = CELL[0] * 24 + CELL[1]
    x1, y1, x2, y2 = found["boxes"][index].tolist()
    sx, sy = PHOTO[0] / 96, PHOTO[1] / 64
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy), int(found["labels"][index])


def _rows(session, photo, objects, tolerance):
    settings = EvalSettings(
        methods=("layercam",), metrics=("pointing", "energy"), tolerance=tolerance
    )
    item = load_item(Record("street", photo, objects), session.prep)
    return Evaluator(session, settings=settings)([item])


def test_a_box_whose_detection_the_map_points_at_is_a_hit_and_an_undetected_one_a_miss(photo):
    torch.manual_seed(0)
    session = _session(TinyDetector())
    assert is_detector(session.model)
    item = load_item(Record("street", photo, {0: ((0, 0, 1, 1),)}), session.prep)
    box, label = _cell_detection(session, item)
    wrong = (label + 1) % 3
    rows = _rows(session, photo, {label: (box,), wrong: (box,)}, tolerance=0.0)
    # One row per annotated box: the right label is found and pointed at (inside the box,
    # tolerance 0); with a label no detection there has, nothing matches: a flat map, a miss.
    assert [(r["class_index"], r["pointing"]) for r in rows] == [(label, 1.0), (wrong, 0.0)]
    assert rows[0]["energy"] > 0.5 and rows[1]["energy"] == 0.0
    assert all(r["top1"] is None and r["insertion"] is None for r in rows)


def test_evidence_far_from_the_box_is_a_miss_within_the_tolerance_and_a_hit_beyond(photo):
    torch.manual_seed(0)
    session = _session(ShiftedDetector())
    item = load_item(Record("street", photo, {0: ((0, 0, 1, 1),)}), session.prep)
    box, label = _cell_detection(session, item)
    # The map's maximum is in CELL (x about 26 input pixels, 27 photo pixels); the box
    # starts SHIFT input pixels further right (x about 76 photo pixels): about 48 apart.
    gap = box[0] - (CELL[1] + 1) * 4 * PHOTO[0] / 96
    assert 40 < gap < 52
    for tolerance, hit in ((15.0, 0.0), (60.0, 1.0)):
        (row,) = _rows(session, photo, {label: (box,)}, tolerance)
        assert row["pointing"] == hit, tolerance
        assert row["energy"] == 0.0  # the map's mass is nowhere near the box


def test_cameras_evaluate_scores_a_detector_per_box(photo, tmp_path, capsys, monkeypatch):
    import csv
    import json

    import cameras.session
    from cameras.cli import main

    torch.manual_seed(0)
    model = TinyDetector().eval()
    prep = Preprocess(64, (0.5,) * 3, (0.25,) * 3)
    labels = ["background", "cat", "dog"]
    monkeypatch.setattr(cameras.session, "load_model", lambda *a, **k: (model, prep, labels))
    session = _session(model)
    box, label = _cell_detection(session, load_item(Record("s", photo, {0: ((0, 0, 1, 1),)}), prep))
    wrong = (label + 1) % 3
    objects = [{"class_index": c, "boxes": [list(box)]} for c in (label, wrong)]
    data = tmp_path / "boxes.json"
    data.write_text(json.dumps([{"file": str(photo), "objects": objects}]))
    base = ["evaluate", str(data), "--model", "tiny", "--layer", "act", "--methods", "layercam"]
    base += ["--tolerance", "0", "--workers", "0"]
    assert main([*base, "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    with open(tmp_path / "out" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["class_index"]), float(r["pointing"])) for r in rows] == [
        (label, 1.0),
        (wrong, 0.0),
    ]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert summary.splitlines()[0] == "| method | pointing ↑ | energy ↑ |"
    assert "| layercam | 0.500 ± " in summary
    capsys.readouterr()
    code = main([*base, "--metrics", "pointing,insertion", "--out", str(tmp_path / "other")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == [
        "cameras evaluate: error: --metrics insertion: a detection model is scored per box "
        "with pointing and energy only"
    ]


def test_a_torchvision_detector_is_known_by_its_class_and_a_segmenter_or_classifier_is_not():
    import torchvision
    from helpers import TinyNet, TinySegmenter

    detector = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    )
    forward = detector.forward
    detector.forward = None  # known by its class: never run
    assert is_detector(detector)
    detector.forward = forward
    assert not is_detector(TinySegmenter().eval()) and not is_detector(TinyNet().eval())

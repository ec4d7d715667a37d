"""The command line's targets (cli/targets.py): --box, --mask, --classes parsed, mapped from
the photo to the model input, and explained by ``cameras compare`` end to end on tiny
models (a detector, a segmenter, a classifier, served by name through ``load_model``)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from helpers import TinyDetector, TinyNet, TinySegmenter
from PIL import Image, ImageDraw

import cameras.session
from cameras.apps.detection import box_in_input
from cameras.apps.photo_targets import mask_in_input
from cameras.apps.viz import Panel, comparison_figure, fit_height, panel_boxes, panel_image
from cameras.cli import UsageError, main
from cameras.cli.targets import (
    TargetRequest,
    add_target_arguments,
    batch_targets,
    parse_target,
    read_mask,
    target_file_tag,
    target_for,
    target_identity,
)
from cameras.models import Preprocess
from cameras.targets import Box, Classes, Region

PHOTO = (101, 67)  # width, height: the input is 96 x 64, x and y scale differently
SIZE = 64  # the tiny models' input shorter side
LABELS = ["background", "cat", "dog"]


def _tiny_models():
    torch.manual_seed(0)
    prep = Preprocess(SIZE, (0.5,) * 3, (0.25,) * 3)
    return {
        "tiny_detector": (TinyDetector().eval(), prep, LABELS),
        "tiny_segmenter": (TinySegmenter().eval(), prep, None),
        "tiny_classifier": (TinyNet(num_classes=10).eval(), prep, None),
    }


MODELS = _tiny_models()


@pytest.fixture(autouse=True)
def tiny_models(monkeypatch):
    """``--model tiny_detector`` and friends load these (ModelError for other names)."""

    def load(name, weights=None, device=None, pretrained=True):
        return MODELS[name]

    monkeypatch.setattr(cameras.session, "load_model", load)


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory):
    generator = np.random.default_rng(0)
    pixels = generator.integers(0, 256, size=(PHOTO[1], PHOTO[0], 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def _session(name):
    return cameras.session.SessionSpec(model=name, layer="act").build()


def _compare(args, capsys):
    code = main(["compare", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- parsing and mapping


def test_a_box_is_mapped_from_the_photo_to_the_input_as_the_resize_moves_pixels():
    prep = Preprocess(SIZE, (0.0,) * 3, (1.0,) * 3)
    photo = Image.new("RGB", PHOTO)
    ImageDraw.Draw(photo).rectangle([30, 10, 69, 49], fill=(255, 255, 255))  # x 30..70, y 10..50
    x = prep(photo)
    assert tuple(x.shape[1:]) == (64, 96)
    mapped = box_in_input((30, 10, 70, 50), (PHOTO[1], PHOTO[0]), (64, 96))
    # By the definition: x * 96 / 101, y * 64 / 67.
    expected = (30 * 96 / 101, 10 * 64 / 67, 70 * 96 / 101, 50 * 64 / 67)
    assert mapped == pytest.approx(expected, abs=1e-9)
    # And where the resize really put the rectangle: its half-bright edges, within a pixel.
    columns = np.flatnonzero(x[0].mean(0).numpy() > 0.5 * x[0].mean(0).numpy().max())
    rows = np.flatnonzero(x[0].mean(1).numpy() > 0.5 * x[0].mean(1).numpy().max())
    seen = (columns[0], rows[0], columns[-1] + 1, rows[-1] + 1)
    assert np.abs(np.array(seen) - np.array(mapped)).max() <= 1.0


def test_a_mask_is_resized_to_the_input_with_nearest_neighbour(tmp_path):
    pixels = np.zeros((PHOTO[1], PHOTO[0]), dtype=np.uint8)
    pixels[5:40, 20:77] = 200
    pixels[50, 90] = 1  # one lone pixel: nonzero counts, whatever the value
    path = tmp_path / "mask.png"
    Image.fromarray(pixels).save(path)
    mask = read_mask(path)
    np.testing.assert_array_equal(mask, pixels != 0)
    resized = mask_in_input(mask, path, (PHOTO[1], PHOTO[0]), (64, 96)).numpy()
    # Nearest: input pixel (i, j) takes photo pixel (floor(i * 67 / 64), floor(j * 101 / 96)).
    rows = np.floor(np.arange(64) * PHOTO[1] / 64).astype(int)
    columns = np.floor(np.arange(96) * PHOTO[0] / 96).astype(int)
    np.testing.assert_array_equal(resized, mask[rows][:, columns])
    assert resized.dtype == bool and set(np.unique(resized)) == {False, True}


def test_palette_and_transparent_masks_read_their_nonzero_pixels(tmp_path):
    palette = Image.new("P", (4, 3), 0)
    palette.putpalette([255, 255, 255] + [0, 0, 0] * 255)  # index 0 is white: still outside
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "palette.png")
    assert (
        read_mask(tmp_path / "palette.png").sum() == 1 and read_mask(tmp_path / "palette.png")[1, 1]
    )
    rgba = Image.new("RGBA", (4, 3), (255, 0, 0, 0))  # red but transparent: outside
    rgba.putpixel((2, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "rgba.png")
    assert np.argwhere(read_mask(tmp_path / "rgba.png")).tolist() == [[0, 2]]


def _target_parser():
    parser = argparse.ArgumentParser()
    add_target_arguments(parser)
    return parser


def test_parse_target_builds_each_kind_and_its_file_tag(tmp_path):
    parser = _target_parser()
    detector, classifier = _session("tiny_detector"), _session("tiny_classifier")
    request = parse_target(
        parser.parse_args(["--box", "10,20,60.5,50", "--class", "dog"]), detector
    )
    assert request == TargetRequest(box=(10.0, 20.0, 60.5, 50.0), label=2)
    assert target_file_tag(request) == "_box10-20-60.5-50_class2"
    box = request.for_image((PHOTO[1], PHOTO[0]), (64, 96))
    assert isinstance(box, Box) and box.class_ == 2
    assert box.boxes[0].tolist() == pytest.approx(
        [10 * 96 / 101, 20 * 64 / 67, 60.5 * 96 / 101, 50 * 64 / 67]
    )
    assert target_file_tag(parse_target(parser.parse_args(["--box", "1,2,3,4"]), detector)) == (
        "_box1-2-3-4"
    )
    classes = parse_target(parser.parse_args(["--classes", "3,7"]), classifier)
    assert classes == TargetRequest(classes=(3, 7)) and target_file_tag(classes) == "_classes3+7"
    assert isinstance(classes.for_image((67, 101), (64, 96)), Classes)
    assert parse_target(parser.parse_args(["--class", "4"]), classifier) == 4
    assert target_file_tag(4) == "_class4" and target_file_tag(None) == ""
    assert parse_target(parser.parse_args([]), classifier) is None
    Image.fromarray(np.full((67, 101), 255, np.uint8)).save(tmp_path / "my mask.png")
    args = parser.parse_args(["--mask", str(tmp_path / "my mask.png"), "--class", "2"])
    region = target_for(args, _session("tiny_segmenter"), (64, 96), (67, 101))
    assert isinstance(region, Region) and region.mask.shape == (64, 96) and bool(region.mask.all())
    assert target_file_tag(parse_target(args, classifier)) == "_region2-my-mask"


# ---------------------------------------------------------------- compare, end to end


def _panel(out, layout, photo, row, column, height):
    with Image.open(out) as written:
        pixels = np.asarray(written.convert("RGB")).astype(np.int16)
    left, top, right, bottom = panel_boxes(comparison_figure(photo, layout, panel_height=height))[
        f"panel {row},{column}"
    ]
    return pixels[top:bottom, left:right]


def _assert_panel_shows(out, photo, saliency, columns, column, height=64):
    layout = [[Panel(np.zeros((2, 2)))] * columns]
    own = np.asarray(panel_image(fit_height(photo, height), Panel(saliency)))
    assert np.abs(_panel(out, layout, photo, 0, column, height) - own).mean() < 1.0


def _detected_cell(session, x):
    """A photo box around the detector's cell (row 5, column 6) at the input's size, and
    that detection's label: the one detection it matches (neighbours overlap 1/3)."""
    with torch.no_grad():
        found = session.model(x)[0]
    index = 5 * 24 + 6
    corners = found["boxes"][index].tolist()  # [24, 20, 32, 28] in the 96 x 64 input
    photo = [
        corners[0] * 101 / 96,
        corners[1] * 67 / 64,
        corners[2] * 101 / 96,
        corners[3] * 67 / 64,
    ]
    return photo, int(found["labels"][index])


def test_compare_explains_a_box(photo_file, tmp_path, capsys):
    session = _session("tiny_detector")
    photo = Image.open(photo_file).convert("RGB")
    x = session.input(photo)
    box, label = _detected_cell(session, x)
    typed = ",".join(f"{v:.4f}" for v in box)
    out = tmp_path / "box.png"
    common = ["--model", "tiny_detector", "--layer", "act", "--methods", "gradcam,cameras"]
    common += ["--scales", "64,96", "--panel-height", "64", "--device", "cpu"]
    code, _, stderr = _compare(
        [photo_file, *common, "--box", typed, "--class", LABELS[label], "--out", out], capsys
    )
    assert code == 0, stderr
    mapped = box_in_input(tuple(float(v) for v in typed.split(",")), (67, 101), (64, 96))
    expected = session.explain(x, "gradcam", targets=Box(mapped, label))
    assert expected.scales[0][0].kept and float(expected.maps[0].max()) == 1.0  # a real map
    shown = ",".join(f"{float(v):g}" for v in typed.split(","))  # as typed, the photo's pixels
    assert f"tiny_detector: box {shown} {LABELS[label]} ({label}) score=" in stderr
    assert f"score={expected.scales[0][0].score:.3f}" in stderr
    _assert_panel_shows(out, photo, expected.maps[0], 2, 0)
    # The wrong label: no detection matches at any scale, and compare says so.
    wrong = LABELS[(label + 1) % 3]
    code, _, stderr = _compare(
        [photo_file, *common, "--box", typed, "--class", wrong, "--out", out], capsys
    )
    assert code == 0 and "warning: gradcam, cameras: the target is absent at every scale" in stderr


def test_compare_explains_a_region(photo_file, tmp_path, capsys):
    session = _session("tiny_segmenter")
    photo = Image.open(photo_file).convert("RGB")
    pixels = np.zeros((67, 101), dtype=np.uint8)
    pixels[10:50, 30:90] = 255
    Image.fromarray(pixels).save(tmp_path / "region.png")
    x = session.input(photo)
    mask = torch.from_numpy(pixels != 0)[None, None].float()
    mask = torch.nn.functional.interpolate(mask, size=(64, 96), mode="nearest")[0, 0] > 0
    with torch.no_grad():  # the class holding most of the region: present there
        holder = int(session.model(x)["out"][0].argmax(0)[mask].mode().values)
    out = tmp_path / "region_figure.png"
    args = ["--model", "tiny_segmenter", "--layer", "act", "--methods", "gradcam"]
    args += ["--mask", tmp_path / "region.png", "--class", str(holder)]
    code, _, stderr = _compare([photo_file, *args, "--panel-height", "64", "--out", out], capsys)
    assert code == 0, stderr
    expected = session.explain(x, "gradcam", targets=Region(holder, mask))
    score = expected.scales[0][0].score
    assert stderr == f"tiny_segmenter: region of class {holder} score={score:.3f}\n"
    _assert_panel_shows(out, photo, expected.maps[0], 1, 0)


def test_compare_explains_a_multi_label_row_beside_a_class(photo_file, tmp_path, capsys):
    session = _session("tiny_classifier")
    photo = Image.open(photo_file).convert("RGB")
    out = tmp_path / "classes.png"
    args = ["--model", "tiny_classifier", "--layer", "act", "--methods", "gradcam"]
    args += ["--classes", "1+3,5", "--panel-height", "64", "--out", out]
    code, _, stderr = _compare([photo_file, *args], capsys)
    assert code == 0, stderr
    x = session.input(photo)
    together = session.explain(x, "gradcam", targets=Classes([1, 3]))
    alone = session.explain(x, "gradcam", targets=5)
    score = together.scales[0][0].score
    probability = float(alone.probabilities[0, 5])
    assert (
        stderr
        == f"tiny_classifier: 1+3 score={score:.3f}\ntiny_classifier: class 5 p={probability:.3f}\n"
    )
    # Two rows and their difference row; the first is the set's map, the second class 5's.
    layout = [[Panel(np.zeros((2, 2)))]] * 2 + [[Panel(np.zeros((2, 2)), signed=True)]]
    for row, expected in enumerate([together, alone]):
        own = np.asarray(panel_image(fit_height(photo, 64), Panel(expected.maps[0])))
        assert np.abs(_panel(out, layout, photo, row, 0, 64) - own).mean() < 1.0


# ---------------------------------------------------------------- every mistake, one line


def _mask_files(tmp_path):
    Image.fromarray(np.full((67, 101), 255, np.uint8)).save(tmp_path / "good.png")
    Image.fromarray(np.zeros((67, 101), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "notes.png").write_text("not a picture")


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("tiny_detector", ["--box", "1,2,3"], "--box 1,2,3: expected X1,Y1,X2,Y2"),
        ("tiny_detector", ["--box", "a,b,c,d"], "--box a,b,c,d: expected X1,Y1,X2,Y2"),
        ("tiny_detector", ["--box", "1,2,3,nan"], "--box 1,2,3,nan: expected X1,Y1,X2,Y2"),
        ("tiny_detector", ["--box", "50,5,10,20"], "--box 50,5,10,20: needs X1 < X2 and Y1 < Y2"),
        (
            "tiny_detector",
            ["--box", "10,10,120,20"],
            "--box 10,10,120,20: not inside the photo, which is 101x67 pixels",
        ),
        ("tiny_detector", ["--box=-1,10,20,20"], "not inside the photo"),
        (
            "tiny_detector",
            ["--box", "1,2,30,40", "--class", "zebra"],
            "--class zebra: unknown class name 'zebra'",
        ),
        (
            "tiny_detector",
            ["--box", "1,2,30,40", "--mask", "good.png"],
            "--box and --mask: give only one",
        ),
        (
            "tiny_detector",
            ["--box", "1,2,30,40", "--classes", "1"],
            "--classes: one row per class; not with --box",
        ),
        ("tiny_segmenter", ["--mask", "good.png"], "--mask {tmp}/good.png: needs --class C"),
        (
            "tiny_segmenter",
            ["--mask", "missing.png", "--class", "1"],
            "--mask {tmp}/missing.png: no such file",
        ),
        (
            "tiny_segmenter",
            ["--mask", "notes.png", "--class", "1"],
            "--mask {tmp}/notes.png: not a readable image",
        ),
        (
            "tiny_segmenter",
            ["--mask", "empty.png", "--class", "1"],
            "--mask {tmp}/empty.png: has no nonzero pixel",
        ),
        (
            "tiny_segmenter",
            ["--mask", "small.png", "--class", "1"],
            "is 10x10 pixels but the photo is 101x67",
        ),
        (
            "tiny_segmenter",
            ["--mask", "good.png", "--class", "cat"],
            "--class cat: unknown class name 'cat': the model has no class names",
        ),
        (
            "tiny_segmenter",
            ["--mask", "good.png", "--class", "9"],
            "--class: class 9 is out of range: the model has 4 classes",
        ),
        ("tiny_classifier", ["--classes", "1+1"], "--classes 1+1: a class is listed twice"),
        ("tiny_classifier", ["--classes", "1+12"], "--classes 12: class 12 is out of range"),
    ],
)
def test_target_mistakes_are_one_line_usage_errors(
    photo_file, tmp_path, capsys, model, extra, message
):
    _mask_files(tmp_path)
    extra = [str(tmp_path / e) if e.endswith(".png") else e for e in extra]
    out = tmp_path / "figure.png"
    args = [photo_file, "--model", model, "--layer", "act", "--methods", "gradcam", "--out", out]
    code, _, stderr = _compare([*args, *extra], capsys)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cameras compare: error: "), stderr
    assert message.format(tmp=tmp_path) in lines[0]
    assert not out.exists()


def test_explain_style_options_refuse_a_class_with_a_set():
    parser = _target_parser()
    with pytest.raises(UsageError, match=r"^--class and --classes: give one class or a set"):
        parse_target(
            parser.parse_args(["--class", "1", "--classes", "2,3"]), _session("tiny_classifier")
        )
    with pytest.raises(UsageError, match=r"^--box and --classes: give only one"):
        parse_target(
            parser.parse_args(["--box", "1,2,3,4", "--classes", "2,3"]), _session("tiny_classifier")
        )


def test_explain_gets_one_target_per_photo_and_an_identity_per_request(tmp_path):
    request = TargetRequest(box=(10.0, 20.0, 60.0, 50.0), label=None)
    # Two photos of other sizes whose inputs are both 64 x 96: each box mapped by its photo.
    targets = batch_targets(request, [(67, 101), (128, 192)], (64, 96))
    assert targets[0].boxes[0].tolist() == pytest.approx(
        [10 * 96 / 101, 20 * 64 / 67, 60 * 96 / 101, 50 * 64 / 67]
    )
    assert targets[1].boxes[0].tolist() == pytest.approx([5.0, 10.0, 30.0, 25.0])
    with pytest.raises(ValueError, match=r"^box 10,20,60,50: not inside the photo, which is 50x40"):
        batch_targets(request, [(40, 50)], (64, 80))
    assert batch_targets(7, [(67, 101)], (64, 96)) == 7 and batch_targets(None, [], (1, 1)) is None
    assert target_identity(request) == "box=10,20,60,50 label=any"
    assert (
        target_identity(TargetRequest(box=(1.0, 2.0, 3.0, 4.0), label=3)) == "box=1,2,3,4 label=3"
    )
    assert target_identity(TargetRequest(classes=(3, 7))) == "classes=3+7"
    region = TargetRequest(mask=np.ones((2, 2), bool), mask_file=tmp_path / "m.png", label=15)
    assert target_identity(region) == f"region=15 mask={(tmp_path / 'm.png').resolve()}"
    assert target_identity(None) == "top-1" and target_identity(281) == "281"


# ---------------------------------------------------------------- a real detector, by name

DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory):
    """Random weights for a torchvision detector, as a local file (nothing downloads)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(DETECTOR, weights=None, weights_backbone=None)
    path = tmp_path_factory.mktemp("detector") / "random.pt"
    torch.save(model.state_dict(), path)
    return path


def test_compare_explains_a_box_of_a_torchvision_detector_by_name(
    detector_weights, photo_file, tmp_path, capsys, monkeypatch
):
    from conftest import shared_load_model

    monkeypatch.setattr(cameras.session, "load_model", shared_load_model)
    out = tmp_path / "detector.png"
    args = [photo_file, "--model", DETECTOR, "--weights", detector_weights, "--methods"]
    args += ["gradcam", "--box", "10,5,90,60", "--class", "cat", "--device", "cpu", "--out", out]
    code, stdout, stderr = _compare(args, capsys)
    assert code == 0, stderr
    # COCO's names come with the model; the box is shown as typed; random weights detect
    # nothing there, which compare reports.
    assert stderr.startswith(f"{DETECTOR}: box 10,5,90,60 cat (17) score=0.000\n")
    assert "warning: gradcam: the target is absent at every scale" in stderr
    assert out.exists() and str(out) in stdout


# ---------------------------------------------------------------- cameras explain


def _explain(args, capsys):
    code = main(["explain", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_explain_writes_a_box_map_tagged_with_the_box(photo_file, tmp_path, capsys):
    session = _session("tiny_detector")
    photo = Image.open(photo_file).convert("RGB")
    x = session.input(photo)
    box, label = _detected_cell(session, x)
    typed = ",".join(f"{v:.4f}" for v in box)
    args = [photo_file, "--model", "tiny_detector", "--layer", "act", "--scales", "64,96"]
    args += ["--box", typed, "--class", LABELS[label], "--device", "cpu", "--out", tmp_path]
    code, _, stderr = _explain(args, capsys)
    assert code == 0, stderr
    mapped = box_in_input(tuple(float(v) for v in typed.split(",")), (67, 101), (64, 96))
    expected = session.explain(x, "cameras", targets=Box(mapped, label), scales=[64, 96])
    tag = "_box" + "-".join(f"{float(v):g}" for v in typed.split(",")) + f"_class{label}"
    written = np.load(tmp_path / f"photo_cameras{tag}.npy")
    assert np.abs(written - session.map_at_image_size(expected, photo)).max() <= 1e-4
    assert (tmp_path / f"photo_cameras{tag}.png").exists()
    assert "top-5" not in stderr + _  # a detector has no class scores to rank
    kept = [r.scale for r in expected.scales[0] if r.kept]
    assert f"scales kept {kept}" in stderr + _
    shown = ",".join(f"{float(v):g}" for v in typed.split(","))
    assert f"cameras map for box {shown} {LABELS[label]} ({label})," in stderr + _


def test_explain_writes_a_region_map_and_a_multi_label_map(photo_file, tmp_path, capsys):
    session = _session("tiny_segmenter")
    photo = Image.open(photo_file).convert("RGB")
    pixels = np.zeros((67, 101), dtype=np.uint8)
    pixels[10:50, 30:90] = 255
    Image.fromarray(pixels).save(tmp_path / "region.png")
    x = session.input(photo)
    mask = mask_in_input(pixels != 0, None, (67, 101), (64, 96))
    args = [photo_file, "--model", "tiny_segmenter", "--layer", "act", "--method", "gradcam"]
    args += ["--mask", tmp_path / "region.png", "--class", "1", "--out", tmp_path / "out"]
    code, _, stderr = _explain(args, capsys)
    assert code == 0, stderr
    expected = session.explain(x, "gradcam", targets=Region(1, mask))
    written = np.load(tmp_path / "out" / "photo_gradcam_region1-region.npy")
    assert np.abs(written - session.map_at_image_size(expected, photo)).max() <= 1e-4

    classifier = _session("tiny_classifier")
    args = [photo_file, "--model", "tiny_classifier", "--layer", "act", "--method", "gradcam"]
    args += ["--classes", "1,3", "--out", tmp_path / "multi"]
    code, _, stderr = _explain(args, capsys)
    assert code == 0, stderr
    expected = classifier.explain(classifier.input(photo), "gradcam", targets=Classes([1, 3]))
    written = np.load(tmp_path / "multi" / "photo_gradcam_classes1+3.npy")
    assert np.abs(written - classifier.map_at_image_size(expected, photo)).max() <= 1e-4


def test_explain_fails_only_the_photo_a_box_does_not_fit(photo_file, tmp_path, capsys):
    small = tmp_path / "small.png"
    Image.open(photo_file).convert("RGB").crop((0, 0, 40, 30)).save(small)
    args = [photo_file, small, "--model", "tiny_detector", "--layer", "act", "--scales", "64"]
    args += ["--box", "20,10,60,50", "--out", tmp_path / "out", "--workers", "0"]
    code, _, stderr = _explain(args, capsys)
    assert code == 1
    assert (tmp_path / "out" / "photo_cameras_box20-10-60-50.npy").exists()
    assert not list((tmp_path / "out").glob("small_*"))
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "small.png" in errors[0] and "box 20,10,60,50" in errors[0]

"""Output names cannot collide: however the inputs are named, no output replaces another
output or an input (``run.outputs.image_tasks`` makes the names, ``ImageWriter`` checks them)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cameras.cli import main
from cameras.cli.common import output_stems
from cameras.run.outputs import ImageWriter, image_tasks


def stems(*paths: str, clashes=None) -> list[str]:
    return [task.stem for task in image_tasks([Path(p) for p in paths], clashes)]


def test_a_made_up_suffix_never_takes_an_inputs_own_name():
    # The case: b used to become img-2 and c's map then replaced b's.
    assert stems("col/a/img.png", "col/b/img.png", "col/c/img-2.png") == ["img", "img-3", "img-2"]
    assert stems("c/img-2.png", "a/img.png", "b/img.png") == ["img-2", "img", "img-3"]
    assert stems("a/img.png", "b/img.png", "c/img-2.png", "d/img-3.png") == [
        "img",
        "img-4",
        "img-2",
        "img-3",
    ]


def test_names_differing_only_in_case_stay_apart():
    # On a case-insensitive disk IMG_cameras.png and img_cameras.png are one file.
    named = stems("a/IMG.png", "b/img.jpg", "c/Img.PNG")
    assert named == ["IMG", "img-2", "Img-3"]
    assert len({s.casefold() for s in named}) == 3


def test_the_same_file_twice_gets_two_names():
    assert stems("a/img.png", "a/img.png", "./a/img.png") == ["img", "img-2", "img-3"]


def test_dots_in_stems_do_not_collapse_names(tmp_path):
    writer = ImageWriter(tmp_path, "cameras", [])
    tasks = image_tasks([Path("photo.v1.png"), Path("photo.v2.png")])
    names = [path.name for task in tasks for path in writer.paths(task)]
    assert names == [
        "photo.v1_cameras.png",
        "photo.v1_cameras.npy",
        "photo.v2_cameras.png",
        "photo.v2_cameras.npy",
    ]


def test_an_input_inside_out_named_like_an_output_is_never_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    inside = out / "img_cameras.png"
    inside.write_bytes(b"an input")
    inputs = [tmp_path / "img.png", inside]
    writer = ImageWriter(out, "cameras", inputs)
    tasks = image_tasks(inputs, writer.clashes)
    assert [t.stem for t in tasks] == ["img-2", "img_cameras"]
    # The same for a hard link (another name for the same file) and another case.
    linked = out / "x_cameras.npy"
    os.link(inside, linked)
    upper = out / "IMG2_CAMERAS.PNG"
    upper.write_bytes(b"another input")
    guarded = ImageWriter(out, "cameras", [inside, upper])
    assert guarded.clashes("x") and guarded.clashes("img2") and not guarded.clashes("y")


def test_sanity_and_attack_names_avoid_inputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_sanity.png").write_bytes(b"an input")
    images = [tmp_path / "x.png", out / "x_sanity.png", tmp_path / "y" / "x.png"]
    assert output_stems(images, out, ["{stem}_sanity.png"]) == ["x-2", "x_sanity", "x-3"]
    patterns = ["{stem}_adversarial_none.png", "{stem}_perturbation_none.png"]
    (out / "z_perturbation_none.png").write_bytes(b"an input")
    assert (
        output_stems([tmp_path / "z.png", out / "z_perturbation_none.png"], out, patterns)[0]
        == "z-2"
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("method", ["gradcam"])
def test_explain_keeps_every_output_and_every_input(capsys, tmp_path, chelsea, method):
    """Every kind of name clash in one run; each input gets its own size, so each map's
    shape tells which input it belongs to."""
    out = tmp_path / "out"
    out.mkdir()
    sizes = iter([(40, 30), (44, 30), (48, 30), (52, 30), (56, 30), (60, 30), (64, 30)])

    def photo(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        chelsea.resize(next(sizes)).save(path)
        return path

    inputs = [
        photo(tmp_path / "col/a/img.png"),
        photo(tmp_path / "col/b/img.png"),
        photo(tmp_path / "col/c/img-2.png"),
        photo(tmp_path / "col/d/IMG.png"),
        photo(out / f"img-3_{method}.png"),  # an input inside --out, named like an output
        photo(tmp_path / "photo.v1.png"),
        photo(tmp_path / "photo.v2.png"),
    ]
    inputs.append(inputs[0])  # the same file twice
    before = {path: digest(path) for path in inputs}
    argv = ["explain", *inputs, "--out", out, "--method", method, "--workers", 0]
    code = main([str(a) for a in argv])
    stdout = capsys.readouterr().out
    assert code == 0
    assert {path: digest(path) for path in inputs} == before
    written = [line.rsplit(" -> ", 1)[1] for line in stdout.splitlines() if " -> " in line]
    assert len(written) == len(set(written)) == len(inputs)
    for source, png in zip(inputs, written, strict=True):
        with Image.open(source) as image:
            width, height = image.size
        saliency = np.load(Path(png).with_name(Path(png).name[: -len(".png")] + ".npy"))
        assert saliency.shape == (height, width), (source, png)
        with Image.open(png) as overlay:
            assert overlay.size == (width, height)

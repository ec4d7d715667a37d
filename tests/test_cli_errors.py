"""Every failure of the command line is one line naming the file or option, with the
documented exit code (0 all inputs done, 1 some failed, 2 usage error); options that can be
checked before any work are checked before the model is loaded."""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from io import StringIO
from pathlib import Path

import pytest
import torch

from cameras.cli import main

GRADCAM = ["--method", "gradcam"]  # one forward pass per image: the cheapest method


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line]


def assert_clean_failure(err: str, *names: object) -> None:
    """stderr holds no traceback and one error line naming each of ``names``."""
    assert "Traceback" not in err and 'File "' not in err, err
    for name in names:
        assert any(str(name) in line for line in error_lines(err)), (name, err)


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a subcommand gets as far as loading a model."""
    import cameras.session

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(cameras.session.Session, "load", classmethod(refuse))


@pytest.fixture
def photos(tmp_path, chelsea, coffee) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for name, photo in (("one", chelsea), ("two", coffee), ("three", chelsea)):
        path = folder / f"{name}.png"
        photo.resize((64, 48)).save(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- --out


def test_out_under_a_file_is_a_usage_error_before_any_work(capsys, tmp_path, photos, no_model):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, out, err = run(capsys, "explain", *photos, "--out", blocker / "sub", *GRADCAM)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("cameras explain: error: --out ")
    assert_clean_failure(err, blocker / "sub")


def unwritable(monkeypatch, folder: Path) -> None:
    """Make ``folder`` (and anything under it) refuse new files, as a read-only folder does
    for a normal user (the tests may run as root, for whom chmod does not)."""
    import tempfile

    real_file = tempfile.TemporaryFile
    real_mkdir = Path.mkdir

    def guarded(path: Path) -> None:
        if Path(path).resolve().is_relative_to(folder.resolve()) and Path(path) != folder:
            raise PermissionError(13, "Permission denied", str(path))

    def temporary_file(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own name
        guarded(Path(dir) / "probe")
        return real_file(*args, dir=dir, **kwargs)

    def mkdir(self, *args, **kwargs):
        guarded(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
    monkeypatch.setattr(Path, "mkdir", mkdir)


@pytest.mark.parametrize("command", ["explain", "sanity", "attack", "evaluate", "compare"])
@pytest.mark.parametrize("inside", [False, True], ids=["ro", "ro/sub"])
def test_unwritable_out_is_one_line_before_any_work(
    capsys, monkeypatch, tmp_path, photos, no_model, command, inside
):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    unwritable(monkeypatch, readonly)
    out = readonly / "sub" if inside else readonly
    if command == "evaluate":
        data = tmp_path / "boxes.json"
        data.write_text(json.dumps([{"file": str(photos[0]), "objects": []}]))
        argv = ["evaluate", data, "--methods", "gradcam", "--out", out]
    elif command == "compare":
        argv = ["compare", photos[0], "--methods", "gradcam", "--out", out / "figure.png"]
    else:
        argv = [command, *photos, "--out", out]
    code, stdout, err = run(capsys, *argv)
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and "Permission denied" in err
    assert_clean_failure(err, f"--out {out}")


def test_a_write_that_fails_mid_run_is_that_images_failure(capsys, monkeypatch, tmp_path, photos):
    out = tmp_path / "out"
    real_open = os.open  # outputs are written under a temporary name, then renamed

    def open_file(path, *args, **kwargs):
        if Path(path).name.startswith(".two_gradcam.png."):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_file)
    code, stdout, err = run(capsys, "explain", *photos, "--out", out, *GRADCAM, "--workers", 0)
    assert code == 1
    assert error_lines(err) == [
        f"error: {photos[1]}: cannot write {out / 'two_gradcam.png'} (Permission denied)"
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "one_gradcam.npy",
        "one_gradcam.png",
        "three_gradcam.npy",
        "three_gradcam.png",
    ]


def test_attack_write_failure_skips_only_that_image(capsys, monkeypatch, tmp_path, photos):
    import cameras.cli.attack

    real_save = cameras.cli.attack.save_png

    def save_png(picture, path, *args, **kwargs):
        if Path(path).name.startswith("two_"):
            raise OSError(28, "No space left on device", str(path))
        return real_save(picture, path, *args, **kwargs)

    monkeypatch.setattr(cameras.cli.attack, "save_png", save_png)
    out = tmp_path / "out"
    argv = ["attack", *photos, "--out", out, "--method", "gradcam", "--steps", 1]
    code, stdout, err = run(capsys, *argv)
    assert code == 1
    assert error_lines(err) == [
        f"error: {photos[1]}: cannot write {out / 'two_adversarial_gradcam.png'} "
        "(No space left on device)"
    ]
    rows = [json.loads(line) for line in (out / "attack.jsonl").read_text().splitlines()]
    assert [row["file"] for row in rows] == [str(photos[0]), str(photos[2])]
    assert (out / "three_perturbation_gradcam.png").is_file()


# ---------------------------------------------------------------- options checked first


@pytest.mark.parametrize(
    "argv, option",
    [
        (["explain", "{photo}", "--cmap", "nope"], "--cmap nope"),
        (["compare", "{photo}", "--cmap", "nope"], "--cmap nope"),
        (["compare", "{photo}", "--diff-cmap", "nope"], "--diff-cmap nope"),
        (["attack", "{photo}", "--step-size", "inf"], "--step-size inf"),
        (["attack", "{photo}", "--beta", "inf"], "--beta inf"),
        (["evaluate", "{photo}", "--tolerance", "nan"], "--tolerance nan"),
        (["evaluate", "{photo}", "--steps", "0"], "--steps 0"),
    ],
)
def test_bad_options_are_refused_before_the_model_loads(
    capsys, tmp_path, photos, no_model, argv, option
):
    argv = [a.format(photo=photos[0]) for a in argv] + ["--out", tmp_path / "out"]
    if argv[0] == "compare":
        argv[-1] = tmp_path / "figure.png"
    code, stdout, err = run(capsys, *argv)
    assert code == 2 and stdout == ""
    assert err.startswith(f"cameras {argv[0]}: error: {option}: ") and err.count("\n") == 1


@pytest.mark.parametrize("scales", ["0", "-5,224", ",", "324,224", "224,224"])
@pytest.mark.parametrize("command", ["explain", "compare", "sanity", "attack", "evaluate"])
def test_bad_scales_name_the_option(capsys, tmp_path, no_model, command, scales):
    with pytest.raises(SystemExit) as stopped:
        main([command, str(tmp_path / "x.png"), f"--scales={scales}"])
    assert stopped.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"cameras {command}: error: argument --scales: --scales ")


# ---------------------------------------------------------------- evaluate's inputs

COCO = {
    "images": [{"id": 1, "file_name": "one.png", "width": 64, "height": 48}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 17, "bbox": [4, 4, 30, 30]}],
    "categories": [{"id": 17, "name": "tabby"}],
}


DAMAGED_COCO = {
    "categories null": ({"categories": None}, "categories is not a list"),
    "category not an object": (
        {"categories": [3, {"id": 17, "name": "tabby"}]},
        "category 1: needs an object",
    ),
    "unhashable category id": (
        {"categories": [{"id": [17], "name": "tabby"}]},
        "category 1: needs an object",
    ),
    "bbox 7": ({"annotations": [{"image_id": 1, "category_id": 17, "bbox": 7}]}, "bbox 7 is not"),
    "unhashable image_id": (
        {"annotations": [{"image_id": [1], "category_id": 17, "bbox": [1, 1, 9, 9]}]},
        "annotation 1: needs an object with a number image_id",
    ),
    "unhashable category_id": (
        {"annotations": [{"image_id": 1, "category_id": {}, "bbox": [1, 1, 9, 9]}]},
        "category_id {} is not a number",
    ),
    "unhashable image id": (
        {"images": [{"id": {"a": 1}, "file_name": "one.png"}]},
        "image 1 (one.png): needs a number id",
    ),
}


@pytest.mark.parametrize("damage, message", DAMAGED_COCO.values(), ids=DAMAGED_COCO)
def test_malformed_coco_is_read_with_one_line_per_problem(tmp_path, damage, message):
    from cameras.apps.datasets import ClassResolver, read_annotations
    from cameras.models import imagenet_classes

    data = tmp_path / "instances.json"
    data.write_text(json.dumps(COCO | damage))
    annotations = read_annotations(data, tmp_path, ClassResolver(imagenet_classes()))
    lines = annotations.errors + [p for r in annotations.records for p in r.problems]
    assert any(message in line for line in lines), lines
    assert all("\n" not in line for line in lines)
    assert all(str(data) in line for line in annotations.errors)


@pytest.mark.parametrize("name", ["categories null", "bbox 7"])
def test_evaluate_survives_malformed_coco(capsys, tmp_path, photos, name):
    damage, message = DAMAGED_COCO[name]
    data = tmp_path / "instances.json"
    data.write_text(json.dumps(COCO | damage))
    argv = ["evaluate", data, "--images", photos[0].parent, "--methods", "gradcam"]
    argv += ["--metrics", "pointing", "--workers", 0, "--out", tmp_path / "out"]
    code, stdout, err = run(capsys, *argv)
    assert code == 1 and "Traceback" not in err
    assert any(message in line for line in err.splitlines()), err


@pytest.mark.parametrize("content", [[], {"images": [], "annotations": []}])
def test_no_annotations_is_an_error_not_a_table_of_na(capsys, tmp_path, content):
    data = tmp_path / "empty.json"
    data.write_text(json.dumps(content))
    argv = ["evaluate", data, "--methods", "gradcam", "--out", tmp_path / "out"]
    code, stdout, err = run(capsys, *argv)
    assert code == 2 and "n/a" not in stdout
    assert err == f"cameras evaluate: error: {data}: no annotated images to evaluate\n"


# ---------------------------------------------------------------- weights, links


def test_malicious_weights_are_one_line_without_unsafe_advice(capsys, tmp_path, photos):
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("still here")

    class Payload:
        def __reduce__(self):
            return (os.remove, (str(sentinel),))

    weights = tmp_path / "evil.pt"
    torch.save({"layer.weight": Payload()}, weights)
    code, stdout, err = run(capsys, "explain", photos[0], "--weights", weights, *GRADCAM)
    assert code == 2 and sentinel.exists()
    assert err.count("\n") == 1 and "weights_only" not in err and "False" not in err
    assert err.startswith(
        f"cameras explain: error: --model efficientnet_lite0: weights file {weights}"
    )
    assert "posix.remove" in err or "nt.remove" in err


def test_symlink_loops_in_a_folder_are_reported(capsys, tmp_path, photos):
    folder = photos[0].parent
    os.symlink(folder / "b.png", folder / "a.png")
    os.symlink(folder / "a.png", folder / "b.png")
    os.symlink(folder / "gone.png", folder / "dangling.png")
    os.symlink(folder / "a\nb.png", folder / "a\nb.png")  # a newline in the name
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "explain", folder, "--out", out, *GRADCAM, "--workers", 0)
    assert code == 1
    assert error_lines(err) == [
        f"error: {folder}/a\\nb.png: symbolic link loop, skipped",
        f"error: {folder / 'a.png'}: symbolic link loop, skipped",
        f"error: {folder / 'b.png'}: symbolic link loop, skipped",
        f"error: {folder / 'dangling.png'}: symbolic link to a missing file, skipped",
    ]
    assert len(list(out.glob("*_gradcam.npy"))) == 3  # the real photos still explained


# ---------------------------------------------------------------- progress and errors


class FakeTerminal(StringIO):
    def isatty(self) -> bool:
        return True


def test_warnings_never_run_into_a_progress_bar(monkeypatch, tmp_path, photos):
    """On a terminal the bar is drawn; a warning raised mid-run is a line of its own."""
    import cameras.run.jobs

    real_top_classes = cameras.run.jobs.top_classes

    def top_classes_with_a_warning(*args, **kwargs):  # runs in the model's process
        warnings.warn("careful: odd pixels", UserWarning, stacklevel=1)
        return real_top_classes(*args, **kwargs)

    monkeypatch.setattr(cameras.run.jobs, "top_classes", top_classes_with_a_warning)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        argv = ["explain", *map(str, photos), "--out", str(tmp_path / "out"), "--workers", "0"]
        code = main(argv + GRADCAM)
    text = terminal.getvalue()
    assert code == 0 and "explain:" in text  # the bar was drawn
    assert text.count("careful: odd pixels") == 3
    # Each warning starts a line: after a newline or after the bar was cleared with \r.
    assert len(re.findall(r"(?:^|[\r\n])warning: UserWarning: careful: odd pixels\n", text)) == 3


def test_no_bar_and_whole_error_lines_when_stderr_is_not_a_terminal(capsys, tmp_path, photos):
    (photos[0].parent / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    argv = ["explain", photos[0].parent, "--out", out, *GRADCAM, "--workers", 0]
    code, stdout, err = run(capsys, *argv)
    assert code == 1
    assert "\r" not in err and "explain:" not in err
    assert err == f"error: {photos[0].parent / 'broken.png'}: not an image (unrecognised format)\n"


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_serve_refuses_a_non_finite_upload_limit(capsys, no_model, value):
    assert main(["serve", "--max-upload-mb", value]) == 2
    assert capsys.readouterr().err == (
        f"cameras serve: error: --max-upload-mb {value}: must be positive\n"
    )


def test_sanity_refuses_a_summary_name_that_is_an_input(capsys, tmp_path, chelsea):
    out = tmp_path / "out"
    out.mkdir()
    photo = out / "sanity_similarity.png"
    chelsea.resize((64, 48)).save(photo)
    before = photo.read_bytes()
    argv = ["sanity", photo, "--out", out, "--methods", "gradcam", "--blocks", 1]
    code, stdout, err = run(capsys, *argv)
    assert code == 2 and photo.read_bytes() == before
    assert err == (
        f"cameras sanity: error: --out {out}: sanity_similarity.png would overwrite an input\n"
    )

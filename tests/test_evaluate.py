"""``cameras evaluate``, the evaluation loop, resuming, summaries, and the shipped set."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cameras.apps.datasets import ClassResolver, check_record, read_json_list
from cameras.apps.evaluation import (
    RESULT_FIELDS,
    EvalSettings,
    Evaluator,
    Item,
    ResultStore,
    ResumeError,
    Summary,
    summarise,
    summary_markdown,
)
from cameras.cli import main
from cameras.core.images import load_image

ROOT = Path(__file__).resolve().parent.parent


def _build_module():
    spec = importlib.util.spec_from_file_location(
        "build_evalset", ROOT / "scripts" / "build_evalset.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def evalset(tmp_path_factory):
    """The shipped set, rebuilt from the installed packages (photos of absent packages
    are skipped with a warning)."""
    out = tmp_path_factory.mktemp("evalset")
    report = _build_module().build(out)
    for line in report.skipped:
        warnings.warn(f"evaluation set: {line}", stacklevel=1)
    return out, report


def subset(evalset_dir: Path, tmp_path: Path, names: list[str]) -> Path:
    """A JSON list with the named records of the built set (skipping absent photos)."""
    records = json.loads((evalset_dir / "evalset.json").read_text())
    chosen = [r for r in records if r["file"] in names]
    if not chosen:
        pytest.skip("none of the photos needed here is installed")
    for record in chosen:
        record["file"] = str(evalset_dir / record["file"])
    path = tmp_path / "subset.json"
    path.write_text(json.dumps(chosen))
    return path


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------ the shipped set


def test_shipped_set_builds_and_every_box_fits_its_photo(evalset, lite0):
    out, report = evalset
    shipped = json.loads((ROOT / "data" / "evalset" / "evalset.json").read_text())
    assert len(shipped) >= 15
    assert all("is not installed" in line for line in report.skipped), report.skipped
    # scikit-image is a test dependency: its photos are always there.
    assert {"skimage_chelsea.png", "skimage_coffee.png"} <= {p.name for p in report.written}
    _, _, classes = lite0
    annotations = read_json_list(out / "evalset.json", None, ClassResolver(classes))
    assert not annotations.errors
    assert len(annotations.records) == len(report.written)
    for record in annotations.records:
        assert record.objects and not record.problems, record.key
        image = load_image(record.file)
        checked, problems = check_record(record, image.width, image.height)
        assert not problems and checked.objects == record.objects, record.key
    names = {r["file"]: r for r in shipped}
    assert names["skimage_coffee.png"]["objects"][0]["class_index"] == classes.index("espresso")


def test_build_skips_photos_of_absent_packages_with_a_message(tmp_path, monkeypatch):
    module = _build_module()
    monkeypatch.setattr(module, "OPENCV_DOC", tmp_path / "no-opencv-doc")
    report = module.build(tmp_path / "set")
    shipped = json.loads((ROOT / "data" / "evalset" / "evalset.json").read_text())
    from_opencv = [r["file"] for r in shipped if r["source"]["package"] == "opencv-doc"]
    assert report.skipped == [f"{f}: package opencv-doc is not installed" for f in from_opencv]
    listed = json.loads((tmp_path / "set" / "evalset.json").read_text())
    assert [r["file"] for r in listed] == [p.name for p in report.written]
    assert len(listed) == len(shipped) - len(from_opencv)


def test_build_refuses_to_write_into_the_annotation_folder():
    with pytest.raises(ValueError, match="annotations' own folder"):
        _build_module().build(ROOT / "data" / "evalset")


# ------------------------------------------------------------------------------ end to end


def test_evaluate_end_to_end(evalset, tmp_path, capsys):
    data = subset(evalset[0], tmp_path, ["skimage_chelsea.png", "skimage_coffee.png"])
    out = tmp_path / "out"
    code = main(
        [
            "evaluate",
            str(data),
            "--methods",
            "cameras,gradcam",
            "--scales",
            "224,324",
            "--steps",
            "3",
            "--workers",
            "1",
            "--batch-size",
            "8",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    rows = read_rows(out / "results.csv")
    assert [(r["record"].split("/")[-1], r["method"]) for r in rows] == [
        ("skimage_chelsea.png", "cameras"),
        ("skimage_chelsea.png", "gradcam"),
        ("skimage_coffee.png", "cameras"),
        ("skimage_coffee.png", "gradcam"),
    ]
    for row in rows:
        assert row["pointing"] in ("0.0", "1.0")
        assert 0 <= float(row["energy"]) <= 1
        assert float(row["rho_plus"]) > 0 and float(row["rho_minus"]) > 0
        assert 0 <= float(row["insertion"]) <= 1 and 0 <= float(row["deletion"]) <= 1
    curves = read_rows(out / "curves.csv")
    assert len(curves) == 8 and all(len(c["values"].split()) == 4 for c in curves)
    summary = (out / "summary.md").read_text()
    assert summary.strip() in printed
    assert "| cameras |" in summary and "| gradcam |" in summary
    assert len(read_rows(out / "summary.csv")) == 2 * 6
    assert (out / "curves.png").stat().st_size > 1000


def test_bad_annotations_are_reported_and_the_rest_runs(evalset, tmp_path, capsys):
    data = json.loads(subset(evalset[0], tmp_path, ["skimage_coffee.png"]).read_text())
    good = data[0]
    records = [
        {
            "file": str(tmp_path / "missing.jpg"),
            "objects": [{"class_index": 1, "boxes": [[0, 0, 5, 5]]}],
        },
        {
            "file": good["file"],
            "objects": [
                {"class_index": 967, "boxes": [[0, 0, 900, 900]]},  # outside the 600x400 photo
                {"class_index": 5000, "boxes": [[0, 0, 5, 5]]},  # unknown class
                {"class_index": 967, "boxes": good["objects"][0]["boxes"]},
            ],
        },
    ]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    out = tmp_path / "out"
    code = main(
        [
            "evaluate",
            str(path),
            "--methods",
            "gradcam",
            "--metrics",
            "pointing,energy",
            "--workers",
            "0",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "missing.jpg: no such file" in err
    assert "lies outside the 600x400 image" in err and "out of range" in err
    rows = read_rows(out / "results.csv")
    assert [(r["class_index"], r["method"]) for r in rows] == [("967", "gradcam")]
    assert rows[0]["pointing"] == "1.0"
    assert len((out / "problems.txt").read_text().splitlines()) == 3


def test_resume_continues_without_recomputing_or_losing_rows(evalset, tmp_path, monkeypatch):
    names = ["skimage_chelsea.png", "skimage_coffee.png", "skimage_rocket.jpg"]
    data = subset(evalset[0], tmp_path, names)
    out = tmp_path / "out"
    args = [
        "evaluate",
        str(data),
        "--methods",
        "gradcam",
        "--metrics",
        "pointing,rho_plus,deletion",
        "--steps",
        "2",
        "--workers",
        "0",
        "--out",
        str(out),
    ]
    original_add = ResultStore.add
    calls = {"add": 0, "scored": []}

    def crash_on_second(self, key, rows):
        calls["add"] += 1
        if calls["add"] == 2:
            # Die half-way through writing the second record: one row, cut mid-line.
            line = ",".join(str(rows[0].get(h, "")) for h in RESULT_FIELDS)
            with open(self.results, "a") as handle:
                handle.write(line[: len(line) // 2])
            raise KeyboardInterrupt
        original_add(self, key, rows)

    monkeypatch.setattr(ResultStore, "add", crash_on_second)
    assert main(args) == 130
    before = read_rows(out / "results.csv")  # the cut-off line reads as a broken row
    finished = (out / "done.txt").read_text().split()
    assert len(finished) == 1

    monkeypatch.setattr(ResultStore, "add", original_add)
    original_call = Evaluator.__call__

    def counting(self, items):
        calls["scored"].extend(item.record.key for item in items)
        return original_call(self, items)

    monkeypatch.setattr(Evaluator, "__call__", counting)
    assert main(args + ["--resume"]) == 0
    after = read_rows(out / "results.csv")
    keys = [(r["record"], r["class_index"], r["method"]) for r in after]
    assert len(keys) == len(set(keys)) == 3  # no duplicates, none lost
    assert finished[0] not in calls["scored"] and len(calls["scored"]) == 2
    assert after[0] == before[0]  # the finished record's row, untouched
    assert (out / "done.txt").read_text().split() == sorted(r["record"] for r in after)
    curves = read_rows(out / "curves.csv")
    assert sorted(c["record"] for c in curves) == sorted(r["record"] for r in after)


def test_existing_results_need_resume_and_matching_settings(evalset, tmp_path, capsys):
    data = subset(evalset[0], tmp_path, ["skimage_chelsea.png"])
    out = tmp_path / "out"
    base = [
        "evaluate",
        str(data),
        "--metrics",
        "pointing",
        "--methods",
        "gradcam",
        "--workers",
        "0",
        "--out",
        str(out),
    ]
    assert main(base) == 0
    assert main(base) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(base + ["--resume", "--tolerance", "5"]) == 2
    assert "tolerance was 15.0 and is now 5.0" in capsys.readouterr().err
    assert main(base + ["--resume"]) == 0  # nothing left to do; still summarises
    assert len(read_rows(out / "results.csv")) == 1


def test_usage_errors(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")]) == 2
    assert "none.json: no such file" in capsys.readouterr().err
    path = tmp_path / "d.json"
    path.write_text("[]")
    assert main(["evaluate", str(path), "--methods", "magic", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith(
        "cameras evaluate: error: --methods: unknown method 'magic'; choose from cameras,"
    )
    assert main(["evaluate", str(path), "--metrics", "accuracy", "--out", str(tmp_path / "o")]) == 2
    assert "metrics: unknown accuracy" in capsys.readouterr().err


# ---------------------------------------------------------------------- the pure evaluator


class Identity:
    def __call__(self, image):
        raise NotImplementedError

    def normalise(self, pixels):
        return pixels

    def denormalise(self, x):
        return x


def test_evaluator_batches_by_size_and_keeps_input_order():
    from helpers import TinyNet

    from cameras.apps.datasets import Record

    torch.manual_seed(0)
    model = TinyNet(num_classes=5).eval()
    sizes = [(32, 40), (48, 32), (32, 40)]
    items = []
    for n, (h, w) in enumerate(sizes):
        objects = {1: ((0, 0, 10, 10),), 3: ((5, 5, w, h),)} if n != 1 else {2: ((0, 0, w, h),)}
        record = Record(f"r{n}", Path(f"r{n}.png"), objects)
        items.append(Item(record, torch.rand(3, h, w), (w * 2, h * 2)))
    items.append(Item(Record("bad", Path("bad.png"), {}), None, None, error="unreadable"))
    settings = EvalSettings(methods=("gradcam", "cameras"), steps=3, batch_size=3, scales=(32, 48))
    evaluator = Evaluator(model, Identity(), None, settings)
    rows = evaluator(items)
    order = [(r["record"], r["class_index"], r["method"]) for r in rows]
    assert order == [
        (f"r{n}", c, m)
        for n, cs in ((0, (1, 3)), (1, (2,)), (2, (1, 3)))
        for c in cs
        for m in ("gradcam", "cameras")
    ]
    # Scoring one item at a time gives the same numbers as the grouped batches.
    alone = [row for item in items for row in evaluator([item])]
    for a, b in zip(rows, alone, strict=True):
        for metric in ("pointing", "energy", "rho_plus", "rho_minus", "insertion", "deletion"):
            assert a[metric] == pytest.approx(b[metric], rel=1e-4, abs=1e-6, nan_ok=True), metric
        np.testing.assert_allclose(a["deletion_curve"], b["deletion_curve"], atol=1e-6)


# ----------------------------------------------------------------------------- summaries


def test_summary_mean_and_t_interval_by_hand():
    rows = [{"method": "a", "pointing": v} for v in (1.0, 2.0, 3.0)]
    rows += [{"method": "b", "pointing": v} for v in (5.0, float("nan"))]
    a, b = summarise(rows, ["a", "b"], ["pointing"])
    # mean 2, sample sd 1, t(0.975, 2) = 4.302653: half-width 4.302653 / sqrt(3).
    assert a.mean == 2.0 and a.n == 3 and a.missing == 0
    assert a.half_width == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert b.n == 1 and b.missing == 1 and b.mean == 5.0 and math.isnan(b.half_width)
    table = summary_markdown([a, b])
    assert "| a | 2.000 ± 2.484 (n=3) |" in table and "| b | 5.000 (n=1) |" in table


def test_summary_markdown_layout():
    table = summary_markdown(
        [Summary("x", "pointing", 4, 0, 0.5, 0.1), Summary("x", "deletion", 4, 0, 0.25, 0.05)]
    )
    lines = table.splitlines()
    assert lines[0] == "| method | pointing ↑ | deletion ↓ |"
    assert lines[2] == "| x | 0.500 ± 0.100 | 0.250 ± 0.050 |"
    assert "over 4 image-class pairs" in lines[-1]


def test_result_store_drops_unfinished_rows_on_resume(tmp_path):
    store = ResultStore(tmp_path)
    assert store.start({"a": 1}, resume=False) == set()
    row = {h: "" for h in RESULT_FIELDS} | {"record": "one", "method": "m", "pointing": 1.0}
    store.add("one", [row, row | {"method": "n"}])
    with open(store.results, "a") as handle:  # a record cut off: rows, no done marker
        handle.write("two,,,,m,,,1.0,,,,,,\ntwo,,,")
    with open(store.done_path, "a") as handle:
        handle.write("tw")  # a done marker cut off mid-write
    with pytest.raises(ResumeError, match="already holds results"):
        ResultStore(tmp_path).start({"a": 1}, resume=False)
    with pytest.raises(ResumeError, match="a was 1 and is now 2"):
        ResultStore(tmp_path).start({"a": 2}, resume=True)
    again = ResultStore(tmp_path)
    assert again.start({"a": 1}, resume=True) == {"one"}
    assert [(r["record"], r["method"]) for r in again.rows()] == [("one", "m"), ("one", "n")]
    assert store.done_path.read_text() == "one\n"

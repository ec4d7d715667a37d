"""The streaming local pipeline and Ray: the same files and rows as one image at a time,
batching by size, the background writer, faults (broken files, killed actors, a killed
driver resumed), and Ray kept optional. The Ray tests share one local Ray (conftest)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import cameras
from cameras.apps import evaluation
from cameras.cli import main
from cameras.core.images import load_image, resize_map
from cameras.run.engine import BackgroundWriter, same_size_batches, stream_local
from cameras.run.items import DecodedImage, ImageTask
from cameras.run.jobs import ImageExplainer
from cameras.run.render import render_outputs

FAST = ["--scales", "224,324"]
ROOT = Path(__file__).resolve().parent.parent


def make_photos(folder: Path, chelsea: Image.Image, coffee: Image.Image) -> Path:
    """Four photos, two pairs of equal size (so batches of two form)."""
    folder.mkdir(parents=True, exist_ok=True)
    chelsea.save(folder / "a_chelsea.png")
    ImageOps.mirror(chelsea).save(folder / "b_chelsea_mirrored.png")
    coffee.save(folder / "c_coffee.png")
    ImageOps.mirror(coffee).save(folder / "d_coffee_mirrored.png")
    return folder


def one_at_a_time_maps(model, prep, folder: Path, scales, target=None) -> dict[str, np.ndarray]:
    """The reference: each image alone through the public API, resized to its size."""
    method = cameras.CAMERAS(model, scales=scales)
    out = {}
    for path in sorted(folder.iterdir()):
        if path.suffix != ".png":
            continue
        image = load_image(path)
        saliency = method(prep(image)[None], targets=target).maps[0]
        out[f"{path.stem}_cameras.npy"] = resize_map(saliency, image.height, image.width)
    return out


def assert_same_outputs(out: Path, reference: dict[str, np.ndarray]) -> None:
    """Exactly the expected files; maps within 1e-5; overlays at the image size."""
    names = sorted(p.name for p in out.iterdir())
    expected = sorted([*reference, *(n.replace(".npy", ".png") for n in reference)])
    assert names == expected
    for name, want in reference.items():
        got = np.load(out / name)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5, name
        with Image.open(out / name.replace(".npy", ".png")) as picture:
            assert picture.size == (want.shape[1], want.shape[0])


@pytest.fixture(scope="module")
def photos(tmp_path_factory, chelsea, coffee) -> Path:
    return make_photos(tmp_path_factory.mktemp("photos"), chelsea, coffee)


@pytest.fixture(scope="module")
def reference(lite0, photos) -> dict[str, np.ndarray]:
    model, prep, _ = lite0
    return one_at_a_time_maps(model, prep, photos, [224, 324])


def test_pipeline_writes_the_same_files_as_one_at_a_time(photos, reference, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["explain", str(photos), "--out", str(out), "--workers", "2", "--batch-size", "4"]
    assert main(argv + FAST) == 0
    printed = capsys.readouterr().out
    assert_same_outputs(out, reference)
    # Printed in input order, whatever finished first.
    firsts = [line.split(":")[0] for line in printed.splitlines() if "top-5" in line]
    assert firsts == [str(p) for p in sorted(photos.iterdir())]


def photos_and_a_broken_file(photos: Path, tmp_path: Path) -> Path:
    """A copy of the photos plus broken.png, which is not an image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in photos.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_text("not an image")
    return folder


def test_pipeline_skips_a_broken_file_and_names_it(photos, reference, tmp_path, capsys):
    folder = photos_and_a_broken_file(photos, tmp_path)
    out = tmp_path / "out"
    argv = ["explain", str(folder), "--out", str(out), "--workers", "1", "--batch-size", "3"]
    assert main(argv + FAST) == 1
    assert f"error: {folder / 'broken.png'}: not an image" in capsys.readouterr().err
    assert_same_outputs(out, reference)


class CountingMethod:
    """A real method that records the batch size of every call."""

    def __init__(self, method) -> None:
        self.method = method
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, x, targets=None):
        self.calls.append(tuple(x.shape))
        return self.method(x, targets=targets)


def test_same_size_images_share_a_batch_and_results_keep_input_order():
    from helpers import TinyNet

    torch.manual_seed(0)
    model = TinyNet(num_classes=5).eval()
    sizes = [(40, 48), (32, 48), (40, 48), (40, 48), (32, 48)]
    items = [
        DecodedImage(
            ImageTask(n, f"p{n}.png", f"p{n}"),
            torch.rand(3, h, w),
            np.zeros((h * 2, w * 2, 3), np.uint8),
        )
        for n, (h, w) in enumerate(sizes)
    ]
    items.insert(2, DecodedImage(ImageTask(9, "bad.png", "bad"), None, None, "bad.png: broken"))
    counting = CountingMethod(cameras.CAMERAS(model, scales=[32, 48]))
    results = ImageExplainer(counting, target=None, batch_size=2)(items)
    assert [r.task.index for r in results] == [0, 1, 9, 2, 3, 4]
    assert results[2].error == "bad.png: broken" and results[2].saliency is None
    assert [c[0] for c in counting.calls] == [2, 1, 2]  # (0, 2), (3), then (1, 4)
    assert [c[2:] for c in counting.calls] == [(40, 48), (40, 48), (32, 48)]
    alone = ImageExplainer(cameras.CAMERAS(model, scales=[32, 48]), None, 1)
    for result, item in zip(results, items, strict=True):
        if item.error is None:
            single = alone([item])[0]
            assert result.saliency.shape == tuple(item.x.shape[1:])  # resized when rendered
            np.testing.assert_allclose(result.saliency, single.saliency, atol=1e-5)
            assert result.target == single.target


def test_same_size_batches_groups_in_first_seen_order():
    sizes = [(1, 2), (3, 4), (1, 2), (1, 2), (3, 4), (1, 2)]
    assert same_size_batches(sizes, 2) == [[0, 2], [3, 5], [1, 4]]
    assert same_size_batches([], 3) == []


def test_stream_local_loads_in_workers_and_keeps_order():
    out = list(stream_local(list(range(7)), _square, _negate_all, workers=2, batch_size=3))
    assert out == [-(n * n) for n in range(7)]
    assert list(stream_local([], _square, _negate_all, workers=0, batch_size=1)) == []
    with pytest.raises(ValueError, match="batch size"):
        list(stream_local([1], _square, _negate_all, workers=0, batch_size=0))


def _square(n: int) -> int:
    return n * n


def _negate_all(items: list[int]) -> list[int]:
    return [-n for n in items]


def test_background_writer_writes_in_order_and_hands_back_a_failure():
    written = []
    with BackgroundWriter(written.append, max_pending=2) as writer:
        for n in range(20):
            writer.submit(n)
    assert written == list(range(20))

    def fail_on_three(n):
        if n == 3:
            raise KeyboardInterrupt
        written.append(n)

    written.clear()
    with pytest.raises(KeyboardInterrupt):
        with BackgroundWriter(fail_on_three, max_pending=1) as writer:
            for n in range(50):
                writer.submit(n)
    assert written == [0, 1, 2]  # nothing written after the failure


def _results_for_rendering(chelsea, coffee, count: int):
    """``count`` ready results (small maps, real photos) for the writing side."""
    from cameras.run.items import ImageResult

    photos = [np.asarray(chelsea), np.asarray(coffee)]
    results = []
    for index in range(count):
        pixels = photos[index % 2]
        height, width = pixels.shape[0] // 4, pixels.shape[1] // 4  # a model-sized map
        ramp = np.linspace(0, 1, height * width, dtype=np.float32).reshape(height, width)
        task = ImageTask(index, f"photo{index}.png", f"photo{index}")
        results.append(ImageResult(task, ramp, 1, [224], [(1, 0.5)], pixels))
    return results


def _die_on_the_first_image(result, cmap, alpha):
    """Stands in for render_outputs: the render process (not this one) dies on image 0."""
    if result.task.index == 0 and os.getpid() != THIS_PROCESS:
        os._exit(1)
    return render_outputs(result, cmap, alpha)


THIS_PROCESS = os.getpid()


def _note_index(order: list[int], result, png, error) -> None:
    order.append(result.task.index)


def test_overlays_rendered_in_a_process_equal_those_rendered_here(chelsea, coffee, tmp_path):
    """The pipeline renders overlays in a separate process: byte-identical files to the
    one-at-a-time path, written in order."""
    from cameras.run.jobs import save_explanations
    from cameras.run.outputs import ImageWriter

    results = _results_for_rendering(chelsea, coffee, 3)
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    for out, background in ((here, False), (there, True)):
        order: list[int] = []
        writer = ImageWriter(out, "cameras", [])
        pairs = [(result, None) for result in results]
        report = partial(_note_index, order)
        assert save_explanations(pairs, writer, report=report, background=background) == 0
        assert order == [0, 1, 2]
    for path in here.iterdir():
        assert (there / path.name).read_bytes() == path.read_bytes(), path.name


def test_a_dead_render_process_loses_no_image(chelsea, coffee, tmp_path, monkeypatch):
    """The render process dies on the first image: every image is still written (the
    unfinished ones rendered here), in order, and none is reported as failed."""
    from cameras.run import jobs, outputs, render

    monkeypatch.setattr(render, "render_outputs", _die_on_the_first_image)
    reports: list[tuple[int, str | None]] = []
    writer = outputs.ImageWriter(tmp_path, "cameras", [])
    pairs = [(result, None) for result in _results_for_rendering(chelsea, coffee, 3)]
    report = lambda result, png, error: reports.append((result.task.index, error))  # noqa: E731
    assert jobs.save_explanations(pairs, writer, report=report) == 0
    assert reports == [(0, None), (1, None), (2, None)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"photo{i}_cameras{suffix}" for i in range(3) for suffix in (".npy", ".png")
    ]


def write_records(folder: Path) -> Path:
    """A JSON list over the four photos: cats are 285 (Egyptian cat), cups 967 (espresso)."""
    records = []
    for path in sorted(folder.glob("*.png")):
        width, height = Image.open(path).size
        cls = 285 if "chelsea" in path.name else 967
        records.append(
            {
                "file": str(path),
                "objects": [{"class_index": cls, "boxes": [[width // 4, 0, width, height]]}],
            }
        )
    data = folder.parent / f"{folder.name}.json"
    data.write_text(json.dumps(records))
    return data


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    """The same rows in the same order, every metric within 1e-5 (time aside)."""
    key = ("record", "class_index", "method")
    assert [tuple(r[k] for k in key) for r in got] == [tuple(r[k] for k in key) for r in want]
    for a, b in zip(got, want, strict=True):
        assert a["top1"] == b["top1"]
        for column in ("probability", *evaluation.METRICS):
            if b[column] == "":
                assert a[column] == ""
            else:
                assert abs(float(a[column]) - float(b[column])) <= 1e-5, column


EVAL_ARGS = ["--methods", "cameras,gradcam", "--steps", "4", *FAST]


@pytest.fixture(scope="module")
def eval_data(photos) -> Path:
    return write_records(photos)


@pytest.fixture(scope="module")
def eval_reference(eval_data, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("eval-one") / "out"
    argv = ["evaluate", str(eval_data), "--out", str(out), *EVAL_ARGS]
    assert main(argv + ["--workers", "0", "--batch-size", "1"]) == 0
    return read_rows(out / "results.csv")


def test_evaluate_pipeline_rows_equal_one_at_a_time(eval_data, eval_reference, tmp_path):
    out = tmp_path / "out"
    argv = ["evaluate", str(eval_data), "--out", str(out), *EVAL_ARGS]
    assert main(argv + ["--workers", "2", "--batch-size", "4"]) == 0
    assert_same_rows(read_rows(out / "results.csv"), eval_reference)
    assert len(eval_reference) == 8


def test_resume_after_the_driver_is_killed(eval_data, eval_reference, tmp_path, monkeypatch):
    """SIGKILL the driver process once a record is stored; --resume finishes the rest
    without redoing finished records, and the rows match an uninterrupted run."""
    out = tmp_path / "out"
    argv = ["evaluate", str(eval_data), "--out", str(out), *EVAL_ARGS, "--batch-size", "1"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "cameras", *argv, "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done = out / "done.txt"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            if done.exists() and done.read_text().strip():
                break
            time.sleep(0.02)
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.wait()
    finished = done.read_text().split()
    assert 1 <= len(finished) < 4, "the driver was not killed mid-run"

    scored = []
    original = evaluation.Evaluator.__call__

    def counting(self, items):
        scored.extend(item.record.key for item in items)
        return original(self, items)

    monkeypatch.setattr(evaluation.Evaluator, "__call__", counting)
    assert main(argv + ["--resume", "--workers", "0"]) == 0
    assert not set(scored) & set(finished) and len(scored) == 4 - len(finished)
    rows = read_rows(out / "results.csv")
    assert_same_rows(rows, eval_reference)  # none lost, none twice, same numbers
    assert sorted(done.read_text().split()) == sorted({r["record"] for r in rows})


# ----------------------------------------------------------------------- Ray stays optional


def test_import_cameras_never_imports_ray():
    code = (
        "import sys, cameras, cameras.run.jobs, cameras.run.ray, cameras.cli; "
        "cameras.cli.build_parser(); "
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_ray_flag_without_ray_is_a_usage_error(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    out = str(tmp_path / "out")
    assert main(["explain", str(photos), "--out", out, "--ray"]) == 2
    err = capsys.readouterr().err
    assert "--ray: Ray is not installed; pip install 'cameras[ray]'" in err
    assert "Traceback" not in err


def test_bad_scale_out_arguments_are_usage_errors(photos, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["explain", str(photos), "--out", out, "--batch-size", "0"]) == 2
    assert "--batch-size 0: must be at least 1" in capsys.readouterr().err
    assert main(["explain", str(photos), "--out", out, "--workers", "-1"]) == 2
    assert "--workers -1: must be 0 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # argparse: the folder was taken as --ray's value
        main(["explain", "--ray", str(photos), "--out", out])
    assert stop.value.code == 2
    assert "is not a Ray address" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- Ray


@pytest.mark.usefixtures("ray_local")
def test_explain_on_ray_writes_the_same_files_and_skips_a_broken_one(
    photos, reference, tmp_path, capsys
):
    folder = photos_and_a_broken_file(photos, tmp_path)
    out = tmp_path / "out"
    argv = ["explain", str(folder), "--out", str(out), "--batch-size", "2", *FAST, "--ray"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert f"error: {folder / 'broken.png'}: not an image" in captured.err
    assert_same_outputs(out, reference)
    firsts = [line.split(":")[0] for line in captured.out.splitlines() if "top-5" in line]
    assert firsts == [str(p) for p in sorted(folder.iterdir()) if p.name != "broken.png"]


@pytest.mark.usefixtures("ray_local")
def test_evaluate_on_ray_gives_the_same_rows(eval_data, eval_reference, tmp_path):
    out = tmp_path / "out"
    argv = ["evaluate", str(eval_data), "--out", str(out), *EVAL_ARGS, "--batch-size", "2"]
    assert main(argv + ["--ray"]) == 0
    assert_same_rows(read_rows(out / "results.csv"), eval_reference)


@pytest.mark.usefixtures("ray_local")
def test_a_killed_actor_is_replaced_and_nothing_is_lost_or_doubled(lite0, photos, tmp_path):
    """SIGKILL the model actor's process after the first result: Ray starts another and
    reruns the unfinished batches; every image is written exactly once, maps exact."""
    from cameras.run.jobs import save_explanations
    from cameras.run.outputs import ImageWriter, image_tasks
    from cameras.run.ray import ExplainJob, explain_ray
    from cameras.session import SessionSpec

    model, prep, _ = lite0
    folder = tmp_path / "photos"
    folder.mkdir()
    for copy in (1, 2):
        for path in sorted(photos.iterdir()):
            (folder / f"{copy}_{path.name}").write_bytes(path.read_bytes())
    paths = sorted(folder.iterdir())
    job = ExplainJob(SessionSpec(device="cpu", scales=(224, 324)), "cameras", None)
    killed: list[int] = []
    seen: list[tuple[int, int]] = []

    def kill_first_worker(result, png, error) -> None:
        pid = int(result.worker.rsplit(":", 1)[1])
        if not killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        seen.append((result.task.index, pid))

    out = tmp_path / "out"
    out.mkdir()
    stream = explain_ray(image_tasks(paths), job, prep, workers=1, batch_size=1)
    writer = ImageWriter(out, "cameras", paths)
    assert save_explanations(stream, writer, report=kill_first_worker) == 0
    assert [index for index, _ in seen] == list(range(len(paths)))  # each once, in order
    assert any(pid != killed[0] for _, pid in seen), "no replacement actor did any work"
    method = cameras.CAMERAS(model, scales=[224, 324])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{p.stem}_cameras{suffix}" for p in paths for suffix in (".npy", ".png")
    )
    for path in paths:
        image = load_image(path)
        want = resize_map(method(prep(image)[None]).maps[0], image.height, image.width)
        assert np.abs(np.load(out / f"{path.stem}_cameras.npy") - want).max() <= 1e-5


@pytest.mark.usefixtures("ray_local")
def test_resume_on_ray_after_the_driver_stops(eval_data, eval_reference, tmp_path, monkeypatch):
    """The driver dies half-way through storing a record; --resume --ray computes only
    the unfinished records and the rows match an uninterrupted run."""
    import cameras.run.ray

    out = tmp_path / "out"
    argv = ["evaluate", str(eval_data), "--out", str(out), *EVAL_ARGS, "--batch-size", "1"]
    original_add = evaluation.ResultStore.add
    calls = []

    def die_on_second(self, key, rows):
        calls.append(key)
        if len(calls) == 2:
            with open(self.results, "a") as handle:  # half a line, then the driver is gone
                handle.write(f"{key},{rows[0]['file']},28")
            raise KeyboardInterrupt
        original_add(self, key, rows)

    monkeypatch.setattr(evaluation.ResultStore, "add", die_on_second)
    assert main(argv + ["--ray"]) == 130
    finished = (out / "done.txt").read_text().split()
    assert len(finished) == 1
    monkeypatch.setattr(evaluation.ResultStore, "add", original_add)

    asked = []
    original_ray = cameras.run.ray.evaluate_ray

    def recording(records, *args, **kwargs):
        asked.extend(record.key for record in records)
        yield from original_ray(records, *args, **kwargs)

    monkeypatch.setattr(cameras.run.ray, "evaluate_ray", recording)
    assert main(argv + ["--resume", "--ray"]) == 0
    assert len(asked) == 3 and finished[0] not in asked
    assert_same_rows(read_rows(out / "results.csv"), eval_reference)


def test_pool_plan_one_actor_per_gpu_or_per_machine():
    from cameras.run.ray import PoolPlan, plan_pool

    gpus = {"CPU": 64.0, "GPU": 8.0}
    assert plan_pool(gpus, 2, None, "auto") == PoolPlan(8, 1.0, None)
    assert plan_pool(gpus, 2, 3, "auto") == PoolPlan(3, 1.0, None)
    assert plan_pool(gpus, 2, None, "cpu") == PoolPlan(2, 0.0, 32)  # --device cpu: no GPUs
    assert plan_pool({"CPU": 12.0}, 3, None, "auto") == PoolPlan(3, 0.0, 4)
    assert plan_pool({"CPU": 2.0}, 1, None, "auto", max_threads=1) == PoolPlan(1, 0.0, 1)


@pytest.mark.usefixtures("ray_local")
def test_a_model_that_cannot_load_on_the_actors_fails_the_job_in_one_line(lite0, photos, tmp_path):
    """The actor's constructor raises (here: a weights file the workers cannot read): the
    job stops with RayJobError naming the cause, instead of restarting the actor forever."""
    from cameras.run.outputs import image_tasks
    from cameras.run.ray import ExplainJob, RayJobError, explain_ray
    from cameras.session import SessionSpec

    _, prep, _ = lite0
    missing = tmp_path / "missing.pth"
    job = ExplainJob(
        SessionSpec(weights=str(missing), device="cpu", scales=(224,)), "cameras", None
    )
    started = time.perf_counter()
    with pytest.raises(RayJobError) as failure:
        list(explain_ray(image_tasks(sorted(photos.iterdir())), job, prep, workers=1))
    message = str(failure.value)
    assert "\n" not in message and f"weights file {missing} does not exist" in message
    assert time.perf_counter() - started < 60


@pytest.mark.usefixtures("ray_local")
def test_ray_keeps_a_bounded_window_of_batches_in_flight(tmp_path):
    """While the driver holds back (a slow writer), no more than WINDOW_PER_ACTOR batches
    per actor are decoded ahead; then every result still comes, once, in order."""
    from cameras.run.ray import WINDOW_PER_ACTOR, stream_ray

    started = tmp_path / "loaded"
    started.mkdir()

    # Defined here so that Ray ships them by value to its workers.
    def load(index: int) -> int:
        (started / str(index)).touch()
        return index

    class TimesTen:
        def build(self, batch_size: int):
            return lambda items: [10 * item for item in items]

    stream = stream_ray(list(range(30)), load, TimesTen(), workers=1, batch_size=2)
    assert next(stream) == 0
    time.sleep(3)  # the driver waits; Ray would decode all 30 if nothing held it back
    assert 2 <= len(list(started.iterdir())) <= WINDOW_PER_ACTOR * 2
    assert list(stream) == [10 * index for index in range(1, 30)]
    assert sorted(int(p.name) for p in started.iterdir()) == list(range(30))

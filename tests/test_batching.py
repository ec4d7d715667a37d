"""Batched folders (issue 22): look-ahead batching by model-input size, the batch size
chosen by the device, --input-size letterboxing, the writer's process pool, and a batch
that does not fit in the device's memory split and retried."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cameras.cli import main
from cameras.run.batching import (
    CPU_BATCH_SIZE,
    EVALUATE_CPU_BATCH_SIZE,
    MAX_AUTO_BATCH,
    auto_batch_size,
    batch_size_for,
    evaluate_batch_size,
    image_call_bytes,
)
from cameras.run.engine import look_ahead_batches, stream_local
from cameras.run.items import DecodedImage, ImageResult, ImageTask
from cameras.run.jobs import ImageExplainer, RecordScorer, decode_image, save_explanations
from cameras.run.letterbox import Letterbox
from cameras.run.outputs import ImageWriter
from cameras.run.render import render_and_store, render_outputs, render_processes

FAST = ["--scales", "64,96", "--workers", "0"]

# ----------------------------------------------------------------- look-ahead batching


def test_look_ahead_batches_equal_sizes_that_are_not_consecutive():
    keys = ["a", "b", "a", None, "c", "a", "b", "a"]
    batches = list(look_ahead_batches(keys, batch_size=3, window=8, key=lambda k: k))
    positions = [[p for p, _ in batch] for batch in batches]
    # An item without a size goes alone at once; "a" fills a batch across b, c and the
    # failed item; the rest leave at the end, oldest group first.
    assert positions == [[3], [0, 2, 5], [1, 6], [4], [7]]


def test_the_look_ahead_holds_at_most_its_window_and_keeps_input_order():
    """Ten sizes in turn: no batch ever fills, so only the window's bound sends them."""
    loaded: list[int] = []
    held: list[int] = []
    out: list[int] = []

    def load(n: int):
        loaded.append(n)
        return SimpleNamespace(n=n, x=torch.zeros(1, n % 10 + 1))

    def compute(items):
        return [item.n for item in items]

    for result in stream_local(list(range(60)), load, compute, 0, batch_size=4, window=12):
        out.append(result)
        held.append(len(loaded) - len(out) + 1)  # read but not yet handed on, this one included
    assert out == list(range(60))
    assert max(held) <= 12
    with pytest.raises(ValueError, match="window"):
        list(look_ahead_batches([1, 2], batch_size=4, window=2))


def _mixed_folder(folder: Path, chelsea, coffee) -> Path:
    """Six photos of three sizes, no two equal ones next to each other."""
    folder.mkdir()
    sizes = [(96, 64), (64, 96), (96, 64), (80, 80), (64, 96), (96, 64)]
    for n, size in enumerate(sizes):
        photo = (chelsea if n % 2 else coffee).resize(size)
        photo.save(folder / f"{n}_photo.png")
    return folder


def test_a_batched_folder_of_mixed_sizes_writes_the_bytes_of_one_at_a_time(
    chelsea, coffee, tmp_path, monkeypatch
):
    """The command line, batches of 4 against batches of 1, on a method whose batched call
    is exact by construction (Lite0's CPU convolutions differ in the last bits between
    batch sizes at some input sizes: docs/cli.md): every PNG and NPY byte equal."""
    from cameras.cli import explain

    method = BrightnessMethod()
    monkeypatch.setattr(explain, "method_of", lambda session, name: method)
    folder = _mixed_folder(tmp_path / "photos", chelsea, coffee)
    for batch in ("1", "4"):
        argv = ["explain", str(folder), "--out", str(tmp_path / batch), "--batch-size", batch]
        assert main(argv + ["--workers", "0"]) == 0
    assert method.calls[:6] == [1] * 6 and sorted(method.calls[6:]) == [1, 2, 3]  # 3 sizes
    written = sorted(p.name for p in (tmp_path / "1").iterdir())
    assert len(written) == 12
    for name in written:
        assert (tmp_path / "4" / name).read_bytes() == (tmp_path / "1" / name).read_bytes(), name


# ----------------------------------------------------------------- the batch size chosen


def test_the_automatic_batch_size_is_the_devices():
    gb = 2**30
    assert CPU_BATCH_SIZE == 1  # measured: batching is slower on the CPU (docs/benchmarks.md)
    assert batch_size_for("cpu", 100 * gb, 0.1 * gb) == CPU_BATCH_SIZE
    assert batch_size_for("cuda", 10 * gb, 1 * gb) == 7  # 70 % of the free memory
    assert batch_size_for("cuda", 10 * gb, 3 * gb) == 2
    assert batch_size_for("cuda", 1 * gb, 3 * gb) == 1  # not even one fits: 1 (then split)
    assert batch_size_for("cuda", 140 * gb, 0.2 * gb) == MAX_AUTO_BATCH
    assert batch_size_for("cuda", None, 1 * gb) == 1 and batch_size_for("cuda", gb, None) == 1


def test_the_per_image_cost_counts_every_scale_and_the_cpu_keeps_its_size():
    from helpers import TinyNet

    import cameras

    model = TinyNet(num_classes=5).eval()
    x = torch.rand(1, 3, 48, 64)
    one = image_call_bytes(cameras.CAMERAS(model, scales=[48]), x)
    two = image_call_bytes(cameras.CAMERAS(model, scales=[48, 96]), x)
    assert 0 < one < two
    assert auto_batch_size(cameras.CAMERAS(model), x) == CPU_BATCH_SIZE
    # evaluate's batch also sizes its metrics' passes: off a GPU it keeps its 16.
    assert evaluate_batch_size(cameras.CAMERAS(model), 32) == EVALUATE_CPU_BATCH_SIZE == 16


# ----------------------------------------------------------------- --input-size


class BrightnessMethod:
    """A stand-in method whose map is the input's first channel (min-max normalised): a
    map whose content is known. ``largest``: batches above it run out of memory;
    ``never``: a batch holding an input this bright never fits."""

    name, layer_name = "cameras", "brightness"

    def __init__(self, largest: int = 64, never: float = float("inf")) -> None:
        self.largest, self.never = largest, never
        self.calls: list[int] = []

    def __call__(self, x, targets=None):
        self.calls.append(len(x))
        if len(x) > self.largest or bool((x.mean((1, 2, 3)) > self.never).any()):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        flat = x[:, 0].flatten(1)
        low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
        maps = (x[:, 0] - low) / (high - low)
        return SimpleNamespace(
            maps=maps,
            targets=[0] * len(x),
            scales=[[] for _ in x],
            probabilities=torch.full((len(x), 3), 1 / 3),
            scale_warnings=[None] * len(x),
        )


def _half_white(width: int, height: int) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = 255
    return Image.fromarray(pixels)


def test_a_letterboxed_map_is_cropped_back_to_its_photo(lite0, tmp_path):
    _, prep, _ = lite0
    photo = tmp_path / "half.png"
    _half_white(100, 50).save(photo)
    letterbox = Letterbox(prep, 64)
    assert letterbox.region(100, 50) == (16, 0, 32, 64)  # centred, aspect kept
    item = decode_image(ImageTask(0, str(photo), "half"), letterbox)
    assert item.x.shape == (3, 64, 64) and item.region == (16, 0, 32, 64)
    result = ImageExplainer(BrightnessMethod(), None)([item])[0]
    # The white half is 1, the black half 0 (the grey padding is cropped off; only the
    # two columns at the edge are blended by the resize).
    assert result.saliency.shape == (32, 64)
    assert result.saliency[:, :31].min() == 1 and result.saliency[:, 33:].max() == 0
    files = render_outputs(result)
    saved = np.load(__import__("io").BytesIO(bytes(files.npy)))
    assert saved.shape == (50, 100)  # the photo's own size
    assert saved[:, :45].min() == 1 and saved[:, 55:].max() == 0


def test_without_input_size_the_map_is_the_model_inputs(lite0, tmp_path):
    _, prep, _ = lite0
    photo = tmp_path / "half.png"
    _half_white(100, 50).save(photo)
    item = decode_image(ImageTask(0, str(photo), "half"), prep)
    assert item.region is None and item.x.shape == (3, 224, 448)
    method = BrightnessMethod()
    result = ImageExplainer(method, None)([item])[0]
    np.testing.assert_array_equal(result.saliency, method(item.x[None]).maps[0].numpy())


def test_input_size_on_the_command_line_batches_photos_of_any_size(
    chelsea, coffee, tmp_path, capsys
):
    folder = _mixed_folder(tmp_path / "photos", chelsea, coffee)
    out = tmp_path / "out"
    argv = ["explain", str(folder), "--out", str(out), "--input-size", "96", "--batch-size", "6"]
    assert main(argv + FAST) == 0
    for photo in sorted(folder.iterdir()):
        saliency = np.load(out / f"{photo.stem}_cameras.npy")
        with Image.open(photo) as image:
            assert saliency.shape == (image.height, image.width)
        assert saliency.min() >= 0 and saliency.max() == pytest.approx(1, abs=0.02)


# ----------------------------------------------------------------- out of memory


def _items(count: int, size=(16, 24)) -> list[DecodedImage]:
    generator = torch.Generator().manual_seed(0)
    return [
        DecodedImage(
            ImageTask(n, f"p{n}.png", f"p{n}"),
            torch.rand(3, *size, generator=generator) + n / count,
            np.zeros((*size, 3), np.uint8),
        )
        for n in range(count)
    ]


def test_a_batch_out_of_memory_is_split_and_finishes_with_the_same_maps():
    items = _items(8)
    method = BrightnessMethod(largest=2)
    with pytest.warns(RuntimeWarning, match="batch of 8 images did not fit.*batches of 2"):
        results = ImageExplainer(method, None, batch_size=8)(items)
    alone = ImageExplainer(BrightnessMethod(), None)
    for result, item in zip(results, items, strict=True):
        assert result.error is None
        np.testing.assert_array_equal(result.saliency, alone([item])[0].saliency)
    assert method.calls == [8, 4, 2, 2, 2, 2]  # halved until it fit, then cut to 2 at once
    method.calls.clear()
    explainer = ImageExplainer(method, None, batch_size=8)
    explainer.fitting.cap = 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the known size: no second line
        explainer(items)
    assert method.calls == [2, 2, 2, 2]


def test_an_image_that_never_fits_fails_alone_in_one_line(tmp_path):
    items = _items(4)
    brightest = max(float(item.x.mean()) for item in items)
    method = BrightnessMethod(largest=64, never=brightest - 1e-6)  # the last image
    with pytest.warns(RuntimeWarning):
        results = ImageExplainer(method, None, batch_size=4)(items)
    assert [r.error is None for r in results] == [True, True, True, False]
    error = results[3].error
    assert error.startswith("p3.png: out of the device's memory even alone")
    assert "batches of 2 fitted before" in error and "--scales" in error
    assert "\n" not in error and "Traceback" not in error


def test_evaluate_scores_a_batch_that_does_not_fit_in_halves():
    class Evaluator:
        def __call__(self, items):
            if len(items) > 1:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return [{"record": items[0].record.key, "value": float(items[0].x.sum())}]

    items = [
        SimpleNamespace(record=SimpleNamespace(key=f"r{n}", file=f"r{n}.jpg"), x=torch.ones(n))
        for n in range(1, 4)
    ]
    with pytest.warns(RuntimeWarning, match="batches of 1"):
        scored = RecordScorer(Evaluator())(items)
    assert [(item.record.key, [r["value"] for r in rows]) for item, rows in scored] == [
        ("r1", [1.0]),
        ("r2", [2.0]),
        ("r3", [3.0]),
    ]


# ----------------------------------------------------------------- the writer


def _ready_results(chelsea, coffee, count: int) -> list[ImageResult]:
    """Ready results: two photos (each a small size) in turn, ramps as maps."""
    photos = [np.asarray(chelsea.resize((90, 60))), np.asarray(coffee.resize((80, 60)))]
    results = []
    for n in range(count):
        pixels = photos[n % 2]
        ramp = np.linspace(0, 1, 15 * 20, dtype=np.float32).reshape(15, 20) ** (1 + n % 3)
        results.append(
            ImageResult(
                ImageTask(n, f"photo{n}.png", f"photo{n}"), ramp, 1, [224], [(1, 0.5)], pixels
            )
        )
    return results


def test_the_writer_pool_reports_in_order_and_a_failed_write_for_that_image_only(
    chelsea, coffee, tmp_path
):
    results = _ready_results(chelsea, coffee, 9)
    (tmp_path / "photo4_cameras.npy").mkdir()  # image 4's map cannot be written
    reports: list[tuple[int, str | None]] = []
    writer = ImageWriter(tmp_path, "cameras", [])
    pairs = [(result, None) for result in results]
    report = lambda result, png, error: reports.append((result.task.index, error))  # noqa: E731
    assert save_explanations(pairs, writer, report=report) == 1
    assert [index for index, _ in reports] == list(range(9))
    assert [index for index, error in reports if error] == [4]
    assert "photo4.png: cannot write" in reports[4][1]
    for result in results:
        if result.task.index != 4:
            want = render_outputs(result)
            assert (tmp_path / f"photo{result.task.index}_cameras.png").read_bytes() == want.png


def test_a_batch_drawn_in_one_pass_has_the_bytes_of_one_at_a_time(chelsea, coffee, tmp_path):
    equal = _ready_results(chelsea, coffee, 6)[::2]  # one photo size, three maps
    writer = ImageWriter(tmp_path, "cameras", [])
    claims = [writer.claim(result.task) for result in equal]
    assert render_and_store(equal, claims, "jet", 0.5) == [None, None, None]
    for result, claim in zip(equal, claims, strict=True):
        want = render_outputs(result)
        assert claim.png.read_bytes() == want.png
        assert claim.npy.read_bytes() == bytes(want.npy)


def test_render_processes_follow_the_cores_within_the_in_flight_bound():
    assert render_processes(cores=2, in_flight=8) == 1
    assert render_processes(cores=1, in_flight=8) == 1
    assert render_processes(cores=16, in_flight=8) == 8
    assert render_processes(cores=6, in_flight=8) == 5

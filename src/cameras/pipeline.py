"""Many images through one model: pure batch functions, and a streaming local pipeline.

The seam every engine drives (DESIGN, "Scale-out behind one seam"):

- **load** ``task -> item``: read, decode and preprocess one input; never raises for bad
  data (the item carries the error instead). Runs in worker processes.
- **compute** ``items -> results``: the model. Items whose preprocessed size is equal are
  stacked into batches of up to ``batch_size``; results come back in item order. A pure
  function of its items: no files, nothing kept between calls.
- **write** ``result -> files``: only the driver writes, one result at a time, in input
  order.

``stream_local`` drives load and compute in this process, with image decoding in
``DataLoader`` worker processes, and ``BackgroundWriter`` runs write in a thread while the
model computes. ``cameras.distributed`` drives the very same load and compute functions
with Ray Data instead. The explain job's pieces are here; the evaluate job's are
``evaluation.load_item`` / ``evaluation.Evaluator`` wrapped by ``RecordScorer``.
"""

from __future__ import annotations

import io
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .budget import MemoryBudgetError
from .images import ImageError, load_image, resize_map
from .methods import SaliencyMethod
from .session import top_classes

# --------------------------------------------------------------------------------------
# The explain job: tasks, items, results (plain data, picklable)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageTask:
    """One input of ``cameras explain``: its position in the run, its path, and the
    output stem (unique within the run, so no output replaces another)."""

    index: int
    path: str
    stem: str


@dataclass
class DecodedImage:
    """A loaded input. x: (3, h, w) model input; pixels: (H, W, 3) uint8, the image at
    its own size (for the overlay); both None when ``error`` says why it was skipped."""

    task: ImageTask
    x: torch.Tensor | None
    pixels: np.ndarray | None
    error: str | None = None


@dataclass
class ImageResult:
    """One explained image.

    saliency: (H, W) float32 in [0, 1] at the image's own size; None when ``error``.
    target: the class explained; kept: the scales kept; top5: (class, probability) pairs.
    pixels: the image (H, W, 3) uint8, carried on for the overlay.
    worker: "host:pid" of the process that ran the model (for reports and fault tests).
    """

    task: ImageTask
    saliency: np.ndarray | None
    target: int | None = None
    kept: list[int] | None = None
    top5: list[tuple[int, float]] | None = None
    pixels: np.ndarray | None = None
    error: str | None = None
    worker: str = ""
    warning: str | None = None  # fewer than half of the scales counted


def image_tasks(paths: Sequence[Path]) -> list[ImageTask]:
    """Tasks for the inputs in order; a stem shared by several inputs gets -2, -3, ..."""
    seen: dict[str, int] = {}
    tasks = []
    for index, path in enumerate(paths):
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        stem = path.stem if count == 1 else f"{path.stem}-{count}"
        tasks.append(ImageTask(index, str(path), stem))
    return tasks


def decode_image(task: ImageTask, prep: Callable[[Image.Image], torch.Tensor]) -> DecodedImage:
    """Load: read and preprocess one image; an unreadable file becomes an error item."""
    try:
        image = load_image(task.path)
    except ImageError as error:
        return DecodedImage(task, None, None, str(error))
    return DecodedImage(task, prep(image), np.asarray(image, dtype=np.uint8))


def same_size_batches(sizes: Sequence[tuple[int, ...]], batch_size: int) -> list[list[int]]:
    """Positions grouped by equal size, in first-seen order, chunks of <= batch_size."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for position, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(position)
    return [
        members[first : first + batch_size]
        for members in groups.values()
        for first in range(0, len(members), batch_size)
    ]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ImageExplainer:
    """Compute for explain: ``results = ImageExplainer(method, target)(items)``.

    method: a built saliency method (its model already on its device); target: a class
    index for every image, or None for each image's top-1. Maps are computed for
    same-size images together (batches of up to ``batch_size``) and resized to each
    image's own size; results are in item order, error items passed through.
    """

    def __init__(self, method: SaliencyMethod, target: int | None, batch_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.method = method
        self.target = target
        self.batch_size = batch_size

    def __call__(self, items: Sequence[DecodedImage]) -> list[ImageResult]:
        results: list[ImageResult | None] = [None] * len(items)
        good = [p for p, item in enumerate(items) if item.error is None]
        for p, item in enumerate(items):
            if item.error is not None:
                results[p] = ImageResult(item.task, None, error=item.error)
        me = worker_name()
        sizes = [tuple(items[p].x.shape) for p in good]
        for batch in same_size_batches(sizes, self.batch_size):
            members = [items[good[b]] for b in batch]
            # torch.as_tensor: a Keras model's inputs and results are NumPy arrays.
            x = torch.stack([torch.as_tensor(item.x) for item in members])
            try:
                explained = self.method(x, targets=self.target)
            except MemoryBudgetError as error:  # over the budget: these images fail, not all
                for b in batch:
                    task = items[good[b]].task
                    results[good[b]] = ImageResult(task, None, error=f"{task.path}: {error}")
                continue
            maps = torch.as_tensor(explained.maps)
            for j, item in enumerate(members):
                height, width = item.pixels.shape[:2]
                results[good[batch[j]]] = ImageResult(
                    task=item.task,
                    saliency=resize_map(maps[j], height, width),
                    target=explained.targets[j],
                    kept=[s.scale for s in explained.scales[j] if s.kept],
                    top5=top_classes(explained.probabilities[j], 5),
                    pixels=item.pixels,
                    worker=me,
                    warning=explained.scale_warnings[j],
                )
        return results  # type: ignore[return-value]


@dataclass
class RenderedFiles:
    """The bytes of one image's outputs: the overlay PNG and the map .npy."""

    png: bytes
    npy: bytes


def render_outputs(result: ImageResult, cmap: str = "jet", alpha: float = 0.5) -> RenderedFiles:
    """The overlay (at the image's size) and the map, encoded; pure, runs anywhere."""
    from .viz import npy_bytes, overlay

    # One full-size picture at a time: the overlay is encoded and dropped before the map's
    # file is built (a 12000 x 12000 photo's map alone is 576 MB).
    picture = overlay(result.pixels, result.saliency, cmap, alpha)
    png = io.BytesIO()
    picture.save(png, format="PNG")
    del picture
    return RenderedFiles(png.getvalue(), npy_bytes(result.saliency))


class ImageWriter:
    """The one writer of ``cameras explain``'s files: OUT/<stem>_<method>.png and .npy,
    or OUT/<stem>_<method>_class<C>.png and .npy for a class C given, so a map for a
    chosen class never replaces the top-1 map.

    Refuses (as an ImageError naming the input) an output that would replace an input
    file or a file this run already wrote, so no output is ever overwritten by another.
    """

    def __init__(
        self, out: Path, method_name: str, inputs: Iterable[Path], target: int | None = None
    ) -> None:
        self.out = Path(out)
        self.method_name = method_name
        self.suffix = "" if target is None else f"_class{target}"
        self.inputs = {Path(p).resolve() for p in inputs}
        self.written: set[Path] = set()

    def paths(self, task: ImageTask) -> tuple[Path, Path]:
        base = self.out / f"{task.stem}_{self.method_name}{self.suffix}"
        return base.with_suffix(".png"), base.with_suffix(".npy")

    def write(self, result: ImageResult, files: RenderedFiles) -> Path:
        """Write one result's files; returns the overlay's path."""
        png, npy = self.paths(result.task)
        for path in (png, npy):
            resolved = path.resolve()
            if resolved in self.inputs:
                raise ImageError(
                    f"{result.task.path}: output {path.name} would overwrite an input; use --out"
                )
            if resolved in self.written:
                raise ImageError(f"{result.task.path}: output {path.name} was already written")
        for path, data in ((png, files.png), (npy, files.npy)):
            path.write_bytes(data)
            self.written.add(path.resolve())
        return png


# --------------------------------------------------------------------------------------
# The evaluate job's compute, per record (the maths is evaluation.Evaluator)
# --------------------------------------------------------------------------------------


class RecordScorer:
    """Compute for evaluate: items -> [(item, rows)], one pair per item in item order.

    evaluator: an ``evaluation.Evaluator`` (it batches same-size items itself); an item
    that could not be loaded gets no rows (its ``error`` says why).
    """

    def __init__(self, evaluator) -> None:
        self.evaluator = evaluator

    def __call__(self, items: Sequence) -> list[tuple[object, list[dict]]]:
        usable = [item for item in items if item.x is not None]
        rows = self.evaluator(usable) if usable else []
        by_record: dict[str, list[dict]] = {}
        for row in rows:
            by_record.setdefault(row["record"], []).append(row)
        return [(item, by_record.get(item.record.key, [])) for item in items]


# --------------------------------------------------------------------------------------
# The local engine
# --------------------------------------------------------------------------------------


class _LoadDataset(torch.utils.data.Dataset):
    """``load`` over tasks, for a DataLoader whose workers decode in the background."""

    def __init__(self, tasks: Sequence, load: Callable) -> None:
        self.tasks = list(tasks)
        self.load = load

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int):
        return self.load(self.tasks[index])


def _as_is(item):
    return item


def load_in_background(tasks: Sequence, load: Callable, workers: int) -> Iterator:
    """``load(task)`` for every task, in task order; with workers > 0 the loading runs in
    that many processes ahead of the consumer, otherwise here, one at a time."""
    if workers == 0:
        return (load(task) for task in tasks)
    loader = torch.utils.data.DataLoader(
        _LoadDataset(tasks, load),
        batch_size=None,  # one item at a time; batching by size happens in compute
        num_workers=workers,
        collate_fn=_as_is,
        prefetch_factor=4,
    )
    return iter(loader)


def stream_local(
    tasks: Sequence,
    load: Callable,
    compute: Callable[[list], list],
    workers: int = 2,
    batch_size: int = 1,
) -> Iterator:
    """Results of ``compute`` for every task, in task order, as they come.

    Loading runs in ``workers`` processes (0: in this one); items go to ``compute`` in
    windows of ``batch_size`` consecutive items (compute stacks the same-size ones).
    """
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    window: list = []
    for item in load_in_background(tasks, load, workers):
        window.append(item)
        if len(window) == batch_size:
            yield from compute(window)
            window = []
    if window:
        yield from compute(window)


class BackgroundWriter:
    """Runs ``write(result)`` in one thread, in submission order, while the caller computes.

    The queue is bounded, so a slow disk slows the producer instead of filling memory.
    An exception in ``write`` (KeyboardInterrupt included) stops the writer; it is raised
    again in the caller at the next ``submit`` or at ``close``. Use as a context manager.
    """

    _DONE = object()

    def __init__(self, write: Callable[[object], None], max_pending: int = 8) -> None:
        self._write = write
        self._queue: queue.Queue = queue.Queue(max_pending)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cameras-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            result = self._queue.get()
            if result is self._DONE:
                return
            if self._failure is not None:
                continue  # drain without writing after a failure
            try:
                self._write(result)
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                self._failure = error

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def submit(self, result: object) -> None:
        while True:
            self._raise_failure()
            try:
                self._queue.put(result, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait until everything submitted is written; raise the writer's failure."""
        if self._thread.is_alive():
            self._queue.put(self._DONE)
            self._thread.join()
        self._raise_failure()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()
        else:  # the caller failed: stop writing, keep the caller's exception
            self._failure = self._failure or error
            self._queue.put(self._DONE)
            self._thread.join()


# --------------------------------------------------------------------------------------
# The explain job, end to end: the local engine, and the driver's writing
# --------------------------------------------------------------------------------------

Explained = tuple[ImageResult, RenderedFiles | None]


def explain_local(
    tasks: Sequence[ImageTask],
    method: SaliencyMethod,
    prep: Callable[[Image.Image], torch.Tensor],
    target: int | None = None,
    workers: int = 2,
    batch_size: int = 1,
) -> Iterator[Explained]:
    """``(result, None)`` per task, in task order: decoding in ``workers`` background
    processes, same-size images batched up to ``batch_size``. The files are rendered by
    ``save_explanations`` (in its writer thread)."""
    from functools import partial

    load = partial(decode_image, prep=prep)
    compute = ImageExplainer(method, target, batch_size)
    for result in stream_local(tasks, load, compute, workers, batch_size):
        yield result, None


def save_explanations(
    stream: Iterable[Explained],
    writer: ImageWriter,
    cmap: str = "jet",
    alpha: float = 0.5,
    report: Callable[[ImageResult, Path | None, str | None], None] | None = None,
    background: bool = True,
) -> int:
    """The driver's side: write every result's files (rendering those the engine did not)
    in input order, in a background thread while the engine computes the next ones.

    report(result, overlay path or None, error or None) is called once per result, in
    order, from the writing thread. Returns how many inputs failed.
    """
    failures = 0

    def write(pair: Explained) -> None:
        nonlocal failures
        result, files = pair
        error, png = result.error, None
        if error is None:
            try:
                png = writer.write(result, files or render_outputs(result, cmap, alpha))
            except (ImageError, OSError) as problem:
                error = str(problem)
        failures += error is not None
        if report is not None:
            report(result, png, error)

    if not background:
        for pair in stream:
            write(pair)
        return failures
    with BackgroundWriter(write) as background_writer:
        for pair in stream:
            background_writer.submit(pair)
    return failures


# --------------------------------------------------------------------------------------
# The evaluate job, end to end
# --------------------------------------------------------------------------------------

Scored = tuple[object, list[dict]]  # (evaluation.Item, its rows)


def evaluate_local(
    records: Sequence,
    prep: Callable[[Image.Image], torch.Tensor],
    evaluator,
    workers: int = 2,
    batch_size: int = 1,
) -> Iterator[Scored]:
    """``(item, rows)`` per record, in record order: loading in ``workers`` background
    processes, windows of ``batch_size`` records scored together (same-size images share
    forward passes; see ``evaluation.Evaluator``)."""
    from functools import partial

    from .evaluation import load_item

    yield from stream_local(
        records, partial(load_item, prep=prep), RecordScorer(evaluator), workers, batch_size
    )


def save_records(
    stream: Iterable[Scored],
    store,
    report: Callable[[object, list[dict]], None] | None = None,
) -> int:
    """The driver's side of evaluate: each record's problems, then its rows, go to the
    ``evaluation.ResultStore`` (which marks it done for ``--resume``), in record order, in
    a background thread. report(item, rows) is called after each record is stored.
    Returns how many records had problems or were skipped."""
    failures = 0

    def write(pair: Scored) -> None:
        nonlocal failures
        item, rows = pair
        name = item.record.file
        for problem in item.problems:
            store.problem(f"{name}: {problem}")
        if item.error is not None:
            store.problem(f"{item.error} (record skipped)")
        else:
            store.add(item.record.key, rows)
        failures += bool(item.problems) or item.error is not None
        if report is not None:
            report(item, rows)

    with BackgroundWriter(write) as writer:
        for pair in stream:
            writer.submit(pair)
    return failures

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
on Ray instead. The explain job's pieces are here; the evaluate job's are
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

    saliency: (h, w) float32 in [0, 1] at the model input's size; None when ``error``.
        ``render_outputs`` resizes it to the image's own size (away from the model's
        process: the resize and the larger array cost the model nothing).
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


def image_tasks(
    paths: Sequence[Path], clashes: Callable[[str], bool] | None = None
) -> list[ImageTask]:
    """Tasks for the inputs in order, each with an output stem no other task has.

    An input keeps its own stem when it can; otherwise (a stem seen before, or one for
    which ``clashes(stem)`` says the outputs would replace an input) it gets the first
    free ``<stem>-2``, ``<stem>-3``, ... Stems are compared case-insensitively, so the
    names stay distinct on case-insensitive disks too, and a made-up ``img-2`` never
    takes the name of an input that is really called ``img-2``.
    """
    clashes = clashes or (lambda stem: False)
    # Every input's own stem is reserved first: an input named img-2 keeps img-2 even
    # when an earlier duplicate img would otherwise have been given it.
    reserved = {Path(p).stem.casefold() for p in paths}
    used: set[str] = set()
    tasks = []
    for index, path in enumerate(paths):
        own = Path(path).stem
        stem, count = own, 1
        while (
            stem.casefold() in used or clashes(stem) or (count > 1 and stem.casefold() in reserved)
        ):
            count += 1
            stem = f"{own}-{count}"
        used.add(stem.casefold())
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
    same-size images together (batches of up to ``batch_size``) and kept at the model
    input's size (``render_outputs`` resizes them); results are in item order, error
    items passed through; an image over the memory budget is an error item.
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
                results[good[batch[j]]] = ImageResult(
                    task=item.task,
                    saliency=maps[j].float().cpu().numpy(),
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
    npy: bytes | bytearray


def render_outputs(result: ImageResult, cmap: str = "jet", alpha: float = 0.5) -> RenderedFiles:
    """The overlay and the map, both at the image's own size, encoded; pure, runs
    anywhere (the pipeline's render process, a Ray task)."""
    from .viz import npy_bytes, overlay

    height, width = result.pixels.shape[:2]
    saliency = resize_map(torch.from_numpy(result.saliency), height, width)
    # One full-size picture at a time: the overlay is encoded and dropped before the map's
    # file is built (a 12000 x 12000 photo's map alone is 576 MB).
    picture = overlay(result.pixels, saliency, cmap, alpha)
    png = io.BytesIO()
    picture.save(png, format="PNG")
    del picture
    return RenderedFiles(png.getvalue(), npy_bytes(saliency))


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
        self.inputs = OutputGuard(inputs)
        self.written: set[str] = set()

    def paths(self, task: ImageTask) -> tuple[Path, Path]:
        return self.paths_for(task.stem)

    def paths_for(self, stem: str) -> tuple[Path, Path]:
        # Suffixes are appended, never swapped (Path.with_suffix would turn the stem
        # "photo.v1" into "photo.png").
        name = f"{stem}_{self.method_name}{self.suffix}"
        return self.out / f"{name}.png", self.out / f"{name}.npy"

    def clashes(self, stem: str) -> bool:
        """Whether ``stem``'s outputs would replace an input (for ``image_tasks``)."""
        return any(self.inputs.covers(path) for path in self.paths_for(stem))

    def write(self, result: ImageResult, files: RenderedFiles) -> Path:
        """Write one result's files; returns the overlay's path."""
        png, npy = self.paths(result.task)
        for path in (png, npy):
            if self.inputs.covers(path):
                raise ImageError(
                    f"{result.task.path}: output {path.name} would overwrite an input; use --out"
                )
            if same_name(path) in self.written:
                raise ImageError(f"{result.task.path}: output {path.name} was already written")
        for path, data in ((png, files.png), (npy, files.npy)):
            try:
                path.write_bytes(data)
            except OSError as error:
                raise ImageError(f"{result.task.path}: {write_failure(error, path)}") from None
            self.written.add(same_name(path))
        return png


def write_failure(error: OSError, path: Path | None = None) -> str:
    """An OSError from writing a file (``path``, when the error does not name it), as
    the tail of one line: "cannot write FILE (reason)"."""
    reason = error.strerror or str(error)
    target = error.filename or path
    return f"cannot write {target} ({reason})" if target else f"cannot write ({reason})"


def same_name(path: Path) -> str:
    """A path as a case-insensitive disk sees it: resolved, case folded."""
    return str(Path(path).resolve()).casefold()


class OutputGuard:
    """The input files of a run, recognised by name (case-insensitively, through
    symbolic links) and by identity (a hard link under another name is the same file)."""

    def __init__(self, inputs: Iterable[Path]) -> None:
        self.names: set[str] = set()
        self.files: set[tuple[int, int]] = set()
        for path in inputs:
            self.names.add(same_name(path))
            try:
                status = os.stat(path)
                self.files.add((status.st_dev, status.st_ino))
            except OSError:
                pass  # a missing input is reported by the loader, not here

    def covers(self, path: Path) -> bool:
        """Whether writing ``path`` would replace one of the inputs."""
        if same_name(path) in self.names:
            return True
        try:
            status = os.stat(path)
        except OSError:
            return False
        return (status.st_dev, status.st_ino) in self.files


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


class RenderProcess:
    """Renders overlays and maps (``render_outputs``) in one separate process.

    Why a process: the overlay's NumPy and PNG work, run in a thread of the process that
    drives the model, holds the interpreter lock in many short spells, and each spell
    delays the model's next Python step (its hooks, autograd) by up to a switch interval;
    measured, it cost ~10 % of the model's speed. In its own process it costs nothing but
    a core that decoding leaves mostly idle. ``submit`` returns a future of the files, or
    None once the process has died (killed, out of memory): the writer thread renders
    those, and ``files`` renders the images the process left unfinished, so a lost
    process loses no image. Images above ``LARGEST_IMAGE_BYTES`` stay in the writer
    thread too (``takes``).
    """

    def __init__(self, cmap: str, alpha: float) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.cmap, self.alpha = cmap, alpha
        # One torch thread in the child, as DataLoader workers do: a forked child that
        # starts OpenMP's thread pool again can hang (the parent's pool does not survive
        # fork), and the resize it runs is small.
        self._pool = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context(),
            initializer=torch.set_num_threads,
            initargs=(1,),
        )
        self._broken = False

    # Larger images are rendered by the writer thread instead: handing one to the process
    # copies it (and its map) there and back, which costs more memory than the lock.
    LARGEST_IMAGE_BYTES = 64 * 2**20

    @classmethod
    def takes(cls, result: ImageResult) -> bool:
        """Whether ``result`` is rendered in the process (not too large to copy)."""
        return result.pixels is not None and result.pixels.nbytes <= cls.LARGEST_IMAGE_BYTES

    def submit(self, result: ImageResult):
        """A future of ``result``'s files, or None when the process is gone."""
        from concurrent.futures import BrokenExecutor

        if self._broken:
            return None
        try:
            return self._pool.submit(render_outputs, result, self.cmap, self.alpha)
        except BrokenExecutor:
            self._broken = True
            return None

    def files(self, result: ImageResult, future) -> RenderedFiles:
        """The future's files; rendered here when the render process died first."""
        from concurrent.futures import BrokenExecutor

        try:
            return future.result()
        except BrokenExecutor:
            self._broken = True
            return render_outputs(result, self.cmap, self.alpha)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def save_explanations(
    stream: Iterable[Explained],
    writer: ImageWriter,
    cmap: str = "jet",
    alpha: float = 0.5,
    report: Callable[[ImageResult, Path | None, str | None], None] | None = None,
    background: bool = True,
) -> int:
    """The driver's side: write every result's files in input order while the engine
    computes the next ones. Files the engine did not render (the local pipeline's) are
    rendered in a separate process (``RenderProcess``) and written by a background
    thread; with ``background=False`` everything happens here, one result at a time.

    report(result, overlay path or None, error or None) is called once per result, in
    order, from the writing thread. Returns how many inputs failed.
    """
    failures = 0

    def write(pair) -> None:
        nonlocal failures
        result, files = pair
        error, png = result.error, None
        if error is None:
            try:
                if files is None:
                    files = render_outputs(result, cmap, alpha)
                elif not isinstance(files, RenderedFiles):  # a future: the render process
                    files = renderer.files(result, files)
                png = writer.write(result, files)
            except (ImageError, OSError) as problem:
                error = str(problem)
            except MemoryError:
                error = f"{result.task.path}: out of memory while rendering the overlay"
        failures += error is not None
        if report is not None:
            report(result, png, error)

    if not background:
        for pair in stream:
            write(pair)
        return failures
    renderer: RenderProcess | None = None
    try:
        with BackgroundWriter(write) as background_writer:
            for result, files in stream:
                if files is None and result.error is None and RenderProcess.takes(result):
                    renderer = renderer or RenderProcess(cmap, alpha)
                    files = renderer.submit(result)
                background_writer.submit((result, files))
    finally:
        if renderer is not None:
            renderer.close()
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

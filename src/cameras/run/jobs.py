"""The explain and evaluate jobs: their load and compute functions (run by the local
engine or by Ray), the local runs end to end, and the driver's writing of their results.
The evaluate job's maths is ``evaluation.Evaluator``; ``RecordScorer`` wraps it."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..apps.photo_targets import batch_targets
from ..core.budget import MemoryBudgetError
from ..core.images import ImageError, load_image
from ..methods import SaliencyMethod
from ..session import top_classes
from .batching import auto_batch_size
from .engine import (
    BackgroundWriter,
    OutOfMemorySplitter,
    same_size_batches,
    stream_local,
    worker_name,
)
from .items import DecodedImage, Explained, ImageResult, ImageTask, Scored
from .letterbox import Letterbox, photo_region
from .outputs import ImageWriter
from .writing import ExplanationWriter


def decode_image(task: ImageTask, prep: Callable[[Image.Image], torch.Tensor]) -> DecodedImage:
    """Load: read and preprocess one image; an unreadable file becomes an error item."""
    try:
        image = load_image(task.path)
    except ImageError as error:
        return DecodedImage(task, None, None, str(error))
    region = prep.region(*image.size) if isinstance(prep, Letterbox) else None
    return DecodedImage(task, prep(image), np.asarray(image, dtype=np.uint8), region=region)


class ImageExplainer:
    """Compute for explain: ``results = ImageExplainer(method, target)(items)``.

    method: a built saliency method (its model already on its device); target: a class
    index for every image, None for each image's top-1, or a ``PhotoTarget`` (a box, a
    mask or a set of classes, made into each photo's own target). Maps are computed for
    same-size images together (batches of up to ``batch_size``) and kept at the model
    input's size (``render_outputs`` resizes them); results are in item order, error
    items passed through. An image over the memory budget is an error item; a batch
    that runs out of device memory is split and retried (``OutOfMemorySplitter``).
    """

    def __init__(self, method: SaliencyMethod, target, batch_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.method = method
        self.target = target
        self.batch_size = batch_size
        self.fitting = OutOfMemorySplitter(self._explain, _failed, OUT_OF_MEMORY_HINT)

    def __call__(self, items: Sequence[DecodedImage]) -> list[ImageResult]:
        results: list[ImageResult | None] = [None] * len(items)
        good = [p for p, item in enumerate(items) if item.error is None]
        for p, item in enumerate(items):
            if item.error is not None:
                results[p] = ImageResult(item.task, None, error=item.error)
        sizes = [tuple(items[p].x.shape) for p in good]
        for batch in same_size_batches(sizes, self.batch_size):
            members = [items[good[b]] for b in batch]
            for b, result in zip(batch, self.fitting(members), strict=True):
                results[good[b]] = result
        return results  # type: ignore[return-value]

    def _explain(self, members: list[DecodedImage]) -> list[ImageResult]:
        """One same-size batch through the model (may raise torch.OutOfMemoryError)."""
        # torch.as_tensor: a Keras model's inputs and results are NumPy arrays.
        x = torch.stack([torch.as_tensor(item.x) for item in members])
        # A box or mask is given in each photo's pixels: one target per photo.
        photo_sizes = [tuple(item.pixels.shape[:2]) for item in members]
        try:
            targets = batch_targets(self.target, photo_sizes, tuple(x.shape[-2:]))
        except ValueError as error:  # a box outside this photo: these images fail, not all
            return [_failed(item, str(error)) for item in members]
        try:
            explained = self.method(x, targets=targets)
        except MemoryBudgetError as error:  # over the budget: these images fail, not all
            return [_failed(item, str(error)) for item in members]
        maps = torch.as_tensor(explained.maps)
        me = worker_name()
        return [
            ImageResult(
                task=item.task,
                saliency=photo_region(maps[j].float().cpu(), item.region),
                target=explained.targets[j],
                kept=[s.scale for s in explained.scales[j] if s.kept],
                top5=[]
                if explained.probabilities is None  # a segmenter or a detector
                else top_classes(explained.probabilities[j], 5),
                pixels=item.pixels,
                worker=me,
                warning=explained.scale_warnings[j],
            )
            for j, item in enumerate(members)
        ]


# What to try when one image alone does not fit in the device's memory.
OUT_OF_MEMORY_HINT = "try fewer or smaller --scales, or a smaller --input-size"


def _failed(item: DecodedImage, message: str) -> ImageResult:
    return ImageResult(item.task, None, error=f"{item.task.path}: {message}")


class RecordScorer:
    """Compute for evaluate: items -> [(item, rows)], one pair per item in item order.

    evaluator: an ``evaluation.Evaluator`` (it batches same-size items itself); an item
    that could not be loaded gets no rows (its ``error`` says why). A batch that runs
    out of device memory is split and retried (``OutOfMemorySplitter``).
    """

    def __init__(self, evaluator) -> None:
        self.evaluator = evaluator
        hint = "try a smaller --batch-size (the metrics' passes) or fewer or smaller --scales"
        self.fitting = OutOfMemorySplitter(self._score, _unscored, hint)

    def __call__(self, items: Sequence) -> list[tuple[object, list[dict]]]:
        usable = [item for item in items if item.x is not None]
        scored = dict(zip(map(id, usable), self.fitting(usable), strict=True))
        return [scored.get(id(item), (item, [])) for item in items]

    def _score(self, items: list) -> list[tuple[object, list[dict]]]:
        by_record: dict[str, list[dict]] = {}
        for row in self.evaluator(items):
            by_record.setdefault(row["record"], []).append(row)
        return [(item, by_record.get(item.record.key, [])) for item in items]


def _unscored(item, message: str) -> tuple[object, list[dict]]:
    """A record that does not fit in the device's memory even alone: skipped, saying so."""
    return replace(item, x=None, error=f"{item.record.file}: {message}"), []


def explain_local(
    tasks: Sequence[ImageTask],
    method: SaliencyMethod,
    prep: Callable[[Image.Image], torch.Tensor],
    target=None,
    workers: int = 2,
    batch_size: int | None = 1,
) -> Iterator[Explained]:
    """``(result, None)`` per task, in task order: decoding in ``workers`` background
    processes, images of one model-input size batched up to ``batch_size`` from a
    look-ahead (``engine.stream_local``); None: chosen for the method's device once the
    first image is decoded (``batching.auto_batch_size``). The files are drawn by
    ``save_explanations``."""
    from functools import partial

    load = partial(decode_image, prep=prep)
    compute = ImageExplainer(method, target, batch_size or 1)

    def chosen(first: DecodedImage) -> int:
        compute.batch_size = auto_batch_size(method, first.x)
        return compute.batch_size

    for result in stream_local(tasks, load, compute, workers, batch_size or chosen):
        yield result, None


def save_explanations(
    stream: Iterable[Explained],
    writer: ImageWriter,
    cmap: str = "jet",
    alpha: float = 0.5,
    report: Callable[[ImageResult, Path | None, str | None], None] | None = None,
    background: bool = True,
) -> int:
    """The driver's side: write every result's files in input order while the engine
    computes the next ones (``writing.ExplanationWriter``: overlays drawn and written by
    a pool of processes); with ``background=False`` everything happens here, one result
    at a time.

    report(result, overlay path or None, error or None) is called once per result, in
    order, from the writing thread. Returns how many inputs failed.
    """
    return ExplanationWriter(writer, cmap, alpha, report).save(stream, background)


def evaluate_local(
    records: Sequence,
    prep: Callable[[Image.Image], torch.Tensor],
    evaluator,
    workers: int = 2,
    batch_size: int = 1,
) -> Iterator[Scored]:
    """``(item, rows)`` per record, in record order: loading in ``workers`` background
    processes, records of one model-input size scored together, up to ``batch_size``,
    from a look-ahead (``engine.stream_local``; see ``evaluation.Evaluator``)."""
    from functools import partial

    from ..apps.evaluation import load_item

    yield from stream_local(
        records, partial(load_item, prep=prep), RecordScorer(evaluator), workers, batch_size
    )


def unique_records(records: Sequence) -> list:
    """The records without exact repeats (same file, same objects; the first kept), and
    one warning naming how many were dropped: scored twice, a record would count twice
    in every mean. The same file with other objects is another record and stays."""
    seen: set = set()
    unique, repeated = [], []
    for record in records:
        identity = (str(record.file), repr(record.objects))
        (repeated if identity in seen else unique).append(record)
        seen.add(identity)
    if repeated:
        warnings.warn(
            f"{len(repeated)} duplicated record(s) scored once (first: {repeated[0].file})",
            UserWarning,
            stacklevel=2,
        )
    return unique


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

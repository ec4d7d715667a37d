"""The local streaming engine: load, compute and write (DESIGN, "Scale-out behind one seam").

- **load** ``task -> item``: read, decode and preprocess one input; never raises for bad
  data (the item carries the error instead). Runs in worker processes.
- **compute** ``items -> results``: the model. Items whose preprocessed size is equal are
  gathered from a bounded look-ahead (``look_ahead_batches``) and stacked into batches of
  up to ``batch_size``; results are handed on in input order (``in_input_order``). A
  pure function of its items: no files, nothing kept between calls. A batch that runs
  out of device memory is split (``OutOfMemorySplitter``).
- **write** ``result -> files``: the driver claims each result's files in input order;
  drawing and writing them may run elsewhere (``run.writing``), reports come in order.

``stream_local`` drives load and compute in this process, with loading in ``DataLoader``
worker processes, and ``BackgroundWriter`` runs write in a thread while the model
computes. ``cameras.run.ray`` drives the very same load and compute functions on Ray.
"""

from __future__ import annotations

import itertools
import os
import queue
import socket
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch


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


# How many items the look-ahead may hold, in batches: wide enough that a folder of a few
# sizes in any order fills its batches, narrow enough that the decoded images held
# (each a model input and the photo) stay a small, fixed amount of memory.
WINDOW_BATCHES = 4


def size_of(item) -> tuple[int, ...] | None:
    """The batching key of a loaded item: its model input's shape; None for an item that
    failed to load (it is passed on alone, at once)."""
    x = getattr(item, "x", None)
    return None if x is None else tuple(x.shape)


def look_ahead_batches(
    items: Iterable, batch_size: int, window: int, key: Callable = size_of
) -> Iterator[list[tuple[int, object]]]:
    """Batches of ``(position, item)`` whose items have equal ``key``, from a look-ahead.

    Items wait, grouped by key, until their group has ``batch_size`` members; a group is
    sent short when its oldest item is ``window`` positions behind the newest item read
    (so at most ``window`` items are ever held, results included: see ``in_input_order``)
    and at the end. An item whose key is None goes alone, at once.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if window < batch_size:
        raise ValueError(f"the look-ahead window ({window}) must hold a batch ({batch_size})")
    groups: dict[tuple, list[tuple[int, object]]] = {}

    def oldest() -> tuple:
        return min(groups, key=lambda k: groups[k][0][0])

    read = 0
    for position, item in enumerate(items):
        read = position + 1
        group_key = key(item)
        if group_key is None:
            yield [(position, item)]
        else:
            group = groups.setdefault(group_key, [])
            group.append((position, item))
            if len(group) == batch_size:
                yield groups.pop(group_key)
        while groups and read - groups[oldest()][0][0] >= window:
            yield groups.pop(oldest())
    while groups:
        yield groups.pop(oldest())


def in_input_order(batches: Iterable[list[tuple[int, object]]], compute: Callable) -> Iterator:
    """``compute(items)`` of each batch, its results handed on in position order: a result
    waits until every earlier position's result has come."""
    waiting: dict[int, object] = {}
    next_position = 0
    for batch in batches:
        results = compute([item for _, item in batch])
        waiting.update(zip((position for position, _ in batch), results, strict=True))
        while next_position in waiting:
            yield waiting.pop(next_position)
            next_position += 1
    if waiting:  # a batcher that skipped a position would hang results here; say so
        raise RuntimeError(f"results for positions {sorted(waiting)} came out of order")


def stream_local(
    tasks: Sequence,
    load: Callable,
    compute: Callable[[list], list],
    workers: int = 2,
    batch_size: int | Callable[[object], int] = 1,
    window: int | None = None,
) -> Iterator:
    """Results of ``compute`` for every task, in task order, as they come.

    Loading runs in ``workers`` processes (0: in this one); loaded items of equal model
    input size are sent to ``compute`` together, up to ``batch_size`` at a time, from a
    look-ahead of ``window`` items (default ``WINDOW_BATCHES`` batches), so same-size
    images batch even when others lie between them. ``batch_size`` may be a function of
    the first item that loaded ("auto": chosen once the input size is known).
    """
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    items = load_in_background(tasks, load, workers)
    if callable(batch_size):
        first, items = first_sized(items)
        batch_size = 1 if first is None else batch_size(first)
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    window = window or WINDOW_BATCHES * batch_size
    yield from in_input_order(look_ahead_batches(items, batch_size, window), compute)


def first_sized(items: Iterator) -> tuple[object | None, Iterator]:
    """(the first item with a size, or None; all the items again, in order). Only the
    items up to that one are read ahead (failed loads: small)."""
    read = []
    for item in items:
        read.append(item)
        if size_of(item) is not None:
            return item, itertools.chain(read, items)
    return None, iter(read)


class OutOfMemorySplitter:
    """``compute(items)``, with a batch that does not fit in the device's memory split in
    halves and retried, down to one item.

    compute: items -> results (one per item, in order); fail(item, message): the result
    of an item that does not fit even alone; hint: what to suggest then (the options).
    After the first out-of-memory error later batches are cut to the size that was
    tried next (``cap``) up front, so one error is not met again for every batch.
    """

    def __init__(self, compute: Callable[[list], list], fail: Callable, hint: str) -> None:
        self.compute = compute
        self.fail = fail
        self.hint = hint
        self.cap: int | None = None  # batches are cut to this many items
        self.largest_fitted = 0  # the largest batch that ran, for the message

    def __call__(self, items: list) -> list:
        before = self.cap
        results = self._in_parts(items)
        if self.cap != before:  # one line per shrink, not one per batch
            warnings.warn(
                f"a batch of {len(items)} images did not fit in the device's memory; "
                f"running batches of {self.cap} (--batch-size {self.cap} starts there)",
                RuntimeWarning,
                stacklevel=2,
            )
        return results

    def _in_parts(self, items: list) -> list:
        results, rest = [], list(items)
        while rest:
            size = len(rest) if self.cap is None else self.cap
            part, rest = rest[:size], rest[size:]
            results += self._attempt(part)
        return results

    def _attempt(self, part: list) -> list:
        try:
            results = self.compute(part)
        except torch.OutOfMemoryError:  # torch.cuda.OutOfMemoryError is one
            results = None
        if results is not None:
            self.largest_fitted = max(self.largest_fitted, len(part))
            return results
        # Retried outside the except block: the failed call's tensors (held by the
        # traceback) are freed first, and the allocator's cache is handed back.
        release_device_memory()
        if len(part) == 1:
            return [self.fail(part[0], self._alone_message())]
        half = (len(part) + 1) // 2
        self.cap = half if self.cap is None else min(self.cap, half)
        return self._in_parts(part)

    def _alone_message(self) -> str:
        fitted = self.largest_fitted
        before = f"batches of {fitted} fitted before" if fitted else "no batch has fitted"
        return f"out of the device's memory even alone ({before}); {self.hint}"


def release_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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

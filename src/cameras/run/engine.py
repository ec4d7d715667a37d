"""The local streaming engine: load, compute and write (DESIGN, "Scale-out behind one seam").

- **load** ``task -> item``: read, decode and preprocess one input; never raises for bad
  data (the item carries the error instead). Runs in worker processes.
- **compute** ``items -> results``: the model. Items whose preprocessed size is equal are
  stacked into batches of up to ``batch_size``; results come back in item order. A pure
  function of its items: no files, nothing kept between calls.
- **write** ``result -> files``: only the driver writes, one result at a time, in input
  order.

``stream_local`` drives load and compute in this process, with loading in ``DataLoader``
worker processes, and ``BackgroundWriter`` runs write in a thread while the model
computes. ``cameras.run.ray`` drives the very same load and compute functions on Ray.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator, Sequence

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

"""The driver's side of explain: each result's files drawn, written and reported, in
input order, while the model computes the next ones.

The driver claims each image's output paths in input order (``ImageWriter.claim``: the
checks against inputs and earlier outputs), then hands the drawing and writing to a pool
of processes (``render.RenderPool``), several consecutive images of one photo size in one
task (their maps resized in one pass) when they come faster than the pool draws. One
thread waits for each image in input order and reports it. At most ``IN_FLIGHT`` results
(each holding its photo) wait between the model and the disk, however many processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..core.images import ImageError
from .engine import BackgroundWriter
from .items import Explained, ImageResult, RenderedFiles
from .outputs import ImageWriter, OutputClaim
from .render import RenderPool, draw_and_store, render_processes, same_drawing_size, usable_cores

# Results between the model and the disk: bounds memory (each holds its photo) and is
# the most render processes that can be busy at once.
IN_FLIGHT = 8
# The most images drawn in one task of the pool (equal photos, one resize for them all).
CHUNK_IMAGES = 8

Report = Callable[[ImageResult, Path | None, str | None], None]


@dataclass
class Claimed:
    """A result whose paths are claimed: drawn by the pool (``pooled``: ``future``'s
    image ``index``; a None future when the pool had died) or here (``files``: given by
    Ray, or None: drawn here)."""

    claim: OutputClaim
    files: RenderedFiles | None = None
    pooled: bool = False
    future: object = None
    index: int = 0


@dataclass
class Refused:
    """A result whose paths could not be claimed (an input or an earlier output there)."""

    error: str


class ExplanationWriter:
    """``save(stream)``: write every ``(result, files)`` of an explain stream, report each
    (``report(result, overlay path or None, error or None)``, in input order, from the
    writing thread) and count the failures (``failures``)."""

    def __init__(self, writer: ImageWriter, cmap: str, alpha: float, report: Report | None):
        self.writer = writer
        self.cmap, self.alpha = cmap, alpha
        self.report = report
        self.failures = 0
        self.pool: RenderPool | None = None
        self.chunk: list[ImageResult] = []

    def save(self, stream: Iterable[Explained], background: bool = True) -> int:
        """Write it all; with ``background=False`` everything happens here, one image at a
        time (no thread, no process). Returns how many inputs failed."""
        if not background:
            for result, files in stream:
                self.write(self.claimed(result, files))
            return self.failures
        try:
            with BackgroundWriter(self.write, max_pending=IN_FLIGHT) as queue:
                for result, files in stream:
                    if files is None and result.error is None and RenderPool.takes(result):
                        self.add_to_chunk(result, queue)
                    else:
                        self.flush(queue)
                        queue.submit(self.claimed(result, files))
                self.flush(queue)
        finally:
            if self.pool is not None:
                self.pool.close()
        return self.failures

    def claimed(self, result: ImageResult, files: RenderedFiles | None = None) -> tuple:
        """``(result, its Claimed, Refused, or None for an error result)``; in input order."""
        if result.error is not None:
            return result, None
        try:
            return result, Claimed(self.writer.claim(result.task), files)
        except ImageError as error:
            return result, Refused(str(error))

    def add_to_chunk(self, result: ImageResult, queue: BackgroundWriter) -> None:
        """Gather images of one drawing size while the pool is busy; hand them over when
        the chunk is full, the size changes, or a process is free."""
        if self.chunk and (
            len(self.chunk) == CHUNK_IMAGES or not same_drawing_size(self.chunk[0], result)
        ):
            self.flush(queue)
        self.chunk.append(result)
        if self.pool is None:
            processes = render_processes(usable_cores(), IN_FLIGHT)
            self.pool = RenderPool(self.cmap, self.alpha, processes)
        if self.pool.idle():
            self.flush(queue)

    def flush(self, queue: BackgroundWriter) -> None:
        """Submit the chunk's claimed images to the pool as one task; queue every image
        of it, in order, for the writing thread."""
        if not self.chunk:
            return
        entries = [self.claimed(result) for result in self.chunk]
        self.chunk = []
        claimed = [(result, job) for result, job in entries if isinstance(job, Claimed)]
        future = self.pool.submit([r for r, _ in claimed], [j.claim for _, j in claimed])
        for index, (_, job) in enumerate(claimed):
            job.pooled, job.future, job.index = True, future, index
        for entry in entries:
            queue.submit(entry)

    def write(self, entry: tuple) -> None:
        """The writing thread: wait for one image's files (or write them), report it."""
        result, job = entry
        png, error = self.outcome(result, job)
        self.failures += error is not None
        if self.report is not None:
            self.report(result, png, error)

    def outcome(self, result: ImageResult, job) -> tuple[Path | None, str | None]:
        if job is None:
            return None, result.error
        if isinstance(job, Refused):
            return None, job.error
        if job.pooled:
            error = self.pool.outcome(job.future, job.index, result, job.claim)
        else:
            error = draw_and_store(result, job.claim, self.cmap, self.alpha, files=job.files)
        return (None, error) if error is not None else (job.claim.png, None)

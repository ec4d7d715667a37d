"""Drawing an explained image's files (overlay PNG and map .npy), here or in a pool of
processes that also write them (``RenderPool``)."""

from __future__ import annotations

import io
import os

import numpy as np
import torch
import torch.nn.functional as F

from ..core.images import ImageError, resize_map
from .items import ImageResult, RenderedFiles
from .outputs import OutputClaim, store_files


def render_outputs(result: ImageResult, cmap: str = "jet", alpha: float = 0.5) -> RenderedFiles:
    """The overlay and the map, both at the image's own size, encoded; pure, runs
    anywhere (the pipeline's render processes, a Ray task)."""
    height, width = result.pixels.shape[:2]
    saliency = resize_map(torch.from_numpy(result.saliency), height, width)
    return _encoded(result, saliency, cmap, alpha)


def _encoded(result: ImageResult, saliency: np.ndarray, cmap: str, alpha: float) -> RenderedFiles:
    from ..apps.viz import npy_bytes, overlay

    # One full-size picture at a time: the overlay is encoded and dropped before the map's
    # file is built (a 12000 x 12000 photo's map alone is 576 MB).
    picture = overlay(result.pixels, saliency, cmap, alpha)
    png = io.BytesIO()
    picture.save(png, format="PNG")
    del picture
    return RenderedFiles(png.getvalue(), npy_bytes(saliency))


def same_drawing_size(first: ImageResult, other: ImageResult) -> bool:
    """Whether two results' maps resize in one pass: equal map and photo sizes."""
    return (
        first.saliency.shape == other.saliency.shape
        and first.pixels.shape[:2] == other.pixels.shape[:2]
    )


def resized_maps(results: list[ImageResult]) -> np.ndarray | None:
    """The maps of several results of one drawing size (``same_drawing_size``: a batch of
    equal photos) resized to it in one pass; None for one result or mixed sizes."""
    if len(results) < 2 or not all(same_drawing_size(results[0], r) for r in results):
        return None
    height, width = results[0].pixels.shape[:2]
    maps = torch.stack([torch.from_numpy(result.saliency) for result in results])
    # resize_map's bilinear resize, one call for the batch: each map is its own plane of
    # the interpolation, so the values are those of one call per map.
    resized = F.interpolate(
        maps[:, None].float(), size=(height, width), mode="bilinear", align_corners=False
    )
    return resized[:, 0].clamp_(0, 1).numpy()


def render_and_store(
    results: list[ImageResult], claims: list[OutputClaim], cmap: str, alpha: float
) -> list[str | None]:
    """Draw each result's files and write them (``store_files``): what a render process
    runs. Per image None or the one line saying why it was not written (the others are
    written all the same)."""
    maps = resized_maps(results)
    return [
        draw_and_store(result, claim, cmap, alpha, None if maps is None else maps[j])
        for j, (result, claim) in enumerate(zip(results, claims, strict=True))
    ]


def draw_and_store(
    result: ImageResult,
    claim: OutputClaim,
    cmap: str,
    alpha: float,
    saliency: np.ndarray | None = None,
    files: RenderedFiles | None = None,
) -> str | None:
    """Write one image's files, drawing them first unless ``files`` are given (from
    ``saliency`` when it is already at the photo's size); None, or why it failed."""
    try:
        if files is None and saliency is None:
            files = render_outputs(result, cmap, alpha)
        elif files is None:
            files = _encoded(result, saliency, cmap, alpha)
        store_files(claim, files)
    except (ImageError, OSError) as problem:
        return str(problem)
    except MemoryError:
        return f"{result.task.path}: out of memory while rendering the overlay"
    return None


def render_processes(cores: int, in_flight: int) -> int:
    """How many render processes: one per core the model's process leaves free, at
    least one, and no more than the images that may be in flight (more would idle)."""
    return max(1, min(cores - 1, in_flight))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # a job scheduler's or taskset's share
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class RenderPool:
    """Draws and writes explained images (``render_and_store``) in a pool of processes.

    Why processes: the overlay's NumPy and PNG work, run in a thread of the process that
    drives the model, holds the interpreter lock in many short spells, and each spell
    delays the model's next Python step (its hooks, autograd) by up to a switch interval;
    measured, it cost ~10 % of the model's speed. Why several: on a GPU the maps come
    faster than one core can draw and write them (issue 22). The caller bounds the work
    in flight (``save_explanations``' queue), so memory stays bounded however many
    processes there are.

    ``submit`` returns a future of the per-image errors, or None once the pool has died
    (a process killed, out of memory); ``outcome`` draws and writes here the images a
    dead pool left unfinished, so a lost process loses no image. Images above
    ``LARGEST_IMAGE_BYTES`` are drawn by the caller's thread instead (``takes``).
    """

    def __init__(self, cmap: str, alpha: float, processes: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.cmap, self.alpha = cmap, alpha
        self.processes = processes
        # One torch thread per child, as DataLoader workers do: a forked child that
        # starts OpenMP's thread pool again can hang (the parent's pool does not survive
        # fork), and the resize it runs is small.
        self._pool = ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context(),
            initializer=torch.set_num_threads,
            initargs=(1,),
        )
        self._broken = False
        self._running: list = []  # futures submitted, pruned as they finish

    # Larger images are rendered by the writer thread instead: handing one to a process
    # copies it (and its map) there and back, which costs more memory than the lock.
    LARGEST_IMAGE_BYTES = 64 * 2**20

    @classmethod
    def takes(cls, result: ImageResult) -> bool:
        """Whether ``result`` is rendered in the pool (not too large to copy)."""
        return result.pixels is not None and result.pixels.nbytes <= cls.LARGEST_IMAGE_BYTES

    def idle(self) -> bool:
        """Whether a process is free: then waiting to fill a batch of drawings would
        only leave it idle."""
        self._running = [future for future in self._running if not future.done()]
        return len(self._running) < self.processes

    def submit(self, results: list[ImageResult], claims: list[OutputClaim]):
        """A future of ``render_and_store(results, claims)``, or None when the pool is gone."""
        from concurrent.futures import BrokenExecutor

        if self._broken:
            return None
        try:
            future = self._pool.submit(render_and_store, results, claims, self.cmap, self.alpha)
        except BrokenExecutor:
            self._broken = True
            return None
        self._running.append(future)
        return future

    def outcome(self, future, index: int, result: ImageResult, claim: OutputClaim) -> str | None:
        """Image ``index`` of the future's batch: None when written, else why not; drawn
        and written here when the pool died first (or there was no future)."""
        from concurrent.futures import BrokenExecutor

        if future is not None:
            try:
                return future.result()[index]
            except BrokenExecutor:
                self._broken = True
        return draw_and_store(result, claim, self.cmap, self.alpha)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

"""Drawing an explained image's files (overlay PNG and map .npy), here or in a process of
its own."""

from __future__ import annotations

import io

import torch

from ..core.images import resize_map
from .items import ImageResult, RenderedFiles


def render_outputs(result: ImageResult, cmap: str = "jet", alpha: float = 0.5) -> RenderedFiles:
    """The overlay and the map, both at the image's own size, encoded; pure, runs
    anywhere (the pipeline's render process, a Ray task)."""
    from ..apps.viz import npy_bytes, overlay

    height, width = result.pixels.shape[:2]
    saliency = resize_map(torch.from_numpy(result.saliency), height, width)
    # One full-size picture at a time: the overlay is encoded and dropped before the map's
    # file is built (a 12000 x 12000 photo's map alone is 576 MB).
    picture = overlay(result.pixels, saliency, cmap, alpha)
    png = io.BytesIO()
    picture.save(png, format="PNG")
    del picture
    return RenderedFiles(png.getvalue(), npy_bytes(saliency))


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

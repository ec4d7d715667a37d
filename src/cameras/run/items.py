"""The plain data of the explain and evaluate jobs: tasks, decoded items, results and
rendered files. All picklable (they cross process and Ray boundaries), no behaviour."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
    its own size (for the overlay); both None when ``error`` says why it was skipped.
    region: (top, left, height, width) of the photo in ``x`` when it was letterboxed
    (``run.letterbox``); None when ``x`` is the photo alone."""

    task: ImageTask
    x: torch.Tensor | None
    pixels: np.ndarray | None
    error: str | None = None
    region: tuple[int, int, int, int] | None = None


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
    target: object = None  # the class index, or the photo's target (a Box, ...)
    kept: list[int] | None = None
    top5: list[tuple[int, float]] | None = None
    pixels: np.ndarray | None = None
    error: str | None = None
    worker: str = ""
    warning: str | None = None  # fewer than half of the scales counted


@dataclass
class RenderedFiles:
    """The bytes of one image's outputs: the overlay PNG and the map .npy."""

    png: bytes
    npy: bytes | bytearray


Explained = tuple[ImageResult, RenderedFiles | None]
Scored = tuple[object, list[dict]]  # (evaluation.Item, its rows)

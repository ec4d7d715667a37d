"""Evaluation, loading: one annotated record -> its model input, checked against the image.

Runs in the engine's loader processes (``run.engine``); never raises for bad data
(the item says why).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...core.images import ImageError, load_image
from ..datasets import Record, check_record


@dataclass
class Item:
    """One record, loaded: the model input and the record checked against the image.

    x: (3, h, w) model input, or None when the record cannot be evaluated (see error).
    image_size: (width, height) of the original image.
    problems: messages about objects dropped (unknown class, box outside the image...).
    error: why the whole record is skipped, or None.
    """

    record: Record
    x: torch.Tensor | None
    image_size: tuple[int, int] | None
    problems: list[str] = field(default_factory=list)
    error: str | None = None


def load_item(record: Record, prep) -> Item:
    """Read, check and preprocess one record's image; never raises for bad data."""
    try:
        image = load_image(record.file)
    except ImageError as error:
        return Item(record, None, None, list(record.problems), str(error))
    checked, problems = check_record(record, image.width, image.height)
    if not checked.objects:
        return Item(checked, None, image.size, problems, f"{record.file}: no usable objects")
    return Item(checked, prep(image), image.size, problems)

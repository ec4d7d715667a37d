"""Targets given in a photo's own pixels (a box, a mask) put into the model input's pixels,
for every face that takes them from a user: the CLI's ``--box`` / ``--mask`` / ``--classes``
(``cli.targets`` parses them), ``explain``'s batches (one target per photo), the web page.

``PhotoTarget`` is what was asked for, checked once, small and picklable (a Ray job can
carry it); ``for_image`` makes the target of one photo, whose model input is that photo
resized (``cameras.models.Preprocess``: no crop, x and y each by their own ratio).
Problems are ValueErrors of one line that start with what they are about ("box ...",
"mask FILE: ..."), so a face can prefix its option name ("--box ...").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.targets import Box, Classes, Region, Target
from . import detection


@dataclass(frozen=True)
class PhotoTarget:
    """What to explain, before any photo is read. Exactly one of: ``box`` (x1, y1, x2, y2
    in the photo's pixels, with ``label`` the detection's class index or None), ``mask``
    ((H, W) bool at the photo's size, read from ``mask_file``, with ``label`` the region's
    class), ``classes`` (a multi-label set of class indices)."""

    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    mask_file: Path | None = None
    classes: tuple[int, ...] | None = None
    label: int | None = None

    def for_image(self, photo_size: tuple[int, int], input_size: tuple[int, int]) -> Target:
        """The target of one photo of ``photo_size`` (height, width) whose model input is
        ``input_size`` (height, width): the box and the mask in the input's pixels."""
        if self.classes is not None:
            return Classes(list(self.classes))
        if self.box is not None:
            try:
                detection.check_inside(self.box, photo_size)
            except ValueError as error:
                raise ValueError(f"box {detection.box_text(self.box)}: {error}") from None
            return Box(detection.box_in_input(self.box, photo_size, input_size), self.label)
        return Region(self.label, mask_in_input(self.mask, self.mask_file, photo_size, input_size))


def mask_in_input(
    mask: np.ndarray,
    mask_file: Path | str | None,
    photo_size: tuple[int, int],
    input_size: tuple[int, int],
) -> torch.Tensor:
    """A mask drawn at the photo's size, at the model input's size: a (h, w) bool tensor
    (what ``Region`` takes).

    Nearest-neighbour, not bilinear: a mask is a set of pixels, not an intensity. Bilinear
    would blur its edge into fractions that need a threshold of our choosing; nearest keeps
    every pixel either in or out, exactly as the photo's pixels fall on the input's grid,
    and it is the rule ``Region`` itself uses for each scale's output grid."""
    if tuple(mask.shape) != tuple(photo_size):
        raise ValueError(
            f"mask {mask_file}: is {mask.shape[1]}x{mask.shape[0]} pixels but the photo is "
            f"{photo_size[1]}x{photo_size[0]}; draw the mask at the photo's size"
        )
    grid = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
    resized = F.interpolate(grid, size=tuple(input_size), mode="nearest")[0, 0] > 0.5
    if not bool(resized.any()):
        raise ValueError(
            f"mask {mask_file}: its region is too small to cover any pixel of the model's "
            f"{input_size[1]}x{input_size[0]} input"
        )
    return resized


def batch_targets(
    request: PhotoTarget | int | None,
    photo_sizes: list[tuple[int, int]],
    input_size: tuple[int, int],
) -> object:
    """What ``explain`` passes as ``targets=`` for a batch of same-size inputs made from
    photos of ``photo_sizes`` (height, width each): a class index or None as it is (all
    images), else one target per image (each photo's box or mask in the input's pixels).
    ValueError for a box outside one of the photos or a mask of another size."""
    if not isinstance(request, PhotoTarget):
        return request
    return [request.for_image(size, input_size) for size in photo_sizes]


def target_file_tag(request: PhotoTarget | int | None) -> str:
    """What output file names add for a target: ``""`` (top-1), ``_class281``,
    ``_box10-20-110-220`` (+ ``_class3`` with a label), ``_region15-<mask stem>``,
    ``_classes3+7``; the box in the photo's pixels, as typed."""
    if request is None:
        return ""
    if isinstance(request, int):
        return f"_class{request}"
    if request.classes is not None:
        return "_classes" + "+".join(map(str, request.classes))
    label = "" if request.label is None else f"_class{request.label}"
    if request.box is not None:
        return "_box" + "-".join(f"{v:g}" for v in request.box) + label
    stem = re.sub(r"[^\w.-]+", "-", Path(request.mask_file).stem) if request.mask_file else "mask"
    return f"_region{request.label}-{stem}"


def target_identity(request: PhotoTarget | int | None) -> str:
    """What ``explain`` writes into its run identity (``class=...`` today), so that a map
    for another box, mask or set is never taken for this one's: ``top-1``, ``281``,
    ``box=10,20,110,220 label=3``, ``region=15 mask=/abs/mask.png``, ``classes=3+7``."""
    if not isinstance(request, PhotoTarget):
        return "top-1" if request is None else str(request)
    if request.classes is not None:
        return "classes=" + "+".join(map(str, request.classes))
    label = "any" if request.label is None else str(request.label)
    if request.box is not None:
        return f"box={detection.box_text(request.box)} label={label}"
    return f"region={label} mask={Path(request.mask_file).resolve()}"

"""What the command line explains beyond one class: ``--box``, ``--mask``, ``--classes``.

- ``--box X1,Y1,X2,Y2 [--class C]``: a detection (``cameras.targets.Box``), the box in
  the photo's own pixels, C the label the detection must have (default: any);
- ``--mask FILE.png --class C``: class C inside a region of a segmentation output
  (``cameras.targets.Region``), the region being the PNG's nonzero pixels;
- ``--classes C1,C2``: a set of classes (multi-label, ``cameras.targets.Classes``).

Two steps, so that every mistake is a one-line usage error before any image is read:
``parse_target(args, session)`` checks the options and reads the mask file into a
``TargetRequest`` (``apps.photo_targets.PhotoTarget``); ``target_of_photo(request,
photo_size, input_size)`` then turns it into the target of one photo, in the pixels of the
model input made from it (the box mapped, the mask resized). ``target_for`` does both at
once for a single photo (``compare``). ``explain`` batches photos: ``batch_targets``,
``target_file_tag`` and ``target_identity`` are re-exported here for it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..apps import detection
from ..apps.photo_targets import (  # noqa: F401 - the faces' names for explain.py
    PhotoTarget,
    batch_targets,
    target_file_tag,
    target_identity,
)
from ..core.classes import ClassError, class_index
from ..core.targets import Target
from .common import split_names, usage_error


def add_target_arguments(
    parser: argparse.ArgumentParser, class_option: bool = True, class_set: bool = True
) -> None:
    """--box, --mask, and (unless the subcommand has them already) --class (dest
    ``target``) and --classes (a multi-label set, dest ``class_set``)."""
    parser.add_argument(
        "--box",
        metavar="X1,Y1,X2,Y2",
        help="detection models: explain the detection that best matches this box, in the "
        "photo's pixels (left, top, right, bottom); --class C for the label it must have "
        "(default: none)",
    )
    parser.add_argument(
        "--mask",
        type=Path,
        metavar="FILE.png",
        help="segmentation models: explain --class C inside the region of this PNG's "
        "nonzero pixels, drawn at the photo's size (default: none)",
    )
    if class_option:
        parser.add_argument(
            "--class",
            dest="target",
            help="class index or name; with --box the detection's label, with --mask the "
            "region's class (default: each image's top-1)",
        )
    if class_set:
        parser.add_argument(
            "--classes",
            dest="class_set",
            metavar="C1,C2",
            help="multi-label: explain the sum of these classes' scores (default: one class)",
        )


# ---------------------------------------------------------------- the request


# What the options ask for, checked, before any photo is read (``apps.photo_targets``).
TargetRequest = PhotoTarget


def parse_target(args: argparse.Namespace, session) -> TargetRequest | int | None:
    """The options' target: a ``TargetRequest`` for --box / --mask / --classes, else the
    class index of --class (None: each image's top-1, as before). Usage errors, one line
    each, for a malformed box, a mask without a class or that cannot be read, unknown
    classes and options that cannot go together."""
    box_text, mask = getattr(args, "box", None), getattr(args, "mask", None)
    class_text, set_text = getattr(args, "target", None), getattr(args, "class_set", None)
    given = [name for name, value in (("--box", box_text), ("--mask", mask)) if value is not None]
    if set_text is not None:
        given.append("--classes")
    if len(given) > 1:
        raise usage_error(f"{' and '.join(given)}: give only one of --box, --mask, --classes")
    if set_text is not None:
        if class_text is not None:
            raise usage_error("--class and --classes: give one class or a set, not both")
        return TargetRequest(classes=tuple(parse_class_set("--classes", set_text, session)))
    label = None if class_text is None else target_class("--class", class_text, session)
    if box_text is not None:
        return TargetRequest(box=parse_box(box_text), label=label)
    if mask is not None:
        if label is None:
            raise usage_error(f"--mask {mask}: needs --class C, the region's class")
        return TargetRequest(mask=read_mask(mask), mask_file=Path(mask), label=label)
    return label


def target_for(
    args: argparse.Namespace,
    session,
    input_size: tuple[int, int],
    photo_size: tuple[int, int],
) -> Target | int | None:
    """The target of the options for one photo of ``photo_size`` (height, width) whose model
    input is ``input_size`` (height, width): a ``cameras.targets`` target, or the class
    index of a plain --class, or None for the top-1 (see ``parse_target``)."""
    request = parse_target(args, session)
    if not isinstance(request, TargetRequest):
        return request
    return target_of_photo(request, photo_size, input_size)


def target_of_photo(
    request: TargetRequest, photo_size: tuple[int, int], input_size: tuple[int, int]
) -> Target:
    """``request.for_image``, its problems (a box outside the photo, a mask of another
    size) as usage errors naming the option (``--box ...``, ``--mask ...``)."""
    try:
        return request.for_image(photo_size, input_size)
    except ValueError as error:
        raise usage_error(f"--{error}") from None


# ---------------------------------------------------------------- classes


def target_class(option: str, text: str, session) -> int:
    """A class (index or name, ``cameras.core.classes``) -> index, or a usage error naming
    the option. The class count comes from the names, or from the session's probe where
    the model has class scores; a detector's labels have no count to check here (the
    target checks them against the model's output)."""
    try:
        return class_index(text, session.class_names, _class_count(session))
    except ClassError as error:
        raise usage_error(f"{option} {text}: {error}") from None


def parse_class_set(option: str, text: str, session) -> list[int]:
    """ "3,7" or "tabby+tiger cat" -> [indices]: at least one, none twice."""
    parts = split_names(text.replace("+", ","))
    if not parts:
        raise usage_error(f"{option}: give at least one class")
    indices = [target_class(option, part, session) for part in parts]
    if len(set(indices)) != len(indices):
        raise usage_error(f"{option} {text}: a class is listed twice")
    return indices


def _class_count(session) -> int | None:
    if session.class_names:
        return len(session.class_names)
    try:
        return session.num_classes
    except (TypeError, ValueError):  # no (B, K) class scores: a detector, a segmenter
        return None


# ---------------------------------------------------------------- boxes


def parse_box(text: str) -> tuple[float, float, float, float]:
    """ "10,20,110,220" -> (10.0, 20.0, 110.0, 220.0) (``apps.detection.parse_box``), or a
    usage error naming --box."""
    try:
        return detection.parse_box(text)
    except ValueError as error:
        raise usage_error(f"--box {text}: {error}") from None


# ---------------------------------------------------------------- masks


def read_mask(path: Path) -> np.ndarray:
    """(H, W) bool: the PNG's nonzero pixels (any colour channel; a transparent pixel is
    outside). A missing or unreadable file, or one with no nonzero pixel, is a usage error."""
    path = Path(path)
    if not path.is_file():
        raise usage_error(f"--mask {path}: no such file")
    try:
        with Image.open(path) as image:
            image.load()
            mask = _nonzero(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise usage_error(f"--mask {path}: not a readable image (give a PNG)") from None
    if not mask.any():
        raise usage_error(f"--mask {path}: has no nonzero pixel, so no region")
    return mask


def _nonzero(image: Image.Image) -> np.ndarray:
    # A palette PNG (VOC's masks) holds indices, 0 the background: read the indices, not
    # the colours they stand for.
    if image.mode in ("RGBA", "LA", "PA"):
        pixels = np.asarray(image)
        return (pixels[..., :-1] != 0).any(-1) & (pixels[..., -1] != 0)
    pixels = np.asarray(image)
    return pixels != 0 if pixels.ndim == 2 else (pixels != 0).any(-1)

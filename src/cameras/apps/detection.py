"""Detection models, as the faces and the evaluation meet them: recognising one, and
putting a box given in a photo's pixels into the model input's pixels.

A detector returns, per image, a dict of ``boxes``, ``labels`` and ``scores`` instead of
(B, K) class scores: it has no top-5 to show and is explained for a box
(``cameras.targets.Box``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core import families
from ..core.capture import eval_mode, model_device, model_dtype
from ..core.classes import class_label

# The side of the blank image that asks an unknown model what it returns.
_PROBE_SIDE = 64

PhotoBox = tuple[float, float, float, float]

BOX_FORMAT = "expected X1,Y1,X2,Y2: four numbers, the box's corners in the photo's pixels"


def is_detector(model: object) -> bool:
    """Whether ``model`` is a detector: a torchvision detection family
    (``core.families.model_family``, by class, no forward pass), else a torch module whose
    output for a blank image is a list of dicts with ``boxes`` (one no-grad pass, model
    left as found; a known family of another kind is not asked). Other kinds of models
    (Keras) are not."""
    if not isinstance(model, nn.Module):
        return False
    family = families.model_family(model)
    if family is not None:
        return family == families.DETECTION
    return _returns_detections(model)


def _returns_detections(model: nn.Module) -> bool:
    probe = torch.zeros(
        1, 3, _PROBE_SIDE, _PROBE_SIDE, device=model_device(model), dtype=model_dtype(model)
    )
    try:
        with eval_mode(model), torch.no_grad():
            output = model(probe)
    except Exception:  # noqa: BLE001 - a model that cannot take the probe is no detector we know
        return False
    return (
        isinstance(output, list | tuple)
        and len(output) == 1
        and isinstance(output[0], dict)
        and "boxes" in output[0]
    )


def box_in_input(box: PhotoBox, photo_size: tuple[int, int], input_size: tuple[int, int]):
    """A box in a photo's pixels -> the same box in the model input's pixels.

    photo_size, input_size: (height, width). The input is the whole photo resized
    (``cameras.models.Preprocess``: no crop, each side to its own rounded size), so x
    scales by input width / photo width and y by input height / photo height."""
    (height, width), (in_height, in_width) = photo_size, input_size
    sx, sy = in_width / width, in_height / height
    x1, y1, x2, y2 = box
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def parse_box(text: str) -> PhotoBox:
    """ "10,20,110,220" -> (10.0, 20.0, 110.0, 220.0): four finite numbers, x1 < x2 and
    y1 < y2 (left, top, right, bottom); ValueError with a one-line reason otherwise."""
    try:
        values = tuple(float(part.strip()) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(BOX_FORMAT)
    x1, y1, x2, y2 = values
    if not (x1 < x2 and y1 < y2):
        raise ValueError("needs X1 < X2 and Y1 < Y2 (left, top, right, bottom)")
    return values


def check_inside(box: PhotoBox, photo_size: tuple[int, int]) -> None:
    """ValueError when ``box`` is not inside a photo of ``photo_size`` (height, width)."""
    height, width = photo_size
    x1, y1, x2, y2 = box
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise ValueError(
            f"not inside the photo, which is {width}x{height} pixels "
            f"(corners from 0,0 to {width},{height})"
        )


def box_text(box: PhotoBox) -> str:
    """(10.0, 20.5, 110.0, 220.0) -> "10,20.5,110,220" (what ``parse_box`` reads)."""
    return ",".join(f"{v:g}" for v in box)


def box_label(box: PhotoBox, index: int | None, class_names) -> str:
    """How every face names a box it explains, in the photo's pixels as typed:
    "box 10,20,110,220 cat (17)", or "box 10,20,110,220" with no label."""
    named = "" if index is None else f" {class_label(index, class_names)}"
    return f"box {box_text(box)}{named}"


def top_detections(model: nn.Module, x: torch.Tensor, k: int = 5) -> list[tuple[int, float, tuple]]:
    """The ``k`` highest-scoring detections of one (1, 3, h, w) input, best first, as
    (label, score, box in the input's pixels); one no-grad pass, model left as found."""
    with eval_mode(model), torch.no_grad():
        found = model(x.to(model_device(model), model_dtype(model)))[0]
    order = found["scores"].float().argsort(descending=True)[:k].tolist()
    return [
        (int(found["labels"][i]), float(found["scores"][i]), tuple(found["boxes"][i].tolist()))
        for i in order
    ]

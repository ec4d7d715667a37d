"""What a saliency map explains: a target turns the model's output at one input size into
one score per image to back-propagate, and says whether the target is present at that size.

The protocol (``Target``) is a callable::

    target(output, size, input_size) -> (score, present)   # or just score

- ``output``: what the model returned for the batch at this scale: a (B, K) tensor of class
  scores, a dict (torchvision segmentation's ``{"out": ...}``), an object with ``.logits``
  (Hugging Face), or a detector's list of per-image dicts (``boxes``, ``labels``, ``scores``);
- ``size``: the (height, width) fed to the model at this scale; ``input_size``: the
  (height, width) of the caller's input, in whose coordinates boxes and masks are given;
- ``score``: (B,) tensor whose sum is back-propagated to the layer; ``present``: (B,) bool,
  whether the target is there at this scale (the scale rule's "kept" for targets that
  define presence; a plain callable that returns only a score is present everywhere).

Shipped targets: ``Class`` (one class per image; an index or a name is the shorthand),
``Classes`` (a set: multi-label), ``Region`` (a class inside a mask of a segmentation
output), ``Box`` (a detection matched by box and label) and ``Similarity`` (cosine to a
reference embedding). A list with one target per image explains each image for its own.

Class scores are the model's pre-softmax (or pre-sigmoid) scores; ``Class`` and
``Classes`` are *ranked* targets: the method's scale rule (top-1, top-5, all) decides
their presence from the ranks of the scale's scores (``ranked_classes``). The others say
for themselves.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .classes import (
    ClassError,
    ClassLike,
    check_indices,
    class_index,
    class_indices,
    class_label,
    wrong_type,
)

# A Box counts a detection as the same object from this overlap on (the detection rule
# of PASCAL VOC and of pytorch-grad-cam's FasterRCNNBoxScoreTarget).
IOU_THRESHOLD = 0.5
# A Region is present at a scale when its class is the arg-max in this share of its pixels.
REGION_PRESENT_SHARE = 0.5


# ---------------------------------------------------------------- reading model outputs


def logits_of(output: object) -> torch.Tensor:
    """The (B, K) class scores from a model's output: a tensor, an object with
    ``.logits`` (Hugging Face style), a dict with ``"logits"``, or a tuple whose
    first element is the scores."""
    scores = _main_tensor(output, "logits")
    if scores is None:
        raise TypeError(
            f"the model returned {type(output).__name__}; expected a (B, K) tensor of class "
            "scores or an object with .logits (for other outputs pass a target from "
            "cameras.targets)"
        )
    if scores.dim() != 2:
        raise ValueError(
            f"the model's class scores have shape {tuple(scores.shape)}; expected (B, K) "
            "(for a segmentation or detection model pass a target from cameras.targets)"
        )
    return scores


def class_scores_or_none(output: object) -> torch.Tensor | None:
    """The (B, K) class scores when the output has them (a classifier's); None otherwise
    (a segmentation map, detections, an embedding read by a non-class target)."""
    scores = _main_tensor(output, "logits")
    return scores if scores is not None and scores.dim() == 2 else None


def segmentation_scores(output: object) -> torch.Tensor:
    """The (B, K, h, w) per-pixel class scores of a segmentation model: a tensor,
    torchvision's ``{"out": ...}``, or an object with ``.logits`` (SegFormer)."""
    scores = _main_tensor(output, "out", "logits")
    if scores is None or scores.dim() != 4:
        shape = f"shape {tuple(scores.shape)}" if scores is not None else type(output).__name__
        raise ValueError(
            f"Region needs per-pixel class scores (B, K, h, w) from the model; it returned {shape}"
        )
    return scores


def embedding_of(output: object) -> torch.Tensor:
    """The (B, D) embedding of an image tower: a tensor (flattened past the batch axis),
    an object with ``.image_embeds`` or ``.pooler_output``, or a tuple's first tensor."""
    vectors = _main_tensor(output, "image_embeds", "pooler_output", "embedding")
    if vectors is None:
        raise ValueError(
            f"Similarity needs an embedding tensor from the model; it returned "
            f"{type(output).__name__}"
        )
    return vectors.flatten(1)


def _main_tensor(output: object, *names: str) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    for name in names:
        if isinstance(output, dict) and isinstance(output.get(name), torch.Tensor):
            return output[name]
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


# ---------------------------------------------------------------- the targets


class Target:
    """Base of the shipped targets; see the module docstring for the protocol.

    ``bind(batch, class_names)`` returns a copy for one call on a batch, with class names
    turned into indices and sizes checked (a shipped target is never changed by a call,
    so one object can be used from several threads).
    """

    #: (B, n) class indices the scale rule ranks, for class targets; None otherwise.
    ranked_classes: torch.Tensor | None = None

    def bind(self, batch: int, class_names: Sequence[str] | None) -> Target:
        return self

    def __call__(self, output, size, input_size) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def label(self, image: int, class_names: Sequence[str] | None = None) -> str:
        """A short description of what is explained for one image (file names, titles)."""
        return type(self).__name__.lower()

    def class_of(self, image: int) -> int | None:
        """The class explained for one image, when the target is about one class."""
        return None

    def for_image(self, image: int, count: int) -> Target:
        """The bound target of image ``image`` for a batch of ``count`` variants of that one
        image (Score-CAM's masked copies, Ablation-CAM's ablations). A target that treats
        every image alike is itself."""
        return self


def _everywhere(score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return score, torch.ones(score.shape[0], dtype=torch.bool, device=score.device)


class Class(Target):
    """One class per image: its pre-softmax score (today's behaviour).

    classes: an index or a name (all images), or one per image; None takes each image's
    top-1 class at the first scale and keeps it for the others.
    """

    def __init__(self, classes: ClassLike | Sequence[ClassLike] | None = None) -> None:
        self.classes = classes
        self.indices: torch.Tensor | None = None
        self._checked = False

    def bind(self, batch: int, class_names: Sequence[str] | None) -> Class:
        bound = Class(self.classes)
        bound.indices = class_indices(self.classes, batch, class_names)
        return bound

    @property
    def ranked_classes(self) -> torch.Tensor | None:
        return None if self.indices is None else self.indices[:, None]

    def __call__(self, output, size, input_size):
        logits = logits_of(output)
        if self.indices is None:  # no class given: the first scale's top-1, kept
            self.indices = logits.detach().argmax(1)
        if self.indices.device != logits.device:
            self.indices = self.indices.to(logits.device)
        if not self._checked:  # once per call: a range check reads the device
            check_indices(self.indices, logits.shape[1])
            self._checked = True
        return _everywhere(logits.gather(1, self.indices[:, None])[:, 0])

    def class_of(self, image: int) -> int | None:
        return None if self.indices is None else int(self.indices[image])

    def for_image(self, image: int, count: int) -> Class:
        one = Class(self.classes)
        one.indices = self.indices[image : image + 1].expand(count)
        one._checked = self._checked
        return one

    def label(self, image: int, class_names: Sequence[str] | None = None) -> str:
        index = self.class_of(image)
        return "top-1" if index is None else class_label(index, class_names)


class Classes(Target):
    """A set of classes (multi-label): the sum of their scores (logits, also for a sigmoid
    model: the pre-sigmoid scores). The scale rule ranks each class of the set."""

    def __init__(self, classes: Sequence[ClassLike]) -> None:
        if isinstance(classes, str | numbers.Integral) or len(classes) == 0:
            raise ClassError("Classes takes a non-empty list of classes, e.g. Classes([3, 7])")
        self.classes = list(classes)
        self.indices: torch.Tensor | None = None  # (n,)
        self._checked = False

    def bind(self, batch: int, class_names: Sequence[str] | None) -> Classes:
        bound = Classes(self.classes)
        bound.indices = torch.tensor([class_index(c, class_names) for c in self.classes])
        bound._batch = batch
        return bound

    @property
    def ranked_classes(self) -> torch.Tensor | None:
        if self.indices is None:
            return None
        return self.indices[None].expand(self._batch, -1)

    def __call__(self, output, size, input_size):
        logits = logits_of(output)
        if self.indices.device != logits.device:
            self.indices = self.indices.to(logits.device)
        if not self._checked:  # once per call: a range check reads the device
            check_indices(self.indices, logits.shape[1])
            self._checked = True
        return _everywhere(logits[:, self.indices].sum(1))

    def for_image(self, image: int, count: int) -> Classes:
        one = Classes(self.classes)
        one.indices, one._batch = self.indices, count
        return one

    def label(self, image: int, class_names: Sequence[str] | None = None) -> str:
        if self.indices is None:
            return "+".join(str(c) for c in self.classes)
        return "+".join(class_names[i] if class_names else str(i) for i in self.indices.tolist())


def _as_mask(mask: object) -> torch.Tensor:
    values = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if values.dim() not in (2, 3):
        raise ValueError(f"mask must be (H, W) or (B, H, W), got shape {tuple(values.shape)}")
    values = values.bool()
    if not bool(values.flatten(values.dim() - 2).any(-1).all()):
        raise ValueError("mask has no pixel set: a region needs at least one")
    return values


class Region(Target):
    """A class inside a region of a segmentation output.

    class_: the class (index or name); mask: a (H, W) bool tensor (or array) at the input's
    size, or (B, H, W) one per image. Score: the mean of the class's logits over the mask's
    pixels, the mask resized (nearest) to each scale's output grid; a mean, so larger
    scales do not weigh more. Present where the class is the arg-max in at least half of
    the mask's pixels.
    """

    def __init__(self, class_: ClassLike, mask: object) -> None:
        self.class_ = class_
        self.mask = _as_mask(mask)
        self.index: int | None = None

    def bind(self, batch: int, class_names: Sequence[str] | None) -> Region:
        bound = Region.__new__(Region)
        bound.class_, bound.mask = self.class_, self.mask
        bound.index = class_index(self.class_, class_names)
        if self.mask.dim() == 3 and self.mask.shape[0] != batch:
            raise ValueError(f"mask has {self.mask.shape[0]} images for a batch of {batch}")
        return bound

    def __call__(self, output, size, input_size):
        scores = segmentation_scores(output)
        if tuple(self.mask.shape[-2:]) != tuple(input_size):
            raise ValueError(
                f"mask is {self.mask.shape[-2]}x{self.mask.shape[-1]} but the input is "
                f"{input_size[0]}x{input_size[1]}: give the mask at the input's size"
            )
        check_indices(torch.tensor([self.index]), scores.shape[1])
        mask = self.mask if self.mask.dim() == 3 else self.mask[None]
        grid = F.interpolate(mask[:, None].float(), size=scores.shape[2:], mode="nearest")[:, 0]
        grid = grid.to(scores.device, scores.dtype)  # (1 or B, h, w)
        pixels = grid.sum((1, 2))
        score = (scores[:, self.index] * grid).sum((1, 2)) / pixels.clamp(min=1)
        winner = (scores.detach().argmax(1) == self.index).to(grid.dtype)
        share = (winner * grid).sum((1, 2)) / pixels.clamp(min=1)
        present = (share >= REGION_PRESENT_SHARE) & (pixels > 0)
        return score, present.expand(score.shape[0])

    def class_of(self, image: int) -> int | None:
        return self.index

    def for_image(self, image: int, count: int) -> Region:
        one = Region.__new__(Region)
        one.class_, one.index = self.class_, self.index
        one.mask = self.mask[image] if self.mask.dim() == 3 else self.mask
        return one

    def label(self, image: int, class_names: Sequence[str] | None = None) -> str:
        name = self.class_ if self.index is None else class_label(self.index, class_names)
        return f"region of {name}"


def box_iou(boxes: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """(N,) intersection over union of (N, 4) boxes with one (4,) box, (x1, y1, x2, y2)."""
    top_left = torch.maximum(boxes[:, :2], box[:2])
    bottom_right = torch.minimum(boxes[:, 2:], box[2:])
    overlap = (bottom_right - top_left).clamp(min=0).prod(1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(1)
    own = (box[2:] - box[:2]).clamp(min=0).prod()
    return overlap / (area + own - overlap).clamp(min=1e-12)


class Box(Target):
    """A detection: the score of the model's detection that best matches a box and label.

    box: (x1, y1, x2, y2) in the input's pixel coordinates, or one per image; class_: the
    label the detection must have (index or name), or None for any. At each scale the
    detections' boxes are mapped back to the input's coordinates; the best match is the
    detection with the largest overlap (IoU >= 0.5). Absent where none matches: its
    score is then 0 with no gradient, and the scale rule drops that scale.
    """

    def __init__(self, box: Sequence[float], class_: ClassLike | None = None) -> None:
        values = torch.as_tensor(np.asarray(box, dtype=np.float32))
        if values.dim() == 1:
            values = values[None]
        if values.dim() != 2 or values.shape[1] != 4:
            raise ValueError(f"box must be (x1, y1, x2, y2), got {list(np.asarray(box).shape)}")
        if bool((values[:, 2:] <= values[:, :2]).any()):
            raise ValueError(f"box {values[0].tolist()} needs x1 < x2 and y1 < y2")
        self.boxes = values  # (1 or B, 4)
        self.class_ = class_
        self.index: int | None = None

    def bind(self, batch: int, class_names: Sequence[str] | None) -> Box:
        bound = Box.__new__(Box)
        bound.boxes, bound.class_ = self.boxes, self.class_
        bound.index = None if self.class_ is None else class_index(self.class_, class_names)
        if bound.boxes.shape[0] not in (1, batch):
            raise ValueError(f"got {bound.boxes.shape[0]} boxes for a batch of {batch}")
        return bound

    def __call__(self, output, size, input_size):
        if not isinstance(output, list | tuple) or not all(isinstance(d, dict) for d in output):
            raise ValueError(
                f"Box needs a detector's output (a list of dicts with boxes, labels and "
                f"scores); the model returned {type(output).__name__}"
            )
        # Boxes at this scale back to the input's coordinates: x by W / w, y by H / h.
        back = torch.tensor(
            [input_size[1] / size[1], input_size[0] / size[0]] * 2, dtype=torch.float32
        )
        scores, present = [], []
        for image, detections in enumerate(output):
            box = self.boxes[image if self.boxes.shape[0] > 1 else 0]
            score, found = self._best_match(detections, box, back)
            scores.append(score)
            present.append(found)
        return torch.stack(scores), torch.tensor(present, device=scores[0].device)

    def _best_match(self, detections: dict, box: torch.Tensor, back: torch.Tensor):
        found = detections["scores"]
        boxes = detections["boxes"].detach().float() * back.to(found.device)
        overlap = box_iou(boxes, box.to(found.device))
        matches = overlap >= IOU_THRESHOLD
        if self.index is not None:
            matches &= detections["labels"] == self.index
        if not bool(matches.any()):
            return found.new_zeros(()), False
        best = torch.where(matches, overlap, torch.full_like(overlap, -1)).argmax()
        return found[best], True

    def class_of(self, image: int) -> int | None:
        return self.index

    def for_image(self, image: int, count: int) -> Box:
        one = Box.__new__(Box)
        one.class_, one.index = self.class_, self.index
        one.boxes = self.boxes[image if self.boxes.shape[0] > 1 else 0][None]
        return one

    def label(self, image: int, class_names: Sequence[str] | None = None) -> str:
        box = self.boxes[image if self.boxes.shape[0] > 1 else 0]
        corners = ",".join(f"{v:g}" for v in box.tolist())
        if self.class_ is None:
            return f"box {corners}"
        name = self.class_ if self.index is None else class_label(self.index, class_names)
        return f"box {corners} {name}"


class Similarity(Target):
    """Cosine similarity of the model's embedding to a reference embedding (D,), or one
    per image (B, D): for embedding models and CLIP-style image towers."""

    def __init__(self, embedding: object) -> None:
        values = embedding if isinstance(embedding, torch.Tensor) else np.asarray(embedding)
        self.embedding = torch.as_tensor(values).detach().float()
        if self.embedding.dim() not in (1, 2):
            raise ValueError(
                f"embedding must be (D,) or (B, D), got shape {tuple(self.embedding.shape)}"
            )

    def __call__(self, output, size, input_size):
        vectors = embedding_of(output)
        reference = self.embedding.to(vectors.device, vectors.dtype)
        reference = reference[None] if reference.dim() == 1 else reference
        if reference.shape[-1] != vectors.shape[-1]:
            raise ValueError(
                f"the reference embedding has {reference.shape[-1]} values; the model's has "
                f"{vectors.shape[-1]}"
            )
        return _everywhere(F.cosine_similarity(vectors, reference, dim=1))

    def for_image(self, image: int, count: int) -> Similarity:
        return Similarity(self.embedding[image] if self.embedding.dim() == 2 else self.embedding)

    def label(self, image: int, class_names: Sequence[str] | None = None) -> str:
        return "similarity"


class Custom(Target):
    """A user's callable with the target signature, returning a score or (score, present)."""

    def __init__(self, function: Callable) -> None:
        self.function = function

    def __call__(self, output, size, input_size):
        result = self.function(output, size, input_size)
        if isinstance(result, tuple):
            score, present = result
            return score, torch.as_tensor(present, device=score.device).bool()
        if not isinstance(result, torch.Tensor) or result.dim() != 1:
            raise ValueError(
                f"a target callable must return a (B,) score tensor or (score, present); "
                f"{getattr(self.function, '__name__', 'it')} returned {type(result).__name__}"
            )
        return _everywhere(result)

    def label(self, image: int, class_names: Sequence[str] | None = None) -> str:
        return getattr(self.function, "__name__", "target")


class PerImage(Target):
    """One target per image of a batch: image i is explained for targets[i]."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self.targets = list(targets)

    def bind(self, batch: int, class_names: Sequence[str] | None) -> PerImage:
        if len(self.targets) != batch:
            raise ClassError(f"got {len(self.targets)} targets for a batch of {batch} images")
        return PerImage([t.bind(batch, class_names) for t in self.targets])

    @property
    def ranked_classes(self) -> torch.Tensor | None:
        ranked = [t.ranked_classes for t in self.targets]
        if any(r is None for r in ranked) or len({r.shape[1] for r in ranked}) > 1:
            return None
        return torch.stack([r[i] for i, r in enumerate(ranked)])

    def __call__(self, output, size, input_size):
        results = [target(output, size, input_size) for target in self.targets]
        scores = torch.stack([score[i] for i, (score, _) in enumerate(results)])
        present = torch.stack([there[i] for i, (_, there) in enumerate(results)])
        return scores, present

    def class_of(self, image: int) -> int | None:
        return self.targets[image].class_of(image)

    def for_image(self, image: int, count: int) -> Target:
        return self.targets[image].for_image(image, count)

    def label(self, image: int, class_names: Sequence[str] | None = None) -> str:
        return self.targets[image].label(image, class_names)


# ---------------------------------------------------------------- what callers pass


def _is_class_like(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 or not value.is_floating_point()
    return isinstance(value, str | numbers.Integral)


def _one_target(value: object) -> Target:
    if isinstance(value, Target):
        return value
    if _is_class_like(value):
        return Class(value)
    if callable(value):
        return Custom(value)
    raise wrong_type(value)


def as_target(
    targets: object, batch: int, class_names: Sequence[str] | None = None
) -> Target | None:
    """The bound target of one call on a batch of ``batch`` images, or None when none is
    given (the method then takes each image's top-1 class).

    targets: None; a class (index, name, 0-d tensor) or a target for every image; or one
    per image (a sequence, or a 1-d integer tensor of classes).
    """
    if targets is None:
        return None
    if isinstance(targets, np.ndarray):
        targets = targets.tolist()
    if isinstance(targets, torch.Tensor) or _is_class_like(targets):
        return Class(targets).bind(batch, class_names)
    if isinstance(targets, Sequence):
        if all(_is_class_like(value) for value in targets):
            return Class(targets).bind(batch, class_names)
        return PerImage([_one_target(value) for value in targets]).bind(batch, class_names)
    return _one_target(targets).bind(batch, class_names)

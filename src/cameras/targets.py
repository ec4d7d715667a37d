"""What a map explains, as objects: pass one as ``targets=`` to any method or session.

- ``Classes([c1, c2])``: a set of classes (multi-label), the sum of their scores;
- ``Region(c, mask)``: class c inside a (H, W) bool mask of a segmentation output;
- ``Box((x1, y1, x2, y2), c)``: the detection that best matches a box (and label);
- ``Similarity(embedding)``: cosine similarity to a reference embedding;
- ``Class(c)``: one class (an index or a name alone is the shorthand for it);
- any callable ``(output, size, input_size) -> score`` or ``-> (score, present)``.

A list with one of these per image explains each image for its own. The protocol and the
definitions are in ``cameras.core.targets`` and docs/targets.md.
"""

from .core.targets import (
    IOU_THRESHOLD,
    REGION_PRESENT_SHARE,
    Box,
    Class,
    Classes,
    Region,
    Similarity,
    Target,
)

__all__ = [
    "IOU_THRESHOLD",
    "REGION_PRESENT_SHARE",
    "Box",
    "Class",
    "Classes",
    "Region",
    "Similarity",
    "Target",
]

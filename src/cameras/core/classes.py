"""The one rule that turns what a user calls a class into a class index.

Every entry point uses it: the methods' ``targets=``, the attack's ``target=``, the
layer capture's range check, the CLI's ``--class`` / ``--classes`` / ``--target``, the
web page's class box and the datasets' labels. The rule, in order:

- ``None`` means "no class given" (the caller decides: top-1, least-likely, ...);
- a ``bool`` is refused (``True`` is an ``int`` to Python, never a class to a user);
- an ``int`` (or a NumPy / 0-d integer tensor) is an index, ``0 <= i < num_classes``;
- a string is stripped; ASCII digits with an optional sign (``"281"``, ``"-3"``) are
  an index, so ``--class -3`` is "out of range" everywhere; any other string is a name,
  matched exactly, then case-insensitively. Digits of other scripts (``"²"``, ``"٣"``)
  are names, not indices, so they can never raise Python's own ``int()`` errors;
- anything else is the wrong type.

Each failure has one wording, raised as ``ClassError`` (a ``ValueError``; the wrong-type
case is also a ``TypeError``), a single line a CLI or a web page can show as it is.
"""

from __future__ import annotations

import difflib
import numbers
import re
from collections.abc import Sequence

import torch

# ASCII only: str.isdigit() also accepts "²" and "٣", which int() refuses or reads.
_INDEX = re.compile(r"[+-]?[0-9]+", re.ASCII)

ClassLike = int | str | torch.Tensor
Targets = None | ClassLike | Sequence[int | str]


class ClassError(ValueError):
    """A class the model does not have, or a value that is not a class; one line."""


class ClassTypeError(ClassError, TypeError):
    """A value of a type that cannot name a class (a bool, a float, a list where one is due)."""


def out_of_range(index: int, num_classes: int | None) -> ClassError:
    """The one "out of range" error."""
    if num_classes is None:
        return ClassError(f"class {index} is out of range: a class index is 0 or more")
    return ClassError(
        f"class {index} is out of range: the model has {num_classes} classes "
        f"(0 to {num_classes - 1})"
    )


def closest_names(text: str, class_names: Sequence[str], n: int = 5) -> list[str]:
    """Up to ``n`` class names that look like ``text`` (case-insensitive), best first."""
    lowered = [name.lower() for name in class_names]
    close = difflib.get_close_matches(text.lower(), lowered, n=n, cutoff=0.6)
    return [class_names[lowered.index(c)] for c in close]


def unknown_name(text: str, class_names: Sequence[str] | None, num_classes: int | None):
    """The one "unknown class name" error, with the closest names when there are any."""
    if class_names is None:
        count = f" from 0 to {num_classes - 1}" if num_classes else ""
        return ClassError(
            f"unknown class name {text!r}: the model has no class names; give an index{count}"
        )
    close = closest_names(text, class_names)
    hint = f"; closest: {', '.join(close)}" if close else "; no close match"
    return ClassError(f"unknown class name {text!r}{hint}")


def wrong_type(value: object) -> ClassTypeError:
    """The one "wrong type" error."""
    return ClassTypeError(f"a class must be an index or a name, not {type(value).__name__}")


def class_index(
    value: ClassLike,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> int:
    """The class index for one class given as an index, a digit string, a name or a
    0-d integer tensor (see the module docstring for the rule).

    class_names: the model's class names, in index order (None: names are refused).
    num_classes: the model's class count (default ``len(class_names)``; None with no
        names: only negative indices are out of range).
    Raises ClassError (ClassTypeError for a wrong type).
    """
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.dtype == torch.bool:
            raise wrong_type(value)
        value = int(value.item())
    if isinstance(value, bool):
        raise wrong_type(value)
    if isinstance(value, numbers.Integral):
        index = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ClassError("empty class: give an index or a name")
        if not _INDEX.fullmatch(text):
            return _by_name(text, class_names, num_classes)
        index = int(text)
    else:
        raise wrong_type(value)
    if index < 0 or (num_classes is not None and index >= num_classes):
        raise out_of_range(index, num_classes)
    return index


def _by_name(text: str, class_names: Sequence[str] | None, num_classes: int | None) -> int:
    if class_names is None:
        raise unknown_name(text, None, num_classes)
    for i, name in enumerate(class_names):
        if name == text:
            return i
    lowered = text.lower()
    for i, name in enumerate(class_names):
        if name.lower() == lowered:
            return i
    raise unknown_name(text, class_names, num_classes)


def class_indices(
    targets: Targets,
    batch: int,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> torch.Tensor | None:
    """(batch,) int64 class indices for a batch, or None when no class is given.

    targets: None; one class for every image (index, name, 0-d tensor); or one per
    image (a sequence or a 1-d tensor of length ``batch``).
    """
    if targets is None:
        return None
    if isinstance(targets, torch.Tensor) and targets.dim() > 0:
        if targets.is_floating_point() or targets.dtype == torch.bool:
            raise wrong_type(targets)
        targets = targets.flatten().tolist()
    if isinstance(targets, str | numbers.Integral | torch.Tensor):
        return torch.full((batch,), class_index(targets, class_names, num_classes))
    if not isinstance(targets, Sequence):
        raise wrong_type(targets)
    if len(targets) != batch:
        raise ClassError(f"got {len(targets)} classes for a batch of {batch} images")
    return torch.tensor(
        [class_index(t, class_names, num_classes) for t in targets], dtype=torch.long
    )


def check_indices(indices: torch.Tensor, num_classes: int) -> None:
    """Raise the "out of range" error for the first index of ``indices`` outside
    ``[0, num_classes)`` (used once the model's class count is known)."""
    bad = (indices < 0) | (indices >= num_classes)
    if bad.any():
        raise out_of_range(int(indices[bad][0]), num_classes)


def class_label(index: int, class_names: Sequence[str] | None) -> str:
    """``"tabby (281)"``, or ``"class 281"`` for a model without names."""
    return f"{class_names[index]} ({index})" if class_names else f"class {index}"


# The attribute where a model that load_model built keeps its class names, so methods can
# accept names as targets without the caller passing them again (a user's own model is
# never written to; its names come from ``config.id2label``, or the caller).
CLASS_NAMES_ATTRIBUTE = "cameras_class_names"


def class_names_for(model: object) -> list[str] | None:
    """Class names of a model built by load_model, or from a Hugging Face ``config.id2label``."""
    names = getattr(model, CLASS_NAMES_ATTRIBUTE, None)
    if names is not None:
        return list(names)
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if isinstance(id2label, dict) and id2label:
        return [str(id2label[i]) for i in sorted(id2label)]
    return None

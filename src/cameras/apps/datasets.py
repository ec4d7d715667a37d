"""Annotation readers: bounding boxes of the classes an image shows, for evaluation.

Three formats, all read into the same ``Record`` list:

- a simple JSON list, the format of the set this project ships::

      [{"file": "cat.jpg", "objects": [{"class_index": 281, "boxes": [[x0, y0, x1, y1]]}]}]

  ``file`` is relative to the JSON file's folder (or to ``images``); extra keys are
  ignored; optional ``width``/``height`` are checked against the image;
- Pascal VOC XML, one file per image (also ImageNet's bounding-box format, whose class
  names are WordNet synset ids such as ``n02123045``);
- COCO instances JSON (``images``, ``annotations``, ``categories``).

Boxes are kept in the original image's pixels, as ``(x0, y0, x1, y1)`` with x1, y1
exclusive (see ``cameras.apps.metrics.pointing``): VOC's 1-based inclusive ``xmin..xmax``
becomes ``(xmin - 1, xmax)``, COCO's ``[x, y, w, h]`` becomes ``(x, y, x + w, y + h)``.
Metrics resize maps to each image's own size, so nothing is rescaled here.

Dataset class labels become model class indices through, in order: a class-map file
(JSON object ``{"label": index or model class name}``), ImageNet synset ids (for a
1000-class model, using the synset list timm ships, ``timm/data/_info/
imagenet_synsets.txt``: line k is class k), then the class rule of ``cameras.core.classes``
(an index, or the model's class names, exact then case-insensitive).

Bad annotations never stop a run: an object with an unknown class or a malformed box
is dropped with a message in ``Record.problems``; a record that cannot be read at all
is an error line; ``check_record`` later drops boxes outside the image once its size is
known, and a record left with no objects is skipped by the caller.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.classes import ClassError, class_index

Box = tuple[float, float, float, float]

# A box may overshoot the image by this many pixels (rounding in annotation tools,
# COCO's float boxes); it is clipped. Beyond this it is reported as outside the image.
BOX_SLACK = 1.0
_SYNSET = re.compile(r"^n\d{8}$")
_IMAGE_SUFFIXES = (".JPEG", ".jpg", ".jpeg", ".png", ".JPG", ".PNG")


class AnnotationError(ValueError):
    """An annotation source cannot be read at all (the message names the file)."""


@dataclass(frozen=True)
class Record:
    """One annotated image.

    key: unique name of the record (its file, relative to the data root), used by
        ``--resume`` to recognise finished work.
    file: the image path.
    objects: model class index -> the boxes of that class, in original image pixels.
    size: (width, height) stated by the annotation, or None.
    problems: objects dropped while reading, one message each.
    """

    key: str
    file: Path
    objects: dict[int, tuple[Box, ...]]
    size: tuple[int, int] | None = None
    problems: tuple[str, ...] = field(default=())


@dataclass
class Annotations:
    """Records read from one source, and the records that could not be read at all."""

    records: list[Record]
    errors: list[str]


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k synset ids in class-index order (from timm's package data)."""
    from importlib.resources import files

    text = files("timm.data").joinpath("_info", "imagenet_synsets.txt").read_text()
    synsets = [line.strip() for line in text.splitlines() if line.strip()]
    if len(synsets) != 1000:
        raise RuntimeError(f"timm's imagenet_synsets.txt has {len(synsets)} lines, expected 1000")
    return synsets


class ClassResolver:
    """Dataset class label -> model class index (see the module docstring for the order).

    classes: the model's class names (None if it has none); num_classes: the model's
    class count (default ``len(classes)``); class_map: label -> index or class name.
    Labels that neither the class map nor the synset list know go through the class
    rule of ``cameras.core.classes``; every failure is a ``ClassError`` (a ValueError).
    """

    def __init__(
        self,
        classes: Sequence[str] | None = None,
        num_classes: int | None = None,
        class_map: dict[str, int | str] | None = None,
    ) -> None:
        self.classes = list(classes) if classes is not None else None
        self.num_classes = (
            num_classes
            if num_classes is not None
            else (len(self.classes) if self.classes is not None else None)
        )
        self.class_map = {str(k): v for k, v in (class_map or {}).items()}
        self._synsets: dict[str, int] | None = None

    def index(self, value: object) -> int:
        """A model class index for a value given as a class (index or name)."""
        return class_index(value, self.classes, self.num_classes)

    def __call__(self, label: str | int) -> int:
        """The model class index for a dataset label; ClassError if unknown."""
        key = str(label).strip() if not isinstance(label, bool) else None
        if key is not None and key in self.class_map:
            try:
                return self.index(self.class_map[key])
            except ClassError as error:
                raise ClassError(f"class map: {key!r} -> {error}") from None
        if key is not None and _SYNSET.match(key) and self.num_classes == 1000:
            if self._synsets is None:
                self._synsets = {s: i for i, s in enumerate(imagenet_synsets())}
            if key in self._synsets:
                return self._synsets[key]
        return self.index(label)


def load_class_map(path: str | Path) -> dict[str, int | str]:
    """A class-map file: a JSON object ``{"dataset label": model index or class name}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AnnotationError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AnnotationError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, int | str) and not isinstance(v, bool) for v in data.values()
    ):
        raise AnnotationError(
            f"{path}: a class map must be a JSON object of label -> class index or name"
        )
    return data


def parse_box(raw: object) -> Box:
    """[x0, y0, x1, y1] -> Box, or ValueError for anything that is not 4 finite numbers
    with x0 < x1 and y0 < y1."""
    if not isinstance(raw, list | tuple) or len(raw) != 4:
        raise ValueError(f"box {raw!r} is not [x0, y0, x1, y1]")
    try:
        x0, y0, x1, y1 = (float(v) for v in raw)
    except (TypeError, ValueError):
        raise ValueError(f"box {raw!r} has a non-numeric coordinate") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"box {raw!r} has a non-finite coordinate")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {raw!r} is empty (needs x0 < x1 and y0 < y1)")
    return (x0, y0, x1, y1)


def check_record(record: Record, width: int, height: int) -> tuple[Record, list[str]]:
    """Drop boxes that lie outside a ``width`` x ``height`` image (beyond BOX_SLACK
    pixels) and clip the rest. Returns the cleaned record and one message per problem
    (the record's own reading problems first). A record whose stated size differs from
    the image keeps no objects: its boxes belong to another picture."""
    problems = list(record.problems)
    if record.size is not None and tuple(record.size) != (width, height):
        problems.append(
            f"annotation says {record.size[0]}x{record.size[1]} but the image is {width}x{height}"
        )
        return replace(record, objects={}), problems
    objects: dict[int, tuple[Box, ...]] = {}
    for index, boxes in record.objects.items():
        kept = []
        for x0, y0, x1, y1 in boxes:
            if (
                x0 < -BOX_SLACK
                or y0 < -BOX_SLACK
                or x1 > width + BOX_SLACK
                or y1 > height + BOX_SLACK
                or x0 >= width
                or y0 >= height
                or x1 <= 0
                or y1 <= 0
            ):
                problems.append(
                    f"class {index}: box {_fmt_box((x0, y0, x1, y1))} lies outside the "
                    f"{width}x{height} image"
                )
                continue
            kept.append((max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)))
        if kept:
            objects[index] = tuple(kept)
    return replace(record, objects=objects), problems


def _fmt_box(box: Box) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def _unique_key(key: str, seen: dict[str, int]) -> str:
    count = seen.get(key, 0) + 1
    seen[key] = count
    return key if count == 1 else f"{key}#{count}"


def _add(objects: dict[int, list[Box]], index: int, box: Box) -> None:
    objects.setdefault(index, []).append(box)


def _json_record(
    entry: dict, name_key: str, folder: Path, objects: dict, problems: list[str], seen: dict
) -> Record:
    """A Record from a JSON entry (ours or COCO's), with its width and height when given."""
    size = None
    width, height = entry.get("width"), entry.get("height")
    if _is_count(width) and _is_count(height):
        size = (width, height)
    return Record(
        key=_unique_key(entry[name_key], seen),
        file=folder / entry[name_key],
        objects=_freeze(objects),
        size=size,
        problems=tuple(problems),
    )


def _is_count(value: object) -> bool:
    """A positive whole number (and not a bool, which JSON readers give as an int)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _file_name(value: object) -> str | None:
    """A usable relative or absolute file name from an annotation, or None."""
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        return None
    return value


def _freeze(objects: dict[int, list[Box]]) -> dict[int, tuple[Box, ...]]:
    return {index: tuple(boxes) for index, boxes in sorted(objects.items())}


# --------------------------------------------------------------------------------------
# Simple JSON list
# --------------------------------------------------------------------------------------


def read_json_list(
    path: str | Path, images: str | Path | None = None, resolver: ClassResolver | None = None
) -> Annotations:
    """Read the simple JSON list format (see the module docstring)."""
    path = Path(path)
    return _json_list_records(path, _read_json(path), images, resolver)


def _json_list_records(
    path: Path, data: object, images: str | Path | None, resolver: ClassResolver | None
) -> Annotations:
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list of records")
    root = Path(images) if images is not None else path.parent
    resolver = resolver or ClassResolver()
    records, errors, seen = [], [], {}
    for n, entry in enumerate(data, start=1):
        where = f"{path}: record {n}"
        if not isinstance(entry, dict) or _file_name(entry.get("file")) is None:
            errors.append(f'{where}: needs a "file" string')
            continue
        where = f"{path}: record {n} ({entry['file']})"
        raw_objects = entry.get("objects")
        if not isinstance(raw_objects, list):
            errors.append(f'{where}: needs an "objects" list')
            continue
        objects: dict[int, list[Box]] = {}
        problems: list[str] = []
        for m, obj in enumerate(raw_objects, start=1):
            if not isinstance(obj, dict):
                problems.append(f"object {m}: not a JSON object")
                continue
            try:
                index = resolver.index(obj.get("class_index"))
            except ValueError as error:
                problems.append(f"object {m}: {error}")
                continue
            boxes = obj.get("boxes")
            if not isinstance(boxes, list) or not boxes:
                problems.append(f'object {m}: needs a non-empty "boxes" list')
                continue
            for raw in boxes:
                try:
                    _add(objects, index, parse_box(raw))
                except ValueError as error:
                    problems.append(f"object {m}: {error}")
        records.append(_json_record(entry, "file", root, objects, problems, seen))
    return Annotations(records, errors)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AnnotationError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AnnotationError(f"{path}: not a readable JSON file ({error})") from None
    except RecursionError:
        raise AnnotationError(f"{path}: JSON nested too deeply to read") from None


# --------------------------------------------------------------------------------------
# Pascal VOC / ImageNet XML
# --------------------------------------------------------------------------------------


def voc_folders(root: str | Path, images: str | Path | None = None) -> tuple[list[Path], Path]:
    """(XML files, image folder) for a VOC-style folder.

    A folder with ``Annotations/`` is a VOC release (images in ``JPEGImages/`` unless
    ``images`` says otherwise); any other folder holds the XML files itself (ImageNet's
    bounding-box folders), with the images beside them unless ``images`` is given.
    """
    root = Path(root)
    if (root / "Annotations").is_dir():
        xml_dir = root / "Annotations"
        image_dir = Path(images) if images is not None else root / "JPEGImages"
    else:
        xml_dir = root
        image_dir = Path(images) if images is not None else root
    files = sorted(xml_dir.glob("*.xml"))
    if not files:
        raise AnnotationError(f"{xml_dir}: no .xml annotation files in this folder")
    return files, image_dir


def _image_path(folder: Path, name: str) -> Path:
    """The image ``name`` in ``folder``; ImageNet XMLs omit the suffix, so try the usual ones."""
    path = folder / name
    if path.exists() or Path(name).suffix:
        return path
    for suffix in _IMAGE_SUFFIXES:
        candidate = folder / f"{name}{suffix}"
        if candidate.exists():
            return candidate
    return path


def read_voc_file(
    xml_path: str | Path, image_dir: str | Path, resolver: ClassResolver, key: str | None = None
) -> Record:
    """One VOC/ImageNet XML file -> Record; AnnotationError if the XML is unreadable."""
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as error:
        raise AnnotationError(f"{xml_path}: not a readable XML file ({error})") from None
    filename = (root.findtext("filename") or "").strip() or xml_path.stem
    size = None
    try:
        width = int(float(root.findtext("size/width") or 0))
        height = int(float(root.findtext("size/height") or 0))
        if width > 0 and height > 0:
            size = (width, height)
    except (ValueError, OverflowError):
        pass  # a malformed size is not worth dropping the record: the image has one
    objects: dict[int, list[Box]] = {}
    problems: list[str] = []
    for m, obj in enumerate(root.findall("object"), start=1):
        label = (obj.findtext("name") or "").strip()
        try:
            index = resolver(label)
            box = obj.find("bndbox")
            if box is None:
                raise ValueError("no <bndbox>")
            xmin, ymin, xmax, ymax = (
                _num(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")
            )
            # VOC pixels are 1-based and inclusive: xmin=1..xmax=W covers the whole width.
            _add(objects, index, parse_box([xmin - 1, ymin - 1, xmax, ymax]))
        except ValueError as error:
            problems.append(f"object {m} ({label or 'no name'}): {error}")
    return Record(
        key=key or xml_path.stem,
        file=_image_path(Path(image_dir), filename),
        objects=_freeze(objects),
        size=size,
        problems=tuple(problems),
    )


def _num(text: str | None) -> float:
    if text is None or not text.strip():
        raise ValueError("a box coordinate is missing")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"box coordinate {text!r} is not a number") from None


def read_voc(
    root: str | Path, images: str | Path | None = None, resolver: ClassResolver | None = None
) -> Annotations:
    """Read a folder of Pascal VOC / ImageNet bounding-box XML files (see ``voc_folders``)."""
    files, image_dir = voc_folders(root, images)
    resolver = resolver or ClassResolver()
    records, errors = [], []
    for xml_path in files:
        try:
            records.append(read_voc_file(xml_path, image_dir, resolver, key=xml_path.stem))
        except AnnotationError as error:
            errors.append(str(error))
    return Annotations(records, errors)


# --------------------------------------------------------------------------------------
# COCO instances JSON
# --------------------------------------------------------------------------------------


def read_coco(
    path: str | Path, images: str | Path | None = None, resolver: ClassResolver | None = None
) -> Annotations:
    """Read a COCO instances JSON. A category resolves through a class-map entry keyed
    by its id if there is one, else by its name (class map, then model class names).
    Crowd boxes count as boxes of their class."""
    path = Path(path)
    return _coco_records(path, _read_json(path), images, resolver)


def _coco_records(
    path: Path, data: object, images: str | Path | None, resolver: ClassResolver | None
) -> Annotations:
    if not _is_coco(data):
        raise AnnotationError(f"{path}: not a COCO instances file (needs images, annotations)")
    resolver = resolver or ClassResolver()
    image_dir = Path(images) if images is not None else path.parent
    errors: list[str] = []
    categories = _coco_categories(path, data.get("categories", []), errors)
    by_image: dict[object, list[dict]] = {}
    for n, ann in enumerate(data["annotations"], start=1):
        if not isinstance(ann, dict) or not _is_id(ann.get("image_id")):
            errors.append(f"{path}: annotation {n}: needs an object with a number image_id")
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    records, seen = [], {}
    for n, entry in enumerate(data["images"], start=1):
        if not isinstance(entry, dict) or _file_name(entry.get("file_name")) is None:
            errors.append(f"{path}: image {n}: needs an object with a file_name string")
            continue
        if not _is_id(entry.get("id")):
            errors.append(f"{path}: image {n} ({entry['file_name']}): needs a number id")
            continue
        objects: dict[int, list[Box]] = {}
        problems: list[str] = []
        for m, ann in enumerate(by_image.get(entry["id"], []), start=1):
            category = ann.get("category_id")
            name = categories.get(category, str(category)) if _is_id(category) else "no class"
            try:
                if not _is_id(category):
                    raise ValueError(f"category_id {category!r:.40} is not a number")
                index = _coco_class(resolver, name, category)
                bbox = ann.get("bbox")
                if not isinstance(bbox, list) or len(bbox) != 4:
                    raise ValueError(f"bbox {bbox!r:.60} is not [x, y, width, height]")
                x, y, w, h = bbox
                _add(objects, index, parse_box([x, y, _sum(x, w), _sum(y, h)]))
            except ValueError as error:
                problems.append(f"object {m} ({name}): {error}")
        records.append(_json_record(entry, "file_name", image_dir, objects, problems, seen))
    return Annotations(records, errors)


def _is_id(value: object) -> bool:
    """COCO ids are numbers (some tools write them as strings); never lists or objects,
    which could not be looked up."""
    return isinstance(value, int | float | str) and not isinstance(value, bool)


def _coco_categories(path: Path, raw: object, errors: list[str]) -> dict[object, str]:
    """COCO ``categories`` -> {id: name}. Anything but a list, and any malformed entry,
    is an error line; objects of a category without a name resolve by its id."""
    if not isinstance(raw, list):
        errors.append(f"{path}: categories is not a list (class ids used as names)")
        return {}
    categories: dict[object, str] = {}
    for n, category in enumerate(raw, start=1):
        if not isinstance(category, dict) or not _is_id(category.get("id")):
            errors.append(f"{path}: category {n}: needs an object with a number id")
            continue
        name = category.get("name")
        categories[category["id"]] = name if isinstance(name, str) else str(category["id"])
    return categories


def _sum(a: object, b: object) -> float | None:
    try:
        return float(a) + float(b)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _coco_class(resolver: ClassResolver, name: str, category: object) -> int:
    # A class map keyed by the category id wins; otherwise the name goes through the
    # usual order (class map by name, model class names).
    if str(category) in resolver.class_map:
        return resolver(str(category))
    return resolver(name)


def _is_coco(data: object) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("images"), list)
        and isinstance(data.get("annotations"), list)
    )


# --------------------------------------------------------------------------------------
# Any source
# --------------------------------------------------------------------------------------


def read_annotations(
    data: str | Path,
    images: str | Path | None = None,
    resolver: ClassResolver | None = None,
) -> Annotations:
    """Read ``data``: a simple JSON list, a COCO instances JSON, a VOC / ImageNet XML
    folder, or one XML file. ``images`` overrides the image folder."""
    data = Path(data)
    resolver = resolver or ClassResolver()
    if data.is_dir():
        return read_voc(data, images, resolver)
    if not data.exists():
        raise AnnotationError(f"{data}: no such file or folder")
    if data.suffix.lower() == ".xml":
        image_dir = Path(images) if images is not None else data.parent
        try:
            return Annotations([read_voc_file(data, image_dir, resolver)], [])
        except AnnotationError as error:
            return Annotations([], [str(error)])
    content = _read_json(data)
    if _is_coco(content):
        return _coco_records(data, content, images, resolver)
    if isinstance(content, list):
        return _json_list_records(data, content, images, resolver)
    raise AnnotationError(
        f"{data}: not a JSON list of records nor a COCO instances file (images, annotations)"
    )

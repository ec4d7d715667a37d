"""Fuzzing the readers of untrusted input: every malformed file or argument must give one of
the project's errors (one line, naming the file or the option) or a correct result, never
another exception.

Hypothesis runs a fixed, derandomised set of examples per reader (``FUZZ`` below), so the
whole file takes seconds and a failure replays the same way on every machine.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cameras.apps.datasets import AnnotationError, ClassResolver, check_record, read_annotations
from cameras.cli import UsageError
from cameras.cli.common import parse_classes, parse_scales
from cameras.core.classes import class_index
from cameras.core.images import ImageError, find_images, load_image, shown
from cameras.models import imagenet_classes

FUZZ = settings(
    max_examples=60,
    deadline=None,  # the shared 2-core machine is too noisy for per-example deadlines
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CLASSES = imagenet_classes()


@pytest.fixture(scope="module")
def scratch():
    folder = Path(tempfile.mkdtemp(prefix="cameras-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def assert_one_line_naming(message: str, name: object) -> None:
    assert "\n" not in message and "Traceback" not in message, message
    assert str(name) in message, f"{message!r} does not name {name}"


# ---------------------------------------------------------------- images


def _encoded(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


VALID_IMAGES = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}


@st.composite
def damaged_images(draw) -> bytes:
    """A small valid image of some format, truncated and/or with bytes overwritten, or
    random bytes."""
    if draw(st.booleans()) and draw(st.booleans()):
        return draw(st.binary(max_size=64))
    data = bytearray(VALID_IMAGES[draw(st.sampled_from(sorted(VALID_IMAGES)))])
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ
@given(data=damaged_images(), suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".bin"]))
def test_load_image_gives_rgb_or_one_line_error(scratch, data, suffix):
    path = scratch / f"input{suffix}"
    path.write_bytes(data)
    try:
        image = load_image(path)
    except ImageError as error:
        assert_one_line_naming(str(error), path)
        return
    assert image.mode == "RGB" and image.width > 0 and image.height > 0


ENTRY_KINDS = ["image", "junk", "folder", "loop", "dangling", "self"]


@FUZZ
@given(
    entries=st.lists(
        st.tuples(
            st.text(
                st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=8
            ),
            st.sampled_from([".png", ".JPG", ".txt", ""]),
            st.sampled_from(ENTRY_KINDS),
        ),
        max_size=6,
    )
)
def test_find_images_lists_files_and_names_every_problem(scratch, entries):
    folder = scratch / "tree"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    broken_links = []  # image-named links that lead nowhere: each must be reported
    for stem, suffix, kind in entries:
        name = stem + suffix
        if name in (".", "..") or (folder / name).exists() or (folder / name).is_symlink():
            continue
        path = folder / name
        try:
            if kind == "image":
                path.write_bytes(VALID_IMAGES["PNG"])
            elif kind == "junk":
                path.write_bytes(b"not an image")
            elif kind == "folder":
                path.mkdir()
            elif kind == "loop":
                os.symlink(folder / f"{name}.other", path)
                os.symlink(path, folder / f"{name}.other")
            elif kind == "dangling":
                os.symlink(folder / "missing-target", path)
            else:
                os.symlink(path, path)
        except OSError:
            continue  # a name this file system refuses (too long, ...)
        if kind in ("loop", "dangling", "self") and suffix in (".png", ".JPG"):
            broken_links.append(path)
    images, errors = find_images([folder, folder / "not-there.png"])
    assert all(p.is_file() for p in images)
    assert len(set(images)) == len(images)
    for line in errors:
        assert "\n" not in line and str(folder) in line
    assert errors[-1] == f"{folder / 'not-there.png'}: no such file or folder"
    for link in broken_links:
        assert any(line.startswith(f"{shown(link)}: symbolic link") for line in errors), errors


# ---------------------------------------------------------------- arguments


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=20), st.lists(st.integers(-5, 2000)).map(lambda xs: ",".join(map(str, xs)))
    )
)
def test_scales_argument(text):
    try:
        scales = parse_scales(text)
    except argparse.ArgumentTypeError as error:
        assert_one_line_naming(str(error), "--scales")
        return
    assert scales and all(s >= 1 for s in scales)
    assert scales == sorted(set(scales))


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=30),
        st.lists(st.sampled_from([*CLASSES[:5], "281", "-1", "1000", " tabby ", "TABBY"])).map(
            ",".join
        ),
    )
)
def test_class_arguments(text):
    session = SimpleNamespace(class_index=lambda value: class_index(value, CLASSES, 1000))
    try:
        indices = parse_classes("--classes", text, session)
    except UsageError as error:
        assert_one_line_naming(str(error), "--classes")
        return
    assert indices and all(0 <= i < 1000 for i in indices)
    assert len(set(indices)) == len(indices)


# ---------------------------------------------------------------- annotations

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["tabby", "n02123045", "281", "cat.jpg", "", "NaN"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
numbers = st.one_of(st.integers(-50, 500), st.floats(-50, 500), json_values)
boxes = st.one_of(st.lists(numbers, min_size=4, max_size=4), json_values)


def maybe(strategy):
    """Usually the well-formed value, sometimes any JSON at all."""
    return st.one_of(strategy, strategy, strategy, json_values)


coco_image = st.fixed_dictionaries(
    {"id": maybe(st.integers(0, 3)), "file_name": maybe(st.sampled_from(["a.jpg", "b.png"]))},
    optional={"width": maybe(st.integers(1, 500)), "height": maybe(st.integers(1, 500))},
)
coco_annotation = st.fixed_dictionaries(
    {
        "image_id": maybe(st.integers(0, 3)),
        "category_id": maybe(st.integers(0, 3)),
        "bbox": boxes,
    }
)
coco_category = st.fixed_dictionaries(
    {"id": maybe(st.integers(0, 3)), "name": maybe(st.sampled_from(CLASSES[:4]))}
)
coco_files = st.fixed_dictionaries(
    {
        "images": maybe(st.lists(maybe(coco_image), max_size=3)),
        "annotations": maybe(st.lists(maybe(coco_annotation), max_size=4)),
    },
    optional={"categories": maybe(st.lists(maybe(coco_category), max_size=4))},
)
list_object = st.fixed_dictionaries(
    {
        "class_index": maybe(st.sampled_from([0, 281, 999, 1000, -1, "tabby"])),
        "boxes": maybe(st.lists(boxes, max_size=3)),
    }
)
list_files = st.lists(
    maybe(
        st.fixed_dictionaries(
            {
                "file": maybe(st.sampled_from(["a.jpg", "b.png"])),
                "objects": maybe(st.lists(maybe(list_object), max_size=3)),
            },
            optional={"width": maybe(st.integers(1, 500)), "height": maybe(st.integers(1, 500))},
        )
    ),
    max_size=3,
)


def check_annotations(path: Path, resolver: ClassResolver) -> None:
    """The property every reader must hold for ``path``."""
    try:
        annotations = read_annotations(path, None, resolver)
    except AnnotationError as error:
        assert_one_line_naming(str(error), path)
        return
    for line in annotations.errors:
        assert_one_line_naming(line, path)
    for record in annotations.records:
        assert isinstance(record.key, str) and record.file.name
        for index, record_boxes in record.objects.items():
            assert 0 <= index < 1000
            for x0, y0, x1, y1 in record_boxes:
                assert all(math.isfinite(v) for v in (x0, y0, x1, y1))
                assert x0 < x1 and y0 < y1
        for problem in record.problems:
            assert "\n" not in problem
        checked, problems = check_record(record, 300, 200)
        assert all("\n" not in p for p in problems)
        for record_boxes in checked.objects.values():
            for x0, y0, x1, y1 in record_boxes:
                assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 200


@pytest.fixture(scope="module")
def resolver():
    return ClassResolver(CLASSES, 1000)


def _damage(text: str, cut: int | None) -> str:
    return text if cut is None else text[: cut % (len(text) + 1)]


@FUZZ
@given(content=coco_files, cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_coco_reader(scratch, resolver, content, cut):
    path = scratch / "instances.json"
    path.write_text(_damage(json.dumps(content), cut))
    check_annotations(path, resolver)


@FUZZ
@given(content=st.one_of(list_files, json_values), cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_json_list_reader(scratch, resolver, content, cut):
    path = scratch / "boxes.json"
    path.write_text(_damage(json.dumps(content), cut))
    check_annotations(path, resolver)


xml_text = st.one_of(
    st.sampled_from(["12", "0", "-3", "1e999", "nan", "inf", "", " 40.5 ", "x", "99999999999"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=8),
)


@st.composite
def voc_documents(draw, imagenet: bool) -> str:
    """A VOC (or ImageNet: synset names, no file suffix) XML file, fields sometimes
    missing, malformed or out of range, sometimes cut short."""

    def element(tag: str, text: str | None) -> str:
        if text is None or draw(st.integers(0, 9)) == 0:
            return ""  # the field is missing
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return f"<{tag}>{escaped}</{tag}>"

    names = ["n02123045", "n02124075", "n99999999"] if imagenet else ["tabby", "dog", "281"]
    parts = [element("filename", draw(st.sampled_from(["a", "a.jpg", ""]))), "<size>"]
    parts += [element(t, draw(xml_text)) for t in ("width", "height")] + ["</size>"]
    for _ in range(draw(st.integers(0, 3))):
        parts.append(
            "<object>" + element("name", draw(st.one_of(st.sampled_from(names), xml_text)))
        )
        parts.append("<bndbox>")
        parts += [element(t, draw(xml_text)) for t in ("xmin", "ymin", "xmax", "ymax")]
        parts.append("</bndbox></object>")
    document = "<annotation>" + "".join(parts) + "</annotation>"
    return _damage(document, draw(st.one_of(st.none(), st.none(), st.integers(0, 10**6))))


@FUZZ
@given(document=voc_documents(imagenet=False))
def test_voc_xml_reader(scratch, resolver, document):
    path = scratch / "voc.xml"
    path.write_text(document)
    check_annotations(path, resolver)


@FUZZ
@given(document=voc_documents(imagenet=True))
def test_imagenet_xml_folder_reader(scratch, resolver, document):
    folder = scratch / "imagenet"
    folder.mkdir(exist_ok=True)
    (folder / "n02123045_1.xml").write_text(document)
    check_annotations(folder, resolver)

"""Annotation readers: the three formats, class resolution, and bad annotations."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cameras.apps.datasets import (
    AnnotationError,
    ClassResolver,
    Record,
    check_record,
    imagenet_synsets,
    load_class_map,
    read_annotations,
    read_coco,
    read_json_list,
    read_voc,
)

NAMES = ["cat", "dog", "bird"]


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_imagenet_synsets_line_up_with_class_names():
    from cameras.models import imagenet_classes

    synsets = imagenet_synsets()
    assert len(synsets) == 1000
    assert synsets[281] == "n02123045" and imagenet_classes()[281] == "tabby"
    assert synsets[0] == "n01440764" and imagenet_classes()[0] == "tench"


def test_class_resolver_order():
    resolver = ClassResolver(NAMES, class_map={"kitty": "Cat", "7": 2, "puppy": 1})
    assert resolver("kitty") == 0  # map to a class name, case-insensitive
    assert resolver("puppy") == 1
    assert resolver(7) == 2  # COCO-style integer id through the map
    assert resolver("DOG") == 1  # model class name, case-insensitive
    assert resolver("2") == 2  # a bare index
    with pytest.raises(ValueError, match="unknown class name 'horse'"):
        resolver("horse")
    with pytest.raises(ValueError, match="out of range"):
        resolver(3)
    with pytest.raises(ValueError, match="class map: 'x' -> unknown class name 'zebra'"):
        ClassResolver(NAMES, class_map={"x": "zebra"})("x")


def test_synsets_resolve_only_for_1000_class_models():
    from cameras.models import imagenet_classes

    assert ClassResolver(imagenet_classes())("n02123045") == 281
    with pytest.raises(ValueError, match="unknown class"):
        ClassResolver(NAMES)("n02123045")


def test_simple_json_list(tmp_path):
    data = [
        {
            "file": "a.jpg",
            "width": 40,
            "height": 30,
            "objects": [
                {"class_index": 0, "boxes": [[1, 2, 10, 20], [5, 5, 6, 6]]},
                {"class_index": 2, "boxes": [[0, 0, 40, 30]]},
            ],
        },
        {
            "file": "b.jpg",
            "objects": [
                {"class_index": 9, "boxes": [[0, 0, 1, 1]]},  # unknown class
                {"class_index": 1, "boxes": [[5, 5, 2, 8]]},  # empty box
                {"class_index": 1, "boxes": [[1, 1, 3, 3]]},
            ],
        },
        {"objects": []},  # no file
        {"file": "a.jpg", "objects": []},  # same file again
        "junk",
    ]
    annotations = read_json_list(
        write_json(tmp_path / "set.json", data), None, ClassResolver(NAMES)
    )
    a, b, again = annotations.records
    assert a.file == tmp_path / "a.jpg" and a.size == (40, 30)
    assert a.objects == {0: ((1, 2, 10, 20), (5, 5, 6, 6)), 2: ((0, 0, 40, 30),)}
    assert b.objects == {1: ((1, 1, 3, 3),)}
    assert len(b.problems) == 2
    assert "out of range" in b.problems[0] and "empty" in b.problems[1]
    assert again.key == "a.jpg#2" and a.key == "a.jpg"
    assert len(annotations.errors) == 2
    assert all("set.json: record" in line for line in annotations.errors)


def test_check_record_drops_boxes_outside_the_image_and_clips_slack():
    record = Record("r", None, {0: ((-0.5, 0, 10.8, 10), (50, 0, 60, 10)), 1: ((0, 0, 5, 35),)})
    checked, problems = check_record(record, 10, 10)
    assert checked.objects == {0: ((0.0, 0, 10.0, 10),)}
    assert len(problems) == 2
    assert "lies outside the 10x10 image" in problems[0]
    sized = Record("r", None, {0: ((0, 0, 5, 5),)}, size=(20, 10))
    checked, problems = check_record(sized, 10, 20)
    assert checked.objects == {} and "annotation says 20x10" in problems[0]


VOC_XML = """<annotation>
  <filename>{name}</filename>
  <size><width>50</width><height>40</height><depth>3</depth></size>
  <object><name>{label}</name><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>
  <object><name>unicorn</name>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>
  <object><name>{label}</name>
    <bndbox><xmin>3</xmin><ymin>3</ymin><xmax>oops</xmax><ymax>5</ymax></bndbox></object>
</annotation>"""


def test_pascal_voc_folder(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations" / "000001.xml").write_text(
        VOC_XML.format(name="000001.jpg", label="pussycat")
    )
    (tmp_path / "Annotations" / "000002.xml").write_text("<annotation><oops></annotation>")
    resolver = ClassResolver(
        NAMES, class_map=load_class_map(write_json(tmp_path / "map.json", {"pussycat": "cat"}))
    )
    annotations = read_annotations(tmp_path, resolver=resolver)
    (record,) = annotations.records
    assert record.key == "000001"
    assert record.file == tmp_path / "JPEGImages" / "000001.jpg"
    assert record.size == (50, 40)
    # VOC is 1-based inclusive: xmin 1..xmax 10 is x0 0, x1 10.
    assert record.objects == {0: ((0.0, 1.0, 10.0, 20.0),)}
    assert "unknown class name 'unicorn'" in record.problems[0]
    assert "'oops' is not a number" in record.problems[1]
    assert len(annotations.errors) == 1 and "000002.xml" in annotations.errors[0]


def test_imagenet_bbox_folder_with_synsets_and_suffixless_names(tmp_path):
    from cameras.models import imagenet_classes

    xml_dir, image_dir = tmp_path / "val", tmp_path / "images"
    xml_dir.mkdir()
    image_dir.mkdir()
    (xml_dir / "ILSVRC2012_val_00000001.xml").write_text(
        VOC_XML.format(name="ILSVRC2012_val_00000001", label="n02123045")
    )
    Image.new("RGB", (50, 40)).save(image_dir / "ILSVRC2012_val_00000001.JPEG", "JPEG")
    annotations = read_voc(xml_dir, image_dir, ClassResolver(imagenet_classes()))
    (record,) = annotations.records
    assert record.file == image_dir / "ILSVRC2012_val_00000001.JPEG"
    assert record.objects == {281: ((0.0, 1.0, 10.0, 20.0),)}


def test_coco_instances_with_class_map(tmp_path):
    coco = {
        "images": [
            {"id": 1, "file_name": "x.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "y.jpg", "width": 64, "height": 48},
        ],
        "annotations": [
            {"image_id": 1, "category_id": 17, "bbox": [10, 5, 20.5, 10], "iscrowd": 0},
            {"image_id": 1, "category_id": 18, "bbox": [0, 0, 4, 4], "iscrowd": 0},
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 0},
            {"image_id": 2, "category_id": 17, "bbox": [0, 0, 0, 4], "iscrowd": 0},
        ],
        "categories": [
            {"id": 17, "name": "cat"},
            {"id": 18, "name": "dog"},
            {"id": 1, "name": "person"},
        ],
    }
    path = write_json(tmp_path / "instances.json", coco)
    resolver = ClassResolver(NAMES, class_map={"18": 2})  # by COCO id
    annotations = read_coco(path, tmp_path / "imgs", resolver)
    x, y = annotations.records
    assert x.file == tmp_path / "imgs" / "x.jpg" and x.size == (64, 48)
    assert x.objects == {0: ((10.0, 5.0, 30.5, 15.0),), 2: ((0.0, 0.0, 4.0, 4.0),)}
    assert "unknown class name 'person'" in x.problems[0]
    assert y.objects == {} and "empty" in y.problems[0]
    # read_annotations recognises the format.
    assert read_annotations(path, tmp_path / "imgs", resolver).records[0].objects == x.objects


def test_unreadable_sources_are_one_line_errors(tmp_path):
    with pytest.raises(AnnotationError, match="no such file"):
        read_annotations(tmp_path / "missing.json")
    with pytest.raises(AnnotationError, match="not a readable JSON"):
        read_annotations(_broken(tmp_path))
    with pytest.raises(AnnotationError, match="not a JSON list"):
        read_annotations(write_json(tmp_path / "obj.json", {"a": 1}))
    with pytest.raises(AnnotationError, match="no .xml annotation files"):
        read_annotations(tmp_path)
    with pytest.raises(AnnotationError, match="class map"):
        load_class_map(write_json(tmp_path / "map.json", ["cat"]))


def _broken(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("[{")
    return path

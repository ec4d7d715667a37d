"""Rebuild the shipped evaluation set's photos from the packages that carry them.

    python scripts/build_evalset.py OUTDIR

The project ships only the annotations (data/evalset/evalset.json: ImageNet class
indices and hand-drawn boxes); the photos come from scikit-image, scikit-learn,
matplotlib and Debian's ``opencv-doc`` (``apt-get install opencv-doc``). This copies
each photo byte for byte (decompressing ``.gz`` files) into OUTDIR, checks its size
against the annotation, and writes OUTDIR/evalset.json listing only the photos that
were found, so that ``cameras evaluate OUTDIR/evalset.json`` runs on what is installed.
A photo whose package is missing is skipped with a message.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

ANNOTATIONS = Path(__file__).resolve().parent.parent / "data" / "evalset" / "evalset.json"
OPENCV_DOC = Path("/usr/share/doc/opencv-doc")


def _module_folder(module: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def package_root(package: str) -> Path | None:
    """Where a package keeps its photos, or None when it is not installed."""
    if package == "scikit-image":
        return _module_folder("skimage", "data")
    if package == "scikit-learn":
        return _module_folder("sklearn", "datasets", "images")
    if package == "matplotlib":
        return _module_folder("matplotlib", "mpl-data", "sample_data")
    if package == "opencv-doc":
        return OPENCV_DOC if OPENCV_DOC.is_dir() else None
    raise ValueError(f"unknown source package {package!r}")


@dataclass
class BuildReport:
    """What ``build`` did: files written, and one message per photo skipped."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    annotations: Path | None = None


def _copy(source: Path, target: Path) -> bool:
    """Copy ``source`` (or decompress ``source.gz``) to ``target``; False if neither exists."""
    if source.is_file():
        shutil.copyfile(source, target)
        return True
    packed = source.with_name(source.name + ".gz")
    if packed.is_file():
        with gzip.open(packed, "rb") as reader, open(target, "wb") as writer:
            shutil.copyfileobj(reader, writer)
        return True
    return False


def build(outdir: str | Path, annotations: str | Path = ANNOTATIONS) -> BuildReport:
    """Copy the set's photos into ``outdir`` and write ``outdir/evalset.json``."""
    from PIL import Image, ImageOps

    outdir, annotations = Path(outdir), Path(annotations)
    if outdir.resolve() == annotations.resolve().parent:
        raise ValueError(f"{outdir}: is the annotations' own folder; choose another folder")
    records = json.loads(annotations.read_text())
    outdir.mkdir(parents=True, exist_ok=True)
    report = BuildReport()
    kept = []
    for record in records:
        source = record["source"]
        root = package_root(source["package"])
        name = record["file"]
        if root is None:
            report.skipped.append(f"{name}: package {source['package']} is not installed")
            continue
        target = outdir / name
        if not _copy(root / source["path"], target):
            report.skipped.append(f"{name}: {root / source['path']} not found")
            continue
        with Image.open(target) as image:
            size = ImageOps.exif_transpose(image).size
        if size != (record["width"], record["height"]):
            target.unlink()
            report.skipped.append(
                f"{name}: the installed photo is {size[0]}x{size[1]}, the boxes were drawn "
                f"on {record['width']}x{record['height']}"
            )
            continue
        report.written.append(target)
        kept.append(record)
    report.annotations = outdir / "evalset.json"
    report.annotations.write_text(json.dumps(kept, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path, help="folder for the photos and evalset.json")
    parser.add_argument(
        "--annotations", type=Path, default=ANNOTATIONS, help="default: %(default)s"
    )
    args = parser.parse_args(argv)
    try:
        report = build(args.outdir, args.annotations)
    except (OSError, ValueError) as error:
        print(f"build_evalset: error: {error}", file=sys.stderr)
        return 2
    for line in report.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    print(f"wrote {len(report.written)} photos and {report.annotations}")
    return 1 if report.skipped else 0


if __name__ == "__main__":
    sys.exit(main())

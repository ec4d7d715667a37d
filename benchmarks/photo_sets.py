"""The real photos the benchmarks run on: the shipped evaluation set and the bundled photos.

``evaluation_photos()`` rebuilds the shipped evaluation set (data/evalset/evalset.json:
hand-drawn boxes and ImageNet classes) from the installed packages into a temporary folder,
then adds the bundled photos it does not already hold (no boxes). Everything is offline;
the opencv-doc photos need Debian's ``opencv-doc`` (``make system-deps`` installs it).
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
_SKIMAGE = ("chelsea", "coffee", "astronaut", "rocket")


@dataclass
class Photo:
    """One photo: its name, the RGB image, and per annotated class its boxes (may be empty)."""

    name: str
    image: Image.Image
    boxes: dict[int, list[tuple[float, float, float, float]]] = field(default_factory=dict)


def bundled_photos() -> dict[str, Image.Image]:
    """The seven photos that ship with scikit-image, scikit-learn and matplotlib."""
    import matplotlib.cbook
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = {name: Image.fromarray(getattr(data, name)()) for name in _SKIMAGE}
    samples = load_sample_images()
    for filename, pixels in zip(samples.filenames, samples.images, strict=True):
        photos[os.path.splitext(os.path.basename(filename))[0]] = Image.fromarray(pixels)
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
        photos["grace_hopper"] = Image.open(file).convert("RGB")
    return photos


def _build_evalset(outdir: Path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from build_evalset import build
    finally:
        sys.path.pop(0)
    report = build(outdir)
    for line in report.skipped:
        print(f"evaluation set: skipped {line}", file=sys.stderr)
    return report.annotations


def evaluation_photos() -> list[Photo]:
    """The shipped evaluation set (with boxes) plus the bundled photos it lacks (no boxes)."""
    import cameras
    from cameras.apps.datasets import read_annotations

    photos: list[Photo] = []
    with tempfile.TemporaryDirectory() as folder:
        annotations = read_annotations(_build_evalset(Path(folder)))
        for record in annotations.records:
            image = cameras.load_image(record.file)
            boxes = {c: list(b) for c, b in record.objects.items()}
            photos.append(Photo(Path(record.key).stem, image, boxes))
    have = {p.name.split("_", 1)[1] for p in photos}
    for name, image in bundled_photos().items():
        if name not in have:
            photos.append(Photo(name, image.convert("RGB")))
    return photos

"""cameras.core.images: reading images robustly, finding them, and maps at an image's own size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cameras.core.images import ImageError, find_images, load_image, resize_map


def test_modes_become_upright_8_bit_rgb(tmp_path, coffee):
    gray = coffee.convert("L")
    gray.save(tmp_path / "gray.png")
    sixteen = (np.asarray(gray, dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    transparent = Image.new("RGBA", (4, 3), (10, 20, 30, 0))
    transparent.save(tmp_path / "clear.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated by 90 degrees
    coffee.save(tmp_path / "rotated.jpg", exif=exif)
    loaded = {p.stem: load_image(p) for p in tmp_path.iterdir()}
    assert all(image.mode == "RGB" for image in loaded.values())
    # 16-bit values are scaled to 8 bits, not clipped: the same picture as the 8-bit gray.
    np.testing.assert_array_equal(np.asarray(loaded["sixteen"])[..., 0], np.asarray(gray))
    assert np.asarray(loaded["clear"]).max() == np.asarray(loaded["clear"]).min() == 255
    assert loaded["rotated"].size == (400, 600)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"not an image", "not an image (unrecognised format)")],
)
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError) as caught:
        load_image(path)
    assert str(caught.value) == f"{path}: {message}"
    with pytest.raises(ImageError, match="missing.jpg: no such file"):
        load_image(tmp_path / "missing.jpg")


def test_find_images_expands_folders_and_reports_missing_inputs(tmp_path, chelsea):
    (tmp_path / "photos").mkdir()
    chelsea.save(tmp_path / "photos" / "b.jpg")
    chelsea.save(tmp_path / "photos" / "a.png")
    (tmp_path / "photos" / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    images, errors = find_images([tmp_path / "photos", tmp_path / "empty", tmp_path / "gone"])
    assert [p.name for p in images] == ["a.png", "b.jpg"]
    assert errors == [
        f"{tmp_path / 'empty'}: no images in this folder",
        f"{tmp_path / 'gone'}: no such file or folder",
    ]


def test_resize_map_is_bilinear_and_stays_in_unit_range():
    saliency = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    out = resize_map(saliency, 4, 6)
    assert out.dtype == np.float32 and out.shape == (4, 6)
    expected = torch.nn.functional.interpolate(saliency[None, None], (4, 6), mode="bilinear")
    np.testing.assert_allclose(out, expected[0, 0].numpy(), atol=1e-7)
    assert out.min() >= 0 and out.max() <= 1

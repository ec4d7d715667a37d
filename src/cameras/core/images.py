"""Reading images robustly and mapping saliency maps back to an image's own size."""

from __future__ import annotations

import errno
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


# The largest image read, in pixels (a 12247 x 12247 photo). Its RGB pixels take 450 MB
# and its float32 map 600 MB; a larger one is refused from its header, before decoding
# (a 17 KB 1-bit PNG can hold 144 million pixels). docs/reliability.md.
MAX_IMAGE_PIXELS = 150_000_000


class ImageError(ValueError):
    """An input image could not be used; the message names the file and the reason."""


def check_pixel_count(path: str | Path, width: int, height: int) -> None:
    """ImageError naming the file when ``width * height`` exceeds ``MAX_IMAGE_PIXELS``."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"{path}: {width} x {height} pixels is over the limit of "
            f"{MAX_IMAGE_PIXELS / 1e6:g} million pixels"
        )


def find_images(
    paths: Iterable[str | Path], recursive: bool = False, notices: list[str] | None = None
) -> tuple[list[Path], list[str]]:
    """Expand files and folders (image suffixes; subfolders too when ``recursive``) into
    image paths.

    Returns (images, errors): a missing path is an error line, not an exception, so
    the other inputs still run. Files named explicitly are kept whatever their suffix.
    Without ``recursive``, a line saying how many images in subfolders were left out is
    added to ``notices`` (when given).
    """
    images: list[Path] = []
    errors: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found, skipped = [], len(errors)
            left_out = _scan_folder(path, recursive, found, errors)
            if not found and len(errors) == skipped:
                errors.append(f"{shown(path)}: no images in this folder")
            if left_out and notices is not None:
                notices.append(
                    f"{shown(path)}: {left_out} image(s) in subfolders skipped; pass --recursive"
                )
            images.extend(found)
        elif path.is_file():
            images.append(path)
        elif path.is_symlink():
            errors.append(f"{shown(path)}: {_broken_link(path)}")
        elif path.exists():  # a FIFO, a socket, a device: reading it could block forever
            errors.append(f"{shown(path)}: not a regular file ({_file_kind(path)})")
        else:
            errors.append(f"{shown(path)}: no such file or folder")
    return images, errors


def _scan_folder(folder: Path, recursive: bool, found: list[Path], errors: list[str]) -> int:
    """Add the folder's images to ``found`` (sorted, subfolders after the files when
    ``recursive``); returns how many images its subfolders hold when not recursive."""
    left_out = 0
    entries = sorted(folder.iterdir())
    for entry in entries:
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if entry.is_file():
            found.append(entry)
        elif entry.is_symlink():  # is_file() is False for a loop or a dangling link
            errors.append(f"{shown(entry)}: {_broken_link(entry)}, skipped")
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():  # a linked folder could loop
            if recursive:
                _scan_folder(entry, True, found, errors)
            else:
                left_out += sum(1 for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return left_out


def _file_kind(path: Path) -> str:
    mode = path.stat().st_mode
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a device"}
    return next((name for test, name in kinds.items() if test(mode)), "a device")


def shown(path: str | Path) -> str:
    """A path as it can be printed on one line: control characters (a newline in a file
    name) written as escapes such as ``\\n``."""
    text = str(path)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _broken_link(path: Path) -> str:
    """Why a symbolic link leads to no file: a loop, or a missing target."""
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop as RuntimeError
        return "symbolic link loop"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        return "symbolic link to a missing file"
    return "symbolic link to something that is not a file"


def load_image(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB, upright (EXIF orientation applied).

    Grayscale and palette images become RGB; 16-bit images are scaled to 8 bits (not
    clipped); transparent pixels are laid on white. Raises ImageError naming the file.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file")
        with warnings.catch_warnings():
            # Our own pixel cap below replaces PIL's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                check_pixel_count(path, *opened.size)  # from the header, before decoding
                opened.load()  # decode now: a truncated file fails here, not later
                image = ImageOps.exif_transpose(opened)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: unreadable image ({error})") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"{path}: image too large ({error})") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB without clipping 16-bit data or losing transparency to black."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize_map(saliency: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(h, w) map in [0, 1] -> (height, width) float32 NumPy array in [0, 1], bilinear."""
    resized = F.interpolate(
        saliency[None, None].float(), size=(height, width), mode="bilinear", align_corners=False
    )[0, 0]
    # In place and without a final copy: at a large photo's size this array is the map.
    return resized.clamp_(0, 1).cpu().numpy()

"""Shared fixtures: the embedded default model and real photos that ship with packages."""

from __future__ import annotations

import pytest
import torch
from PIL import Image


@pytest.fixture(scope="session")
def lite0():
    """(model, prep, classes) for the embedded EfficientNet-Lite0 (ImageNet-1k)."""
    import cameras

    return cameras.load_model()


def _skimage_photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)())


@pytest.fixture(scope="session")
def chelsea() -> Image.Image:
    """scikit-image's cat photo (451 x 300)."""
    return _skimage_photo("chelsea")


@pytest.fixture(scope="session")
def coffee() -> Image.Image:
    """scikit-image's espresso photo (600 x 400)."""
    return _skimage_photo("coffee")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) shared by every Ray test; skipped without Ray."""
    ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'cameras[ray]'")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()

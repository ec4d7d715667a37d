"""Shared fixtures: the embedded default model and real photos that ship with packages."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

_LOADED: dict[tuple, tuple] = {}


def shared_load_model(name="efficientnet_lite0", weights=None, device=None, pretrained=True):
    """``cameras.load_model`` that builds each (name, weights, device) once per test run.

    Sharing is safe because the library leaves a model exactly as it found it (checked
    for every method and failure in test_model_safety.py); it saves a model build per
    CLI test.
    """
    from cameras.models import load_model

    device = str(torch.device(device)) if device is not None else "cpu"
    key = (name, str(weights) if weights is not None else None, device, pretrained)
    if key not in _LOADED:
        _LOADED[key] = load_model(name, weights=weights, device=device, pretrained=pretrained)
    return _LOADED[key]


@pytest.fixture(autouse=True)
def _one_model_per_name(monkeypatch):
    """Every ``Session.load`` (so every CLI subcommand run in-process) shares the models.
    CAMERAS_TESTS_RELOAD_MODELS=1 turns the sharing off (to measure what it saves)."""
    import cameras.session

    if os.environ.get("CAMERAS_TESTS_RELOAD_MODELS"):
        return

    monkeypatch.setattr(cameras.session, "load_model", shared_load_model)


@pytest.fixture(scope="session")
def lite0():
    """(model, prep, classes) for the embedded EfficientNet-Lite0 (ImageNet-1k)."""
    return shared_load_model()


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

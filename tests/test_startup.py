"""Start-up: ``import cameras`` loads no torch; every public name still resolves."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return set(result.stdout.split())


def test_import_cameras_loads_no_torch():
    loaded = _modules_after("import cameras")
    assert "cameras" in loaded
    assert not {"torch", "numpy", "PIL", "matplotlib"} & loaded


def test_public_names_resolve_to_their_modules():
    import cameras
    from cameras.methods import CAMERAS
    from cameras.session import Session

    assert cameras.CAMERAS is CAMERAS
    assert cameras.Session is Session
    for name in cameras.__all__:
        assert getattr(cameras, name) is not None
    assert set(cameras.__all__) <= set(dir(cameras))


def test_unknown_name_is_an_attribute_error():
    import cameras

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cameras.nope  # noqa: B018


def test_submodules_are_reachable_as_attributes():
    code = "import cameras; print(cameras.viz.comparison_figure.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "comparison_figure", result.stderr

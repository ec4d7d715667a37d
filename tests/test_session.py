"""cameras.Session: the one entry object the CLI and the web page adapt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyNet

import cameras
from cameras.core.images import resize_map
from cameras.models import Preprocess


@pytest.fixture(scope="module")
def session(lite0):
    model, prep, classes = lite0
    return cameras.Session(model, prep, classes, scales=[224, 324])


def test_open_gives_the_photo_and_the_models_input(session, chelsea, tmp_path):
    chelsea.save(tmp_path / "cat.png")
    image, x = session.open(tmp_path / "cat.png")
    assert image.size == (451, 300) and image.mode == "RGB"
    torch.testing.assert_close(x, session.prep(chelsea)[None], rtol=0, atol=0)
    with pytest.raises(cameras.ImageError, match="missing.png: no such file"):
        session.open(tmp_path / "missing.png")


def test_top_k_is_the_models_softmax(session, lite0, chelsea):
    model, prep, _ = lite0
    pairs = session.top_k(chelsea, k=3)
    with torch.no_grad():
        reference = model(prep(chelsea)[None]).softmax(1)[0].topk(3)
    assert [i for i, _ in pairs] == reference.indices.tolist() == [285, 282, 281]
    assert [p for _, p in pairs] == pytest.approx(reference.values.tolist(), abs=1e-6)


def test_explain_equals_the_method_called_directly(session, lite0, chelsea):
    model, prep, _ = lite0
    small = chelsea.resize((150, 100))
    result = session.explain(small, "cameras", target="TABBY")
    reference = cameras.CAMERAS(model, layer="bn2", scales=[224, 324])(prep(small)[None], 281)
    torch.testing.assert_close(result.maps, reference.maps, rtol=0, atol=0)
    assert result.targets == [281] and result.target_names == ["tabby"]
    saliency = session.map_at_image_size(result, small)
    assert saliency.shape == (100, 150) and saliency.dtype == np.float32
    np.testing.assert_array_equal(saliency, resize_map(result.maps[0], 100, 150))


def test_methods_are_built_once_on_one_layer(session):
    assert session.layer == "bn2"
    assert session.method("gradcam") is session.method("gradcam")
    assert session.method("cameras") is session.method("cameras", [224, 324])
    other = session.method("cameras", [224, 424])
    assert other is not session.method("cameras") and other.scales == [224, 424]
    assert {m.layer_name for m in session._methods.values()} == {"bn2"}
    with pytest.raises(ValueError, match="unknown method 'magic'; choose from cameras"):
        session.method("magic")


def test_the_layer_is_found_once(monkeypatch):
    import cameras.backends.torch as module  # the PyTorch backend finds the layer

    calls = []
    real = module.resolve_layer
    monkeypatch.setattr(
        module, "resolve_layer", lambda m, spec: calls.append(spec) or real(m, spec)
    )
    session = cameras.Session(TinyNet(), Preprocess(32, (0.5,) * 3, (0.25,) * 3))
    for name in ("gradcam", "layercam", "cameras"):
        session.method(name)
    # The automatic search (layer None) ran once; the methods got its result by name.
    assert [spec for spec in calls if spec is None] == [None] and session.layer == "act"
    assert set(calls) == {None, "act"}
    with pytest.raises(ValueError, match="layer 'nope' is not a module"):
        cameras.Session(TinyNet(), session.prep, layer="nope").layer  # noqa: B018


def test_classes_follow_the_one_rule(session):
    assert session.class_index(" Persian cat ") == 283
    assert session.class_index("281") == 281 and session.class_label(281) == "tabby (281)"
    with pytest.raises(cameras.ClassError, match=r"class 1000 is out of range.*\(0 to 999\)"):
        session.class_index(1000)
    with pytest.raises(cameras.ClassError, match="unknown class name 'tabbby'; closest: tabby"):
        session.class_index("tabbby")


def test_a_model_without_names_counts_its_classes():
    session = cameras.Session(TinyNet(num_classes=7), Preprocess(32, (0.5,) * 3, (0.25,) * 3))
    assert session.class_names is None and session.num_classes == 7
    assert session.class_index("6") == 6 and session.class_name(6) == "class 6"
    with pytest.raises(cameras.ClassError, match="class 7 is out of range: the model has 7"):
        session.class_index(7)
    with pytest.raises(cameras.ClassError, match="no class names; give an index from 0 to 6"):
        session.class_index("cat")


def test_pixels_round_trip_an_8_bit_photo(session, chelsea):
    from PIL import Image

    x = session.input(chelsea.resize((60, 40)))
    again = session.input(Image.fromarray(session.pixels(x)))
    torch.testing.assert_close(again, x, atol=1e-5, rtol=0)

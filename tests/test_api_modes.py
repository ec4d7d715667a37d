"""The API under the caller's autograd modes, with half-precision models, and on bad pixels.

- Every method, ``Session``, the attack and the sanity check work inside
  ``torch.no_grad()`` and ``torch.inference_mode()``, give the maps they give outside
  (max abs diff <= 1e-6), and leave the caller's modes as they were, also after an error.
- float16 and bfloat16 copies of the default model (EfficientNet-Lite0) explain on the
  CPU; maps are float32 and close to the float32 model's (bounds measured: see
  ``HALF_TOLERANCE``); the copy comes back exactly as it was. An operation the device
  cannot run in that dtype is a TypeError naming it.
- NaN or infinite pixels are a ValueError naming ``x`` and how many values, never an
  all-zero map with NaN probabilities.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import TinyNet, assert_left_as_found, model_state, photo_batch
from torch import nn

import cameras
from cameras.apps.attack import pgd
from cameras.apps.metrics.sanity import randomisation_steps, sanity_check
from cameras.methods import METHODS

SCALES = (64, 96)  # two scales of a 64 x 96 input: CAMERAS's fusion runs, cheaply
EXACT = 1e-6

# Max abs diff of normalised maps, half-precision copy against the float32 model, on the
# 64 x 96 chelsea input (benchmarks/half_precision.py). Measured: float16 0.0023 (CAMERAS),
# 0.0056 (Grad-CAM); bfloat16 0.022 (CAMERAS), 0.051 (Grad-CAM); correlation >= 0.998.
# The bounds leave a margin of about 2x over the worst method.
HALF_TOLERANCE = {torch.float16: 0.01, torch.bfloat16: 0.1}
MIN_CORRELATION = 0.99
ATTACK_COSINE = {torch.float16: 0.8, torch.bfloat16: 0.5}

MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


def _method(name: str, model: nn.Module):
    cls = METHODS[name]
    return cls(model, scales=SCALES) if name == "cameras" else cls(model)


def _modes_now() -> tuple[bool, bool]:
    return torch.is_grad_enabled(), torch.is_inference_mode_enabled()


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


@pytest.fixture(scope="module")
def x():
    return photo_batch(("chelsea",), size=(64, 96))


@pytest.fixture(scope="module")
def reference(lite0, x):
    """Each method's maps for the float32 default model, in the default modes."""
    model = lite0[0]
    return {name: _method(name, model)(x) for name in METHODS}


@pytest.fixture(scope="module", params=[torch.float16, torch.bfloat16], ids=str)
def half_model(request, lite0):
    """A reduced-precision copy of the default model (the shared one stays float32)."""
    return copy.deepcopy(lite0[0]).to(request.param)


# ------------------------------------------------------------------ autograd modes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(METHODS))
def test_methods_work_inside_no_grad_and_inference_mode(name, mode, lite0, x, reference):
    model = lite0[0]
    before = model_state(model)
    with MODES[mode]():
        inside = _modes_now()
        result = _method(name, model)(x)
        assert _modes_now() == inside, "the caller's autograd mode was not restored"
    assert result.targets == reference[name].targets
    assert (result.maps - reference[name].maps).abs().max() <= EXACT
    assert torch.allclose(result.probabilities, reference[name].probabilities, atol=EXACT)
    assert_left_as_found(model, before)


@pytest.mark.parametrize("mode", MODES)
def test_inference_tensor_input_is_accepted(mode, lite0, x, reference):
    """An input made under inference mode (what a serving loop hands over) is explained
    outside it too: the method copies it out of inference mode."""
    with torch.inference_mode():
        frozen = x.clone()
    with MODES[mode]():
        result = cameras.CAMERAS(lite0[0], scales=SCALES)(frozen)
    assert (result.maps - reference["cameras"].maps).abs().max() <= EXACT


class _FailsAtLargeInputs(TinyNet):
    """Runs at the first scale, raises at the second: an error in the middle of a call."""

    def forward(self, x):
        if x.shape[-1] > 64:
            raise RuntimeError("boom")
        return super().forward(x)


@pytest.mark.parametrize("mode", MODES)
def test_modes_and_model_restored_after_an_error(mode):
    model = _FailsAtLargeInputs()
    before = model_state(model)
    with MODES[mode]():
        inside = _modes_now()
        with pytest.raises(ValueError, match="cannot run at input size 64x85"):
            cameras.CAMERAS(model, "features", scales=[48, 64])(torch.randn(1, 3, 48, 64))
        assert _modes_now() == inside
    assert_left_as_found(model, before)


@pytest.mark.parametrize("mode", MODES)
def test_session_explains_inside_the_modes(mode, lite0, x, reference):
    session = cameras.Session(*lite0, scales=SCALES)
    with MODES[mode]():
        result = session.explain(x)
        probabilities = session.probabilities(x)
    assert (result.maps - reference["cameras"].maps).abs().max() <= EXACT
    assert torch.allclose(probabilities, reference["cameras"].probabilities, atol=EXACT)


@pytest.mark.parametrize("mode", MODES)
def test_attack_inside_the_modes(mode, lite0, x):
    model, prep, _ = lite0
    pixels = prep.denormalise(x).clamp(0, 1)
    settings = dict(target=1, steps=2, prep=prep, stop_when_reached=False)
    outside = pgd(model, prep.normalise(pixels), **settings)
    before = model_state(model)
    with MODES[mode]():
        inside = _modes_now()
        result = pgd(model, prep.normalise(pixels), **settings)
        assert _modes_now() == inside
    assert (result.perturbation - outside.perturbation).abs().max() <= EXACT
    assert result.steps == outside.steps == [2]
    assert_left_as_found(model, before)


def test_sanity_check_inside_inference_mode():
    model = TinyNet().eval()
    x = torch.randn(1, 3, 32, 32)
    steps = randomisation_steps(model)[:2]
    methods = {"gradcam": cameras.GradCAM}
    outside = sanity_check(model, x, methods, steps=steps)
    with torch.inference_mode():
        inside = sanity_check(model, x, methods, steps=steps)
    assert abs(inside.maps["gradcam"] - outside.maps["gradcam"]).max() <= EXACT


def test_token_model_inside_inference_mode_and_in_half_precision():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=5,
    ).eval()
    x = torch.randn(1, 3, 32, 48)
    reference = cameras.CAMERAS(vit, scales=[32, 48])(x)
    with torch.inference_mode():
        inside = cameras.CAMERAS(vit, scales=[32, 48])(x)
    assert (inside.maps - reference.maps).abs().max() <= EXACT
    half = vit.half()  # the float32 model is not needed any more
    before = model_state(half)
    result = cameras.CAMERAS(half, scales=[32, 48])(x)
    assert result.maps.dtype == torch.float32
    assert (result.maps - reference.maps).abs().max() <= HALF_TOLERANCE[torch.float16]
    assert_left_as_found(half, before)


# ------------------------------------------------------------------ half precision


def test_half_precision_models_explain_close_to_float32(half_model, x, reference):
    """CAMERAS (layer found by a probe in the model's dtype) with a float32 input, Grad-CAM
    with an input in the model's own dtype; one test per dtype (CPU half precision is slow)."""
    dtype = next(half_model.parameters()).dtype
    before = model_state(half_model)
    results = {
        "cameras": cameras.CAMERAS(half_model, scales=SCALES)(x),
        "gradcam": cameras.GradCAM(half_model)(x.to(dtype)),
    }
    for name, result in results.items():
        assert result.maps.dtype == torch.float32 and result.probabilities.dtype == torch.float32
        assert torch.isfinite(result.maps).all()
        assert result.targets == reference[name].targets
        assert (result.maps - reference[name].maps).abs().max() <= HALF_TOLERANCE[dtype], name
        assert _correlation(result.maps, reference[name].maps) >= MIN_CORRELATION, name
    assert_left_as_found(half_model, before)
    assert all(p.dtype == dtype for p in half_model.parameters()), "the model's dtype changed"


def test_session_with_a_half_precision_model(half_model, lite0, x, reference):
    session = cameras.Session(half_model, lite0[1], lite0[2], scales=SCALES)
    index, probability = session.top_k(x, k=1)[0]
    assert index == reference["cameras"].targets[0]
    assert probability == pytest.approx(float(reference["cameras"].probabilities.max()), abs=0.05)


def test_attack_with_a_half_precision_model(half_model, lite0, x):
    model, prep, _ = lite0
    image = prep.normalise(prep.denormalise(x).clamp(0, 1))
    settings = dict(target=1, steps=1, prep=prep, stop_when_reached=False)
    exact = pgd(model, image, **settings)
    result = pgd(half_model, image, **settings)
    assert result.perturbation.dtype == torch.float32
    assert result.original == exact.original
    # One L2 step along the gradient: the same direction, up to half-precision noise
    # (cosine measured: float16 0.93, bfloat16 0.72; unrelated directions give about 0).
    direction = torch.nn.functional.cosine_similarity(
        result.perturbation.flatten(), exact.perturbation.flatten(), dim=0
    )
    assert direction >= ATTACK_COSINE[next(half_model.parameters()).dtype]


class _PrototypeNet(TinyNet):
    """Classes scored by distance to learned prototypes: ``torch.cdist`` has no float16 /
    bfloat16 kernel on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(5, 16))

    def forward(self, x):
        features = self.pool(self.act(self.features(x))).flatten(1)
        return -torch.cdist(features, self.prototypes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_dtype_the_device_cannot_run_is_a_clear_type_error(dtype):
    model = _PrototypeNet().eval().to(dtype)
    before = model_state(model)
    with pytest.raises(TypeError, match=rf"dtype {dtype} is not supported.*model\.float\(\)"):
        cameras.GradCAM(model, layer="features")(torch.randn(1, 3, 32, 32))
    assert_left_as_found(model, before)


# ------------------------------------------------------------------ non-finite pixels


def _with_bad_pixels(x: torch.Tensor) -> torch.Tensor:
    bad = x.clone()
    bad[0, 0, 1, 2] = float("nan")
    bad[0, 1, 3, 4] = float("inf")
    bad[0, 2, 5, 6] = -float("inf")
    return bad


MESSAGE = r"^x has 3 non-finite values of 18432 \(1 NaN, 2 infinite\)"


@pytest.mark.parametrize("name", ["cameras", "gradcam", "layercam"])
def test_non_finite_pixels_are_a_clear_error(name, lite0, x):
    model = lite0[0]
    before = model_state(model)
    with pytest.raises(ValueError, match=MESSAGE):
        _method(name, model)(_with_bad_pixels(x))
    assert_left_as_found(model, before)


def test_non_finite_pixels_in_session_and_attack(lite0, x):
    session = cameras.Session(*lite0, scales=SCALES)
    with pytest.raises(ValueError, match=MESSAGE):
        session.explain(_with_bad_pixels(x))
    with pytest.raises(ValueError, match=MESSAGE):
        session.top_k(_with_bad_pixels(x))
    with pytest.raises(ValueError, match=MESSAGE):
        pgd(lite0[0], _with_bad_pixels(x), steps=1, prep=lite0[1])


def test_pixels_from_images_are_always_finite(lite0, chelsea):
    """The CLI and the web page only feed decoded 8-bit images through ``prep``: finite."""
    prep = lite0[1]
    extremes = chelsea.point(lambda value: 255 if value > 127 else 0)
    assert torch.isfinite(prep(extremes)).all() and torch.isfinite(prep(chelsea)).all()


def test_keras_non_finite_pixels_are_a_clear_error():
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    import numpy as np

    from cameras import keras as cameras_keras

    model = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ]
    )
    pixels = np.zeros((1, 16, 16, 3), np.float32)
    pixels[0, 2, 3, 1] = np.nan
    with pytest.raises(ValueError, match=r"^x has 1 non-finite values of 768 \(1 NaN"):
        cameras_keras.GradCAM(model, layer="conv")(pixels)

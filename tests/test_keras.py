"""cameras.keras: Keras models give the PyTorch maps, exactly, through the backend seam.

A small CNN built in Keras and in PyTorch with the same weights (tests/keras_twin.py)
must give the same maps (<= 1e-4) for all six methods; keras.applications models run
end to end at the paper's 8 scales; the user's model is never changed; the CLI takes
a .keras file. TensorFlow loads slowly: everything here shares module-scoped models.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import photo_batch

import cameras
from cameras.methods.cameras import default_scales

if os.environ.get("CI"):  # CI installs the keras extra: missing means broken, not skipped
    import cameras.keras as ck
else:
    ck = pytest.importorskip("cameras.keras", reason="needs the keras extra")

import keras  # noqa: E402 - after cameras.keras, which orders the native libraries
import tensorflow as tf  # noqa: E402
from keras_twin import (  # noqa: E402
    LAYER,
    keras_twin,
    random_weights,
    set_keras_weights,
    torch_twin,
)

from cameras.cli import main  # noqa: E402
from cameras.core.images import resize_map  # noqa: E402

NUM_CLASSES = 10
# With these weights chelsea's top-1 flips (8 -> 6) from 96 px on: the top-1 rule must
# drop scales. Found by trying seeds; the test below checks it still happens.
FLIPPING_SEED = 29
SCALES = [48, 72, 96, 120, 144]
PHOTOS = ("chelsea", "coffee", "astronaut")
TOL = 1e-4
# FullGrad and CAM read the PyTorch model itself (test_more_methods: they refuse others).
METHOD_NAMES = [name for name in cameras.METHODS if name not in ("fullgrad", "cam")]


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def weights():
    return random_weights(FLIPPING_SEED, NUM_CLASSES)


@pytest.fixture(scope="module")
def twins(weights):
    model = keras_twin(NUM_CLASSES)
    set_keras_weights(model, weights)
    return model, torch_twin(weights)


@pytest.fixture(scope="module")
def landscape():
    return photo_batch(PHOTOS, size=(48, 64))


def layout(result) -> list[list[tuple]]:
    return [[(s.scale, s.size, s.top1, s.kept) for s in image] for image in result.scales]


def assert_same_maps(
    name, keras_model, torch_model, x, targets=None, keras_targets=None, keras_layer=None
):
    """Run method ``name`` on both twins; the Keras result must equal the PyTorch one."""
    # Without a class, the paper's top-1 rule, so that scales can be dropped.
    rule = "top1" if targets is None else None
    kw = {"scales": SCALES, "rule": rule} if name == "cameras" else {}
    expected = cameras.METHODS[name](torch_model, layer=LAYER, **kw)(x, targets)
    method = ck.METHODS[name](keras_model, layer=keras_layer, **kw)
    got = method(nhwc(x), targets if keras_targets is None else keras_targets)
    assert isinstance(got.maps, np.ndarray) and got.maps.dtype == np.float32
    assert got.maps.shape == tuple(expected.maps.shape) == (x.shape[0], *x.shape[2:])
    assert got.targets == expected.targets
    assert layout(got) == layout(expected)
    assert np.abs(got.probabilities - expected.probabilities.numpy()).max() <= 1e-5
    difference = float(np.abs(got.maps - expected.maps.numpy()).max())
    assert difference <= TOL, f"{name}: max |keras - torch| = {difference:.2e}"
    return got


def test_twins_give_the_same_scores_at_even_and_odd_sizes(twins):
    keras_model, torch_model = twins
    for size in [(48, 64), (47, 63), (61, 90)]:  # 'same' padding differs by parity
        x = photo_batch(("chelsea",), size=size)
        expected = torch.softmax(torch_model(x), 1).detach().numpy()
        assert np.abs(keras_model(nhwc(x)).numpy() - expected).max() <= 1e-5


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_top1_rule_on_a_batch_matches_pytorch(name, twins, landscape):
    result = assert_same_maps(name, *twins, landscape)
    assert result.layer == LAYER  # found automatically, as in PyTorch
    if name == "cameras":
        chelsea = result.scales[0]
        assert any(not s.kept for s in chelsea), "the top-1 rule should drop a scale"
        assert [s.kept for s in chelsea] == [s.top1 == result.targets[0] for s in chelsea]


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_given_class_on_a_portrait_image_matches_pytorch(name, twins):
    x = photo_batch(("coffee",), size=(64, 48))
    result = assert_same_maps(name, *twins, x, targets=3)
    assert result.targets == [3]
    assert all(s.kept for s in result.scales[0])


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_per_image_classes_match_pytorch(name, twins, landscape):
    # NumPy classes are accepted on the Keras side, as Keras users hold them.
    result = assert_same_maps(
        name, *twins, landscape, targets=[1, 4, 7], keras_targets=np.array([1, 4, 7])
    )
    assert result.targets == [1, 4, 7]


def model_state(model: keras.Model) -> dict:
    """What must not change: weights, input shape, final activation, no patched calls."""
    layers = [model, *model.layers]
    for layer in list(layers):
        if isinstance(layer, keras.Model):
            layers.extend(layer.layers)
    return {
        "weights": [w.numpy().copy() for w in model.weights],
        "input_shape": tuple(model.inputs[0].shape),
        "activation": model.layers[-1].activation.__name__,
        "patched": [layer.name for layer in layers if "call" in vars(layer)],
    }


def assert_unchanged(model: keras.Model, before: dict) -> None:
    after = model_state(model)
    assert after["input_shape"] == before["input_shape"]
    assert after["activation"] == before["activation"] == "softmax"
    assert after["patched"] == before["patched"] == []
    for a, b in zip(after["weights"], before["weights"], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("kind", "layer", "auto"),
    [("sequential", None, "act"), ("nested", "backbone.act", "backbone")],
)
def test_fixed_size_models_run_at_every_scale_unchanged(kind, layer, auto, weights, landscape):
    model = keras_twin(NUM_CLASSES, input_size=(48, 64), kind=kind)
    set_keras_weights(model, weights)
    before = model_state(model)
    result = assert_same_maps("cameras", model, torch_twin(weights), landscape, keras_layer=layer)
    assert result.layer == (layer or auto)
    # The automatic layer of a nested backbone is the backbone itself: the same tensor.
    assert ck.GradCAM(model).layer_name == auto
    assert_unchanged(model, before)


def test_weights_changed_after_construction_are_used(landscape):
    model = keras_twin(NUM_CLASSES)
    set_keras_weights(model, random_weights(FLIPPING_SEED, NUM_CLASSES))
    method = ck.CAMERAS(model, scales=SCALES)
    changed = random_weights(22, NUM_CLASSES)
    set_keras_weights(model, changed)  # e.g. a randomisation sanity check
    expected = cameras.CAMERAS(torch_twin(changed), layer=LAYER, scales=SCALES)(landscape)
    got = method(nhwc(landscape))
    assert np.abs(got.maps - expected.maps.numpy()).max() <= TOL


def test_unknown_layer_lists_the_closest_names(twins):
    with pytest.raises(ValueError, match="closest: act"):
        ck.GradCAM(twins[0], layer="actt")
    nested = keras_twin(NUM_CLASSES, kind="nested")
    with pytest.raises(ValueError, match="closest: backbone.act"):
        ck.GradCAM(nested, layer="backbone.actt")
    assert ck.GradCAM(nested, layer=nested.get_layer("backbone")).layer_name == "backbone"


def test_bad_models_and_inputs_get_clear_errors(twins, landscape):
    with pytest.raises(TypeError, match="keras.Model"):
        ck.CAMERAS(twins[1])  # a PyTorch model
    method = ck.GradCAM(twins[0])
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        method(landscape.numpy())  # channels first
    with pytest.raises(TypeError, match="float"):
        method(np.zeros((1, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="out of range"):
        method(nhwc(landscape), targets=NUM_CLASSES)
    # The failed call left nothing behind: the next one works.
    assert method(nhwc(landscape)).maps.shape == (3, 48, 64)
    assert "call" not in vars(method.backend.network.layers[LAYER])


def test_a_model_fixed_by_flatten_says_it_cannot_change_size():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    with pytest.raises(ck.KerasModelError, match="does not run at other input sizes"):
        ck.CAMERAS(model)
    method = ck.CAMERAS(model, layer="conv", scales=[16, 24])
    with pytest.raises(ck.KerasModelError, match="24x24"):
        method(np.zeros((1, 16, 16, 3), dtype=np.float32))
    # At its own size the single-scale methods work.
    assert ck.GradCAM(model, layer="conv")(np.ones((1, 16, 16, 3), np.float32)).maps.shape == (
        1,
        16,
        16,
    )


# End to end on keras.applications (random weights: nothing is downloaded). Random
# EfficientNet scores are nearly tied, so its top-1 flips at every scale: it explains
# given classes (every scale fused), ResNet50 its top-1 classes (the rule).
SIZE = 48
APPLICATIONS = {
    "ResNet50": (keras.applications.ResNet50, "conv5_block3_out", None),
    "EfficientNetB0": (keras.applications.EfficientNetB0, "top_activation", [1, 2]),
}


@pytest.fixture(scope="module", params=list(APPLICATIONS))
def application(request):
    build, layer, targets = APPLICATIONS[request.param]
    keras.utils.set_random_seed(0)
    return build(weights=None, input_shape=(SIZE, SIZE, 3)), layer, targets


def grad_cam_oracle(model: keras.Model, layer: str, x: np.ndarray, target: int) -> np.ndarray:
    """Grad-CAM the plain Keras way, on the user's own model at its own size: scores
    before the final softmax computed from the classifier's input, tf.image.resize."""
    head = model.get_layer("predictions")
    probe = keras.Model(model.inputs, [model.get_layer(layer).output, head.input])
    kernel, bias = head.get_weights()
    with tf.GradientTape() as tape:
        activations, pooled = probe(x, training=False)
        score = tf.reduce_sum((tf.matmul(pooled, kernel) + bias)[:, target])
    gradients = tape.gradient(score, activations)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    low = tf.nn.relu(tf.reduce_sum(weights * activations, -1, keepdims=True))
    cam = tf.image.resize(low, x.shape[1:3], method="bilinear")[..., 0].numpy()
    low, high = cam.min((1, 2), keepdims=True), cam.max((1, 2), keepdims=True)
    return np.where(high > low, (cam - low) / np.where(high > low, high - low, 1), 0)


def test_keras_applications_end_to_end_at_the_papers_scales(application):
    model, layer, targets = application
    before = model_state(model)
    x = nhwc(photo_batch(("chelsea", "coffee"), size=(SIZE, SIZE)))
    result = ck.CAMERAS(model, rule="top1" if targets is None else None)(x, targets)
    assert result.layer == layer
    assert result.maps.shape == (2, SIZE, SIZE) and result.maps.dtype == np.float32
    assert result.maps.min() == 0 and result.maps.max() == 1
    for target, records in zip(result.targets, result.scales, strict=True):
        assert [r.scale for r in records] == default_scales(SIZE)  # the paper's 8 factors
        assert records[-1].size == (198, 198)
        if targets is None:
            assert [r.kept for r in records] == [r.top1 == target for r in records]
        else:
            assert all(r.kept for r in records)
    # The rebuilt copy has the user's weights: its softmax at the input's own size is
    # the user's model's output.
    np.testing.assert_allclose(result.probabilities, model(x).numpy(), atol=1e-5)
    assert_unchanged(model, before)


def test_grad_cam_matches_the_plain_keras_recipe_on_the_users_model(application):
    model, layer, _ = application
    x = nhwc(photo_batch(("astronaut", "rocket"), size=(SIZE, SIZE)))
    result = ck.GradCAM(model)(x, targets=[5, 9])
    for b, target in enumerate([5, 9]):
        expected = grad_cam_oracle(model, layer, x[b : b + 1], target)[0]
        assert np.abs(result.maps[b] - expected).max() <= TOL


# The CLI.
def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def saved_twin(twins, tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "twin.keras"
    twins[0].save(path)
    return path


def test_cli_explains_with_a_keras_model_file(saved_twin, chelsea, tmp_path, capsys):
    image_path = tmp_path / "cat.png"  # lossless: the CLI must see these very pixels
    chelsea.save(image_path)
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        capsys, "explain", image_path, "--model", saved_twin, "--preprocess", "torch",
        "--scales", "224,272", "--out", out,
    )  # fmt: skip
    assert code == 0
    assert "top-5" in stdout
    saliency = np.load(out / "cat_cameras.npy")
    assert saliency.shape == (chelsea.height, chelsea.width) and saliency.dtype == np.float32
    # The same as the library call the CLI adapts.
    model, prep, _ = ck.load_model(saved_twin, "torch")
    direct = ck.CAMERAS(model, scales=[224, 272])(prep(chelsea)[None])
    expected = resize_map(torch.as_tensor(direct.maps[0]), chelsea.height, chelsea.width)
    assert np.abs(saliency - expected).max() <= 1e-6
    from PIL import Image

    with Image.open(out / "cat_cameras.png") as overlay:
        assert overlay.size == chelsea.size


def custom_layer_model_file(folder) -> object:
    class Doubler(keras.layers.Layer):  # local: Keras cannot find it when loading
        def call(self, x):
            return 2 * x

    inputs = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(Doubler()(inputs))
    path = folder / "custom.keras"
    keras.Model(inputs, keras.layers.Dense(2)(x)).save(path)
    return path


def test_cli_bad_keras_files_give_one_line(saved_twin, chelsea, tmp_path, capsys):
    image_path = tmp_path / "cat.jpg"
    chelsea.save(image_path)
    fake = tmp_path / "fake.keras"
    fake.write_text("not a model")
    cases = [
        ([fake, "--preprocess", "tf"], "not a Keras model file"),
        ([custom_layer_model_file(tmp_path), "--preprocess", "tf"], "custom layer"),
        ([saved_twin], "needs --preprocess"),
        ([tmp_path / "missing.keras", "--preprocess", "caffe"], "no such file"),
    ]
    for model_args, message in cases:
        code, _, stderr = run_cli(
            capsys, "explain", image_path, "--out", tmp_path / "o", "--model", *model_args
        )
        assert code == 2
        assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_preprocess_modes_follow_keras_applications():
    pixels = np.array([[[0.0, 127.5, 255.0]]], dtype=np.float32)
    from cameras.keras.models import KerasPreprocess

    np.testing.assert_allclose(KerasPreprocess(1, "tf").normalise(pixels), [[[-1, 0, 1]]])
    caffe = KerasPreprocess(1, "caffe").normalise(pixels)
    np.testing.assert_allclose(caffe, [[[255 - 103.939, 127.5 - 116.779, 0 - 123.68]]], atol=1e-4)
    torch_mode = KerasPreprocess(1, "torch").normalise(pixels)
    np.testing.assert_allclose(torch_mode[0, 0, 0], (0 - 0.485) / 0.229, atol=1e-5)
    with pytest.raises(ValueError, match="choose from"):
        KerasPreprocess(1, "imagenet")


def test_import_cameras_stays_free_of_tensorflow_and_says_how_to_install():
    code = (
        "import sys\n"
        "import cameras\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
        "sys.modules['tensorflow'] = None  # as if the extra were not installed\n"
        "try:\n"
        "    import cameras.keras\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pip install 'cameras[keras]'" in done.stdout


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("fullgrad", "fullgrad needs every bias gradient and runs on PyTorch models only"),
        ("cam", "cam reads the linear head of a PyTorch model"),
    ],
)
def test_torch_only_methods_refuse_a_keras_model_in_one_line(name, message, twins):
    assert name not in ck.METHODS
    with pytest.raises(TypeError, match=message) as error:
        cameras.METHODS[name](twins[0])
    assert "\n" not in str(error.value)

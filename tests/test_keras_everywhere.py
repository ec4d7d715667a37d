"""Every subcommand takes a Keras model file and gives the PyTorch results (issue 20).

The same CLI command runs twice: with ``--model twin.keras --preprocess torch`` (the
Keras twin of a small CNN, tests/keras_twin.py) and with ``--model torch-twin``, a name
this file's loader maps to the PyTorch twin with the same weights and the same
preprocessing. Maps must agree within 1e-4; metrics, attack norms and sanity
similarities within 1e-3. Small photos and two scales keep it fast; TensorFlow is
loaded once per module.
"""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
import torch
from conftest import shared_load_model

ck = pytest.importorskip("cameras.keras", reason="needs the keras extra")

from keras_twin import keras_twin, random_weights, set_keras_weights, torch_twin  # noqa: E402

import cameras.session  # noqa: E402
from cameras.cli import main  # noqa: E402
from cameras.models import Preprocess  # noqa: E402
from cameras.session import Session, SessionSpec  # noqa: E402

NUM_CLASSES = 10
SEED = 29  # tests/test_keras.py's: chelsea's top-1 changes with the scale
SCALES = "224,272"
MAPS, NUMBERS = 1e-4, 1e-3
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def weights():
    return random_weights(SEED, NUM_CLASSES)


@pytest.fixture(scope="module")
def keras_file(weights, tmp_path_factory):
    model = keras_twin(NUM_CLASSES)
    set_keras_weights(model, weights)
    path = tmp_path_factory.mktemp("keras") / "twin.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def twin(weights):
    return torch_twin(weights)


@pytest.fixture(autouse=True)
def _torch_twin_by_name(monkeypatch, twin):
    """``--model torch-twin`` loads the PyTorch twin, preprocessed as ``--preprocess torch``
    preprocesses for the Keras file (shorter side 224, ImageNet mean and std)."""

    def load(name="efficientnet_lite0", weights=None, device=None, pretrained=True):
        if name == "torch-twin":
            return twin, Preprocess(224, IMAGENET_MEAN, IMAGENET_STD), None
        return shared_load_model(name, weights, device, pretrained)

    monkeypatch.setattr(cameras.session, "load_model", load)


@pytest.fixture(scope="module")
def photo(chelsea, tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "cat.png"  # lossless: both runs see these pixels
    chelsea.resize((90, 60)).save(path)
    return path


def models(keras_file) -> dict[str, list[str]]:
    """The --model arguments of the two runs, PyTorch first."""
    return {
        "torch": ["--model", "torch-twin"],
        "keras": ["--model", str(keras_file), "--preprocess", "torch"],
    }


def run(capsys, *argv) -> str:
    """Run the CLI; it must succeed without a traceback. Returns stderr."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert code == 0, captured.err
    return captured.err


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def csv_rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_close_numbers(torch_rows, keras_rows, columns, tolerance=NUMBERS):
    assert len(torch_rows) == len(keras_rows) > 0
    for want, got in zip(torch_rows, keras_rows, strict=True):
        for column in columns:
            a, b = float(want[column]), float(got[column])
            assert abs(a - b) <= tolerance, f"{column}: torch {a} keras {b}"


# ---------------------------------------------------------------- explain


@pytest.mark.parametrize(("method", "rule"), [("cameras", "top1"), ("gradcam", None)])
def test_explain_gives_the_pytorch_maps(method, rule, keras_file, photo, tmp_path, capsys):
    rule_args = ["--rule", rule] if rule else []
    maps = {}
    for kind, model in models(keras_file).items():
        out = tmp_path / kind
        options = f"--method {method} --scales {SCALES}".split()
        run(capsys, "explain", photo, *model, *options, *rule_args, "--out", out)
        maps[kind] = np.load(out / f"cat_{method}.npy")
    assert maps["keras"].shape == (60, 90)
    assert np.abs(maps["keras"] - maps["torch"]).max() <= MAPS


# ---------------------------------------------------------------- compare


def test_compare_gives_the_pytorch_panels(keras_file, twin, photo, tmp_path, capsys, monkeypatch):
    import cameras.cli.compare as compare

    # The two classes the model ranks first, so that the top5 rule keeps scales.
    session = Session(twin, Preprocess(224, IMAGENET_MEAN, IMAGENET_STD))
    first, second = (index for index, _ in session.top_k(session.open(photo)[1], 2))

    drawn = []
    real = compare.comparison_figure
    monkeypatch.setattr(
        compare,
        "comparison_figure",
        lambda image, rows, **kw: drawn.append(rows) or real(image, rows, **kw),
    )
    lines = {}
    for kind, model in models(keras_file).items():
        options = ["--methods", "cameras,gradcam", "--classes", f"{first},{second}"]
        options += ["--scales", SCALES, "--rule", "top5", "--out", tmp_path / f"{kind}.png"]
        err = run(capsys, "compare", photo, "--models", model[1], *model[2:], *options)
        lines[kind] = [line.split(": ", 1)[1] for line in err.splitlines() if ": class" in line]
    assert lines["keras"] == lines["torch"] and len(lines["torch"]) == 2
    assert "scales kept [224" in lines["torch"][0]  # the top5 rule reached CAMERAS
    torch_rows, keras_rows = drawn
    assert len(torch_rows) == len(keras_rows) == 3  # two classes and their difference
    for want_row, got_row in zip(torch_rows, keras_rows, strict=True):
        for want, got in zip(want_row, got_row, strict=True):
            difference = np.abs(np.asarray(got.saliency) - np.asarray(want.saliency)).max()
            assert difference <= 2 * MAPS  # a difference row adds two maps' errors


# ---------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def annotations(photo):
    path = photo.parent / "boxes.json"
    objects = [
        {"class_index": 3, "boxes": [[10, 5, 60, 50]]},
        {"class_index": 7, "boxes": [[0, 0, 30, 30]]},
    ]
    path.write_text(json.dumps([{"file": photo.name, "objects": objects}]))
    return path


METRIC_COLUMNS = "probability pointing energy rho_plus rho_minus insertion deletion".split()


def evaluate_rows(capsys, annotations, model, out, *extra) -> list[dict]:
    options = f"--methods cameras,gradcam --scales {SCALES} --steps 4 --batch-size 4".split()
    run(capsys, "evaluate", annotations, *model, *options, "--out", out, *extra)
    return csv_rows(out / "results.csv")


def test_evaluate_gives_the_pytorch_metrics(keras_file, annotations, tmp_path, capsys):
    rows = {
        kind: evaluate_rows(capsys, annotations, model, tmp_path / kind)
        for kind, model in models(keras_file).items()
    }
    assert [(r["method"], r["class_index"], r["top1"]) for r in rows["keras"]] == [
        (r["method"], r["class_index"], r["top1"]) for r in rows["torch"]
    ]
    assert_close_numbers(rows["torch"], rows["keras"], METRIC_COLUMNS)


# ---------------------------------------------------------------- sanity


def test_sanity_gives_the_pytorch_similarities(keras_file, photo, tmp_path, capsys):
    rows = {}
    for kind, model in models(keras_file).items():
        out = tmp_path / kind
        options = f"--methods cameras,gradcam --scales {SCALES} --class 3".split()
        run(capsys, "sanity", photo, *model, *options, "--out", out)
        rows[kind] = csv_rows(out / "sanity.csv")
    # The same blocks, from the logits down, randomised with the same numbers.
    labels = [(r["method"], r["step"], r["label"]) for r in rows["torch"]]
    assert labels == [(r["method"], r["step"], r["label"]) for r in rows["keras"]]
    assert [label for _, _, label in labels[::2]] == ["fc", "conv2+bn", "conv1"]
    assert_close_numbers(rows["torch"], rows["keras"], ["spearman", "spearman_abs", "ssim", "hog"])


# ---------------------------------------------------------------- attack


def test_attack_gives_the_pytorch_norms(keras_file, photo, tmp_path, capsys):
    rows = {}
    for kind, model in models(keras_file).items():
        out = tmp_path / kind
        options = "--method gradcam --steps 6 --target 2".split()
        run(capsys, "attack", photo, *model, *options, "--out", out)
        rows[kind] = [json.loads(line) for line in (out / "attack.jsonl").read_text().splitlines()]
    want, got = rows["torch"][0], rows["keras"][0]
    for row in (want, want["plain"], got, got["plain"]):
        assert row["steps"] > 0
    for a, b in ((want, got), (want["plain"], got["plain"])):
        assert (a["reached"], a["steps"]) == (b["reached"], b["steps"])
        for key in ("l2", "linf", "confidence"):
            assert abs(a[key] - b[key]) <= NUMBERS, key
    assert want["target"] == got["target"] and want["png_reached"] == got["png_reached"]


# ---------------------------------------------------------------- serve


def test_serve_opens_a_keras_session_and_its_page_gives_the_pytorch_maps(
    keras_file, twin, chelsea, tmp_path, monkeypatch
):
    pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")
    from cameras import web

    opened = []

    class App:
        def close(self):
            pass

    monkeypatch.setattr(web, "build_app", lambda session, **_: opened.append(session) or App())
    monkeypatch.setattr(web, "serve", lambda *args, **kwargs: None)
    options = f"--preprocess torch --scales {SCALES} --rule top1 --port {free_port()}".split()
    assert main(["serve", "--model", str(keras_file), *options]) == 0
    keras_session = opened[0]
    assert keras_session.backend.name == "keras" and keras_session.rule == "top1"
    torch_session = Session(
        twin, Preprocess(224, IMAGENET_MEAN, IMAGENET_STD), scales=[224, 272], rule="top1"
    )
    small = chelsea.resize((90, 60))
    path = tmp_path / "cat.png"
    small.save(path)
    pages = [web.handle_upload(s, str(path)) for s in (torch_session, keras_session)]
    assert pages[0]["choices"] == pages[1]["choices"]
    np.testing.assert_allclose(
        list(pages[1]["top5"].values()), list(pages[0]["top5"].values()), atol=1e-5
    )
    results = [
        web.explain_photo(s, small, None, ["cameras", "gradcam"])
        for s in (torch_session, keras_session)
    ]
    for want, got in zip(*results, strict=True):
        assert (got.method, got.target, got.scales_kept) == (
            want.method,
            want.target,
            want.scales_kept,
        )
        assert np.abs(got.saliency - want.saliency).max() <= MAPS


# ---------------------------------------------------------------- --ray


@pytest.mark.usefixtures("ray_local")
def test_explain_on_ray_gives_the_pytorch_maps(keras_file, photo, tmp_path, capsys):
    maps = {}
    for kind, model in models(keras_file).items():
        out = tmp_path / kind
        ray = ["--ray"] if kind == "keras" else []  # the torch twin's name lives in this process
        run(capsys, "explain", photo, *model, "--scales", SCALES, "--out", out, *ray)
        maps[kind] = np.load(out / "cat_cameras.npy")
    assert np.abs(maps["keras"] - maps["torch"]).max() <= MAPS


@pytest.mark.usefixtures("ray_local")
def test_evaluate_on_ray_gives_the_pytorch_metrics(keras_file, annotations, tmp_path, capsys):
    model = models(keras_file)
    want = evaluate_rows(capsys, annotations, model["torch"], tmp_path / "torch")
    got = evaluate_rows(capsys, annotations, model["keras"], tmp_path / "keras", "--ray")
    assert_close_numbers(want, got, METRIC_COLUMNS)


# ---------------------------------------------------------------- errors, the spec


@pytest.mark.parametrize(
    "command",
    [
        "explain IMAGE --model KERAS --out OUT",
        "compare IMAGE --models KERAS --out OUT.png",
        "evaluate IMAGE --model KERAS --out OUT",
        "sanity IMAGE --model KERAS --out OUT",
        "attack IMAGE --model KERAS --out OUT",
        "serve --model KERAS --port PORT",
    ],
)
def test_a_keras_file_without_preprocess_is_one_line_on_every_subcommand(
    command, keras_file, photo, tmp_path, capsys
):
    values = {"IMAGE": photo, "KERAS": keras_file, "OUT": tmp_path / "o", "PORT": free_port()}
    values["OUT.png"] = tmp_path / "o.png"
    code = main([str(values.get(part, part)) for part in command.split()])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "needs --preprocess" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("kind", ["keras", "torch"])
def test_a_spec_pickles_and_rebuilds_the_same_session(kind, keras_file, chelsea):
    if kind == "keras":
        spec = SessionSpec(str(keras_file), layer="act", scales=(224, 272), preprocess="torch")
    else:  # the embedded default model, shared with the other tests
        spec = SessionSpec(device="cpu", scales=(224, 272), rule="top1")
    session = spec.build()
    assert session.spec is spec
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and again is not spec
    rebuilt = again.build()
    x = session.input(chelsea.resize((90, 60)))
    assert isinstance(x, torch.Tensor) and x.shape[:2] == (1, 3)
    for method in ("cameras", "gradcam"):
        want, got = session.explain(x, method), rebuilt.explain(x, method)
        assert got.targets == want.targets
        assert torch.equal(torch.as_tensor(got.maps), torch.as_tensor(want.maps))
    assert rebuilt.layer == session.layer and rebuilt.method("cameras").scales == [224, 272]


def test_one_class_per_method_whatever_the_model(weights, twin, chelsea):
    """``cameras.CAMERAS(keras_model)`` picks the Keras backend; ``cameras.keras.CAMERAS``
    is the same class with that backend required; a torch tensor in PyTorch's layout
    gives tensors, a Keras (B, H, W, C) array gives NumPy arrays, the same maps."""
    import cameras

    model = keras_twin(NUM_CLASSES)
    set_keras_weights(model, weights)
    x = Preprocess(64, IMAGENET_MEAN, IMAGENET_STD)(chelsea)[None]
    by_type = cameras.CAMERAS(model, scales=[64, 96])
    keras_name = ck.CAMERAS(model, scales=[64, 96])
    assert type(by_type) is type(keras_name) is cameras.CAMERAS
    assert by_type.backend.name == keras_name.backend.name == "keras"
    as_tensor = by_type(x, targets=3)
    as_array = keras_name(x.permute(0, 2, 3, 1).numpy(), targets=np.int64(3))
    assert isinstance(as_tensor.maps, torch.Tensor) and isinstance(as_array.maps, np.ndarray)
    np.testing.assert_array_equal(as_tensor.maps.numpy(), as_array.maps)
    want = cameras.CAMERAS(twin, layer="act", scales=[64, 96])(x, targets=3)
    assert (as_tensor.maps - want.maps).abs().max() <= MAPS


@pytest.mark.parametrize("mode", ["torch", "tf", "caffe", "raw"])
def test_a_sessions_keras_preprocessing_is_the_keras_one_in_pytorchs_layout(mode, chelsea):
    """What a session over a Keras file feeds the model is exactly ``KerasPreprocess``'s
    array, transposed; ``normalise`` / ``denormalise`` (the metrics' and the attack's
    pixel space) agree with it and undo each other."""
    from cameras.keras import KerasPreprocess

    keras_prep = KerasPreprocess(40, mode)
    prep = keras_prep.channels_first()
    image = chelsea.resize((60, 40))
    x = prep(image)
    np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), keras_prep(image))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    scale = 255.0 if mode in ("caffe", "raw") else 1.0
    torch.testing.assert_close(prep.normalise(pixels), x, atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(prep.denormalise(x), pixels, atol=1e-6, rtol=0)

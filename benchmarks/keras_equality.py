"""How far the Keras backend's maps are from the PyTorch ones, per method.

    python benchmarks/keras_equality.py

Builds the twin CNN of tests/keras_twin.py (one network in Keras and in PyTorch, same
weights) and prints, per method, the worst max |Keras map - PyTorch map| over the cases
tests/test_keras.py checks: a batch of three photos with the top-1 rule (a scale is
dropped), a given class on a portrait photo, per-image classes, and fixed-input
Sequential and nested models run at every scale.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
from helpers import photo_batch  # noqa: E402
from keras_twin import LAYER, keras_twin, random_weights, set_keras_weights, torch_twin  # noqa: E402

import cameras  # noqa: E402
import cameras.keras as ck  # noqa: E402

SEED, NUM_CLASSES, SCALES = 29, 10, [48, 72, 96, 120, 144]


def main() -> None:
    weights = random_weights(SEED, NUM_CLASSES)
    torch_model = torch_twin(weights)
    models = {}
    kinds = [("functional", (None, None)), ("sequential", (48, 64)), ("nested", (48, 64))]
    for kind, size in kinds:
        models[kind] = keras_twin(NUM_CLASSES, input_size=size, kind=kind)
        set_keras_weights(models[kind], weights)
    landscape = photo_batch(("chelsea", "coffee", "astronaut"), size=(48, 64))
    portrait = photo_batch(("coffee",), size=(64, 48))
    cases = [
        ("functional", landscape, None),
        ("functional", portrait, 3),
        ("functional", landscape, [1, 4, 7]),
        ("sequential", landscape, None),
        ("nested", landscape, None),
    ]
    print(f"{'method':<10} worst max |keras - torch| over {len(cases)} cases")
    for name, torch_class in cameras.METHODS.items():
        kwargs = {"scales": SCALES} if name == "cameras" else {}
        worst = 0.0
        for kind, x, targets in cases:
            expected = torch_class(torch_model, layer=LAYER, **kwargs)(x, targets)
            got = ck.METHODS[name](models[kind], **kwargs)(x.permute(0, 2, 3, 1).numpy(), targets)
            assert got.targets == expected.targets
            worst = max(worst, float(np.abs(got.maps - expected.maps.numpy()).max()))
        print(f"{name:<10} {worst:.1e}")


if __name__ == "__main__":
    main()

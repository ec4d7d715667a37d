"""``Session``: one model ready to explain, the object every entry point adapts.

A session holds a model, its preprocessing and its class names, and builds each
saliency method once, with the layer found once and shared by every method (so all of
them explain the same features and the automatic layer probe runs a single time). The
CLI subcommands and the web page only parse what the user typed, call a session, and
print or draw what comes back::

    session = cameras.Session.load()                  # the embedded default model
    image, x = session.open("cat.jpg")                # PIL image, (1, 3, h, w) input
    session.top_k(x)                                   # [(281, 0.62), (285, 0.21), ...]
    result = session.explain(x, target="tabby")       # an Explanation, maps (1, h, w)
    saliency = session.map_at_image_size(result, image)  # (H, W) float32 in [0, 1]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .backends import backend_for
from .core.capture import check_batch, eval_mode, model_input
from .core.classes import ClassLike, Targets, class_index, class_label, class_names_for
from .core.images import load_image, resize_map
from .core.precision import DEFAULT_PRECISION, check_precision
from .core.targets import logits_of
from .methods import CAMERAS, Explanation, SaliencyMethod, build_method
from .models import (
    DEFAULT_MODEL,
    Preprocess,
    is_keras_file,
    load_keras_file,
    load_model,
)


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``"auto"``: CUDA when present, else the CPU; a name or device as it is; None stays
    None (the model where it was built)."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device) if device is not None else None


@dataclass(frozen=True)
class SessionSpec:
    """Everything a ``Session`` is built from, small and picklable: a Ray actor (or any
    other process) rebuilds the same session with ``spec.build()``.

    model: a model name (``cameras.load_model``) or a Keras model file (``.keras``,
    ``.h5``); weights: a local weights file for a named model; device: ``"auto"``,
    ``"cpu"``, ``"cuda"`` or None; layer, scales, rule: the methods' (see ``Session``);
    preprocess: a Keras model's input convention (``cameras.keras.PREPROCESS_MODES``);
    precision: the methods' (``"fp32"``, ``"bf16"``, ``"fp16"``; see ``Session``).
    """

    model: str = DEFAULT_MODEL
    weights: str | None = None
    device: str | None = None
    layer: str | None = None
    scales: tuple[int, ...] | None = None
    rule: str | None = None
    preprocess: str | None = None
    precision: str = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        # Plain values only, so the spec pickles and compares equal wherever it goes.
        object.__setattr__(self, "model", str(self.model))
        if self.weights is not None:
            object.__setattr__(self, "weights", str(self.weights))
        if self.device is not None:
            object.__setattr__(self, "device", str(self.device))
        if self.scales is not None:
            object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))

    def for_workers(self, device: str | None, layer: str) -> SessionSpec:
        """This spec for other processes (Ray actors): on their ``device``, with the layer
        this process resolved (so every worker explains the same one), and local files
        (a model file, weights) as absolute paths, wherever the workers start."""

        def absolute(path: str | None) -> str | None:
            return str(Path(path).resolve()) if path and Path(path).exists() else path

        return replace(
            self,
            device=device,
            layer=layer,
            model=absolute(self.model),
            weights=absolute(self.weights),
        )

    def build(self) -> Session:
        """The session this spec describes (ModelError if the model cannot load)."""
        # The kind of model, and so its backend, is chosen here: a Keras file by its
        # suffix (or any model given a Keras preprocessing), else a model name.
        if self.preprocess is None and not is_keras_file(self.model):
            model, prep, classes = load_model(
                self.model, weights=self.weights, device=resolve_device(self.device)
            )
        else:
            model, prep, classes = load_keras_file(self.model, self.weights, self.preprocess)
        session = Session(
            model,
            prep,
            classes,
            layer=self.layer,
            scales=self.scales,
            rule=self.rule,
            precision=self.precision,
        )
        session.spec = self
        return session


class Session:
    """A model, its preprocessing and class names, and its saliency methods built once.

    model: a classifier returning (B, K) scores, of any kind a backend serves (a torch
    module, a Keras model: ``cameras.backends``); prep: image -> (3, h, w) input (a
    ``Preprocess``); class_names: in index order (None: taken from ``load_model``'s
    model or a Hugging Face ``config.id2label``; names are then refused as classes).
    layer: module name or None (found automatically, once, on first use).
    scales: CAMERAS's shorter-side sizes (None: ``default_scales`` of each input).
    rule: CAMERAS's scale rule (``"top1"``, ``"top5"``, ``"all"``; None: the default).
    precision: ``"fp32"`` (default: the model's own dtype), ``"bf16"`` or ``"fp16"``: every
    method runs the model's passes under autocast in that dtype, maps in float32
    (``cameras.core.precision``).
    ``spec``: the ``SessionSpec`` it was built from (None for a session over a model
    object).
    """

    def __init__(
        self,
        model: nn.Module,
        prep: Preprocess,
        class_names: Sequence[str] | None = None,
        layer: str | None = None,
        scales: Sequence[int] | None = None,
        rule: str | None = None,
        precision: str = DEFAULT_PRECISION,
    ) -> None:
        self.backend = backend_for(model)
        self.precision = check_precision(precision, self.backend.name)
        self.model = model
        self.prep = prep
        if class_names is None:
            class_names = class_names_for(model)
        self.class_names = list(class_names) if class_names is not None else None
        self.scales = list(scales) if scales is not None else None
        self.rule = rule
        self.spec: SessionSpec | None = None
        self._layer = layer
        self._layer_resolved = False
        self._methods: dict[tuple[str, tuple[int, ...] | None], SaliencyMethod] = {}
        self._num_classes: int | None = len(self.class_names) if self.class_names else None
        self._scorer: nn.Module | None = None

    @classmethod
    def load(
        cls,
        name: str = DEFAULT_MODEL,
        weights: str | Path | None = None,
        device: str | torch.device | None = None,
        layer: str | None = None,
        scales: Sequence[int] | None = None,
        rule: str | None = None,
        preprocess: str | None = None,
        precision: str = DEFAULT_PRECISION,
    ) -> Session:
        """A session over ``load_model(name, weights, device)``, or over a Keras model file
        with ``preprocess`` (ModelError if it fails); see ``SessionSpec``."""
        spec = SessionSpec(
            name,
            str(weights) if weights is not None else None,
            str(device) if device is not None else None,
            layer,
            tuple(scales) if scales is not None else None,
            rule,
            preprocess,
            precision,
        )
        return spec.build()

    # ------------------------------------------------------------------ model facts

    @property
    def layer(self) -> str:
        """The explained layer's module name, found once (ValueError for a bad name)."""
        if not self._layer_resolved:
            self._layer, _ = self.backend.resolve_layer(self._layer)
            self._layer_resolved = True
        return self._layer

    @property
    def num_classes(self) -> int:
        """How many classes the model scores (from the names, or one probe pass)."""
        if self._num_classes is None:
            self._num_classes = self.backend.num_classes(getattr(self.prep, "size", 224))
        return self._num_classes

    @property
    def scorer(self) -> nn.Module:
        """The model as a differentiable torch function of a (B, 3, h, w) input, giving
        (B, K) pre-softmax scores, whatever its kind (``Backend.scorer``): what the
        probabilities, the metrics and the attack run."""
        if self._scorer is None:
            self._scorer = self.backend.scorer()
        return self._scorer

    def class_index(self, value: ClassLike) -> int:
        """A class given as an index, digits or a name -> index (``cameras.core.classes``'s
        rule, checked against this model's class count); ClassError otherwise."""
        return class_index(value, self.class_names, self.num_classes)

    def class_name(self, index: int) -> str:
        """``"tabby"``, or ``"class 281"`` for a model without names."""
        return self.class_names[index] if self.class_names else f"class {index}"

    def class_label(self, index: int) -> str:
        """``"tabby (281)"``, or ``"class 281"`` for a model without names."""
        return class_label(index, self.class_names)

    # ------------------------------------------------------------------ methods

    def method(self, name: str = CAMERAS.name, scales: Sequence[int] | None = None):
        """The method ``name`` (a key of ``METHODS``), built on first use and reused.

        scales: CAMERAS only (default: the session's); the baselines ignore it.
        ValueError for an unknown name or a bad layer.
        """
        if name == CAMERAS.name:
            chosen = scales if scales is not None else self.scales
            key = (name, tuple(int(s) for s in chosen) if chosen is not None else None)
        else:
            key, chosen = (name, None), None
        if key not in self._methods:
            self._methods[key] = self._build(name, self.model, chosen, self.backend)
        return self._methods[key]

    def method_factory(self, name: str) -> Callable[[object], SaliencyMethod]:
        """``model -> method name`` with this session's layer, scales, rule and class
        names, for copies of the model (the sanity test's randomised ones)."""
        self.method(name)  # a bad name or layer fails now, not on the first copy
        return lambda model: self._build(name, model, self.scales, None)

    def _build(self, name: str, model, scales, backend) -> SaliencyMethod:
        return build_method(
            name,
            model,
            self.layer,
            scales,
            self.class_names,
            self.rule,
            precision=self.precision,
            backend=backend,
        )

    # ------------------------------------------------------------------ images

    def open(self, path: str | Path) -> tuple[Image.Image, torch.Tensor]:
        """(upright 8-bit RGB image, (1, 3, h, w) model input); ImageError naming the file."""
        image = load_image(path)
        return image, self.input(image)

    def input(self, image: Image.Image) -> torch.Tensor:
        """The (1, 3, h, w) model input of a PIL image (shorter side ``prep.size``)."""
        return self.prep(image)[None]

    def pixels(self, x: torch.Tensor) -> np.ndarray:
        """(H, W, 3) uint8 picture of one (3, h, w) or (1, 3, h, w) model input."""
        x = x[0] if x.dim() == 4 else x
        values = self.prep.denormalise(x.detach().float().cpu()).clamp(0, 1)
        return (values * 255.0).round().byte().permute(1, 2, 0).numpy()

    # ------------------------------------------------------------------ the model's answers

    def probabilities(self, x: torch.Tensor | Image.Image) -> torch.Tensor:
        """(B, K) float32 softmax of the model's scores for a batch (or one PIL image), on
        the CPU. The input is cast to the model's dtype; NaN or infinite values in it are a
        ValueError (they would give NaN probabilities)."""
        if isinstance(x, Image.Image):
            x = self.input(x)
        x = check_batch(x)
        scorer = self.scorer
        with eval_mode(scorer), torch.no_grad():
            scores = logits_of(scorer(model_input(x, scorer)))
        return scores.float().softmax(1).cpu()

    def top_k(self, x: torch.Tensor | Image.Image, k: int = 5) -> list[tuple[int, float]]:
        """The first image's ``k`` most probable classes, (index, probability), best first."""
        probabilities = self.probabilities(x)[0]
        self._num_classes = probabilities.numel()
        return top_classes(probabilities, k)

    def explain(
        self,
        x: torch.Tensor | Image.Image,
        method: str = CAMERAS.name,
        target: Targets = None,
        scales: Sequence[int] | None = None,
        *,
        targets: object = None,
    ) -> Explanation:
        """Explain a (B, 3, h, w) batch or one PIL image with ``method`` for ``target``
        (None: each image's top-1; an index or name; a ``cameras.targets`` target such
        as ``Region``, ``Box``, ``Classes`` or ``Similarity``; or one per image).
        ``targets=`` is the same argument under the methods' name.

        As the methods: works under ``torch.no_grad()`` / ``torch.inference_mode()``,
        with float16 / bfloat16 models (maps in float32), and refuses non-finite input."""
        if target is not None and targets is not None:
            raise ValueError("pass target= or targets=, not both")
        if isinstance(x, Image.Image):
            x = self.input(x)
        return self.method(method, scales)(x, targets=target if targets is None else targets)

    @staticmethod
    def map_at_image_size(result: Explanation, image: Image.Image, i: int = 0) -> np.ndarray:
        """Image ``i``'s map at the photo's own size: (H, W) float32 in [0, 1], bilinear."""
        return resize_map(torch.as_tensor(result.maps[i]), image.height, image.width)


def top_classes(probabilities: torch.Tensor, k: int = 5) -> list[tuple[int, float]]:
    """The ``k`` most probable classes of one image's (K,) probabilities, as
    (index, probability in [0, 1]), best first."""
    probabilities = torch.as_tensor(probabilities).float()  # NumPy from cameras.keras
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return list(zip(indices.tolist(), values.tolist(), strict=True))

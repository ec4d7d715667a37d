"""A private, input-size-flexible copy of a user's Keras model, and its layers by dotted name.

Keras models often fix their input size (``keras.applications.ResNet50()`` takes only
224 x 224), but CAMERAS feeds the image at many sizes. As the authors' Keras port did,
the model is rebuilt with a flexible input (height and width ``None``) and the same
weights. The copy is ours, so the user's model object is never changed: the copy's
final softmax is switched off (the method needs pre-softmax scores), and the copy's
layers are instrumented (their ``call`` wrapped) to record their outputs.
"""

from __future__ import annotations

import contextlib
import difflib
import weakref
from collections.abc import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from ..models import ModelError

# Two probe sizes: a layer whose output grows between them is a spatial feature map
# (the same rule as the PyTorch backend; see cameras.core.capture).
_PROBE_SIZES = (64, 96)


class KerasModelError(ModelError):
    """The Keras model cannot be explained as it is; the message says why."""


def flexible_copy(model: keras.Model) -> keras.Model:
    """A copy of ``model`` (Functional or Sequential, nested models included) whose image
    input takes any height and width. Weights are not copied (see ``FlexibleNetwork``)."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise KerasModelError(
            f"model {model.name!r} is not built: give it a keras.Input or call it once"
        )
    if len(inputs) != 1:
        raise KerasModelError(f"model {model.name!r} has {len(inputs)} inputs; expected one image")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4:
        raise KerasModelError(
            f"model {model.name!r} takes {len(shape)}-D inputs {shape}; expected (B, H, W, C)"
        )

    refuse_channels_first(model, f"model {model.name!r}")

    def copy_layer(layer: keras.Layer) -> keras.Layer:
        if isinstance(layer, keras.Model):  # a backbone inside the model: flexible too
            return flexible_copy(layer)
        return layer.__class__.from_config(layer.get_config())

    flexible_input = keras.Input(shape=(None, None, shape[-1]), dtype=inputs[0].dtype)
    try:
        return keras.models.clone_model(
            model, input_tensors=flexible_input, clone_function=copy_layer
        )
    except ValueError:
        # A layer needs the size (Flatten then Dense): keep it; such a model runs at
        # its own size only, which single-scale methods can still use.
        return keras.models.clone_model(model)


def refuse_channels_first(model: keras.Model, name: str) -> None:
    """One line, starting with ``name`` (the file or the model), for a model with a
    channels_first layer (Keras' own copy fails deep in clone_model): the maps are read
    from (B, H, W, C) layer outputs."""
    layers = list(model.layers)
    while layers:
        layer = layers.pop(0)  # in order: the first such layer is named
        if isinstance(layer, keras.Model):
            layers[:0] = layer.layers
        elif getattr(layer, "data_format", None) == "channels_first":
            raise KerasModelError(
                f"{name}: layer {layer.name!r} is channels_first; cameras takes "
                "channels_last Keras models (B, H, W, C): rebuild it with "
                "data_format='channels_last'"
            )


def _is_softmax(activation: object) -> bool:
    return getattr(activation, "__name__", None) == "softmax"


def strip_final_softmax(model: keras.Model) -> bool:
    """Make ``model`` (our copy) output pre-softmax scores; True if a softmax was found.

    Handles what keras.applications and most classifiers end with: a layer with
    ``activation='softmax'`` (Dense, Conv2D, Activation), or a ``Softmax`` layer.
    """
    last = model.layers[-1]
    if isinstance(last, keras.Model):
        return strip_final_softmax(last)
    if isinstance(last, keras.layers.Softmax):
        last.call = lambda inputs, *args, **kwargs: inputs
        return True
    if _is_softmax(getattr(last, "activation", None)):
        last.activation = keras.activations.linear
        return True
    return False


def named_layers(model: keras.Model, prefix: str = "") -> dict[str, keras.Layer]:
    """Every layer by dotted name (``backbone.conv5_block3_out`` inside a nested model),
    in the model's order; input layers are left out."""
    found: dict[str, keras.Layer] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        name = prefix + layer.name
        found[name] = layer
        if isinstance(layer, keras.Model):
            found.update(named_layers(layer, name + "."))
    return found


@contextlib.contextmanager
def wrapped_calls(layers: dict[str, keras.Layer], wrap: Callable) -> Iterator[None]:
    """Replace each layer's ``call`` by ``wrap(name, original_call)`` for the body only."""
    wrapped = []
    try:
        for name, layer in layers.items():
            # Remember an instance-level call (our copy's disabled Softmax has one).
            wrapped.append((layer, layer.__dict__.get("call")))
            layer.call = wrap(name, layer.call)
    except BaseException:
        _unwrap(wrapped)
        raise
    try:
        yield
    finally:
        _unwrap(wrapped)


def _unwrap(wrapped: list[tuple[keras.Layer, Callable | None]]) -> None:
    for layer, own_call in wrapped:
        if own_call is None:
            del layer.call  # the instance attribute goes; the class's call is back
        else:
            layer.call = own_call


# One rebuilt copy per user model, shared by every method built on it (rebuilding
# ResNet50 takes seconds). Weak keys: the cache never keeps a model alive, and the
# copy refers to its model only weakly.
_NETWORKS: weakref.WeakKeyDictionary[keras.Model, FlexibleNetwork] = weakref.WeakKeyDictionary()


def network_for(model: keras.Model) -> FlexibleNetwork:
    """The shared ``FlexibleNetwork`` of ``model``, built on first use."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, not {type(model).__name__}")
    network = _NETWORKS.get(model)
    if network is None:
        network = _NETWORKS[model] = FlexibleNetwork(model)
    return network


class FlexibleNetwork:
    """The user's model rebuilt for any input size, with pre-softmax scores.

    ``sync_weights()`` copies the user's current weights into the copy: methods call it
    at the start of every explanation, so changing the user's model (fine-tuning,
    randomising weights for a sanity check) is seen as with a PyTorch model.
    """

    def __init__(self, model: keras.Model) -> None:
        if keras.config.image_data_format() != "channels_last":
            raise KerasModelError(
                "cameras.keras needs keras.config.image_data_format() == 'channels_last'"
            )
        self._model = weakref.ref(model)
        self.name = model.name
        self.copy = flexible_copy(model)
        source, target = model.weights, self.copy.weights
        if [tuple(w.shape) for w in source] != [tuple(w.shape) for w in target]:
            raise KerasModelError(
                f"model {model.name!r} could not be rebuilt with the same weights; "
                "is it a subclassed model? Functional and Sequential models are supported"
            )
        self._auto_layer: str | None = None
        self.sync_weights()
        self.softmax_removed = strip_final_softmax(self.copy)
        self.layers = named_layers(self.copy)
        self.channels = int(model.inputs[0].shape[-1])

    @property
    def model(self) -> keras.Model:
        """The user's model (alive as long as a method holds it)."""
        model = self._model()
        if model is None:
            raise RuntimeError("the Keras model of this network no longer exists")
        return model

    def sync_weights(self) -> None:
        for target, source in zip(self.copy.weights, self.model.weights, strict=True):
            target.assign(source)

    def resolve_layer(self, layer: str | keras.Layer | None) -> str:
        """The dotted name of the layer to explain: given by name, as a layer of the user's
        model, or None for the last layer whose 4-D output grows with the input."""
        if layer is None:
            return self.auto_layer_name()
        if isinstance(layer, keras.Layer):
            for name, own in named_layers(self.model).items():
                if own is layer:
                    return name
            raise ValueError("layer: the layer given is not part of the model")
        if isinstance(layer, str):
            if layer in self.layers:
                return layer
            close = difflib.get_close_matches(layer, list(self.layers), n=5, cutoff=0.4)
            hint = (
                f"; closest: {', '.join(close)}" if close else f"; it has {len(self.layers)} layers"
            )
            raise ValueError(f"layer {layer!r} is not a layer of the model{hint}")
        raise TypeError(
            f"layer must be a layer name, a keras layer or None, not {type(layer).__name__}"
        )

    def auto_layer_name(self) -> str:
        """The last layer, in execution order, whose 4-D output grows with the input.

        ResNet50 ``conv5_block3_out``, EfficientNetB0 ``top_activation``; a backbone
        model nested in the model comes out as the backbone itself when its output is
        that map. Layers that run more than once per forward pass are skipped.
        """
        if self._auto_layer is None:
            self._auto_layer = self._find_auto_layer()
        return self._auto_layer

    def _find_auto_layer(self) -> str:
        small, _, _ = self._probe(_PROBE_SIZES[0])
        large, counts, order = self._probe(_PROBE_SIZES[1])
        for name in reversed(order):
            grows = name in small and all(
                b > a for a, b in zip(small[name], large[name], strict=True)
            )
            if grows and counts.get(name) == 1:
                return name
        raise ValueError(
            "layer: could not find a spatial 4-D layer automatically; pass layer='<layer name>'"
        )

    def _probe(self, size: int):
        spatial: dict[str, tuple[int, int]] = {}
        counts: dict[str, int] = {}
        order: list[str] = []

        def wrap(name: str, call: Callable) -> Callable:
            def recording_call(*args, **kwargs):
                output = call(*args, **kwargs)
                counts[name] = counts.get(name, 0) + 1
                if tf.is_tensor(output) and output.shape.rank == 4:
                    spatial[name] = tuple(output.shape[1:3])
                    if name in order:
                        order.remove(name)
                    order.append(name)
                return output

            return recording_call

        zeros = np.zeros((1, size, size, self.channels), dtype=np.float32)
        with wrapped_calls(self.layers, wrap):
            try:
                self.copy(zeros, training=False)
            except Exception as error:  # noqa: BLE001 - any failure means the same thing
                raise KerasModelError(
                    f"model {self.name!r} does not run at other input sizes "
                    f"({type(error).__name__}: {str(error).strip().splitlines()[0][:160]}); "
                    "a layer such as Flatten or Reshape may fix the size"
                ) from None
        return spatial, counts, order

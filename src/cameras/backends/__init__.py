"""Backends: what the methods, the session and the applications need from one kind of model.

A backend is an object over one model (``TorchBackend`` for a ``torch.nn.Module``, token
families included; ``KerasBackend`` for a ``keras.Model``), chosen by ``backend_for``
from the model's type. It answers, in torch tensors and PyTorch's (B, C, H, W) layout:

- the saliency seam: find the layer (``resolve_layer``), open the per-call capture that
  gives each scale's scores, layer output and gradient (``capture``), turn the caller's
  input into a batch and results back into the caller's type (``input_batch`` /
  ``output``), the memory probe (``pass_cost``);
- the model's answers for the applications: ``scorer()``, the model as a differentiable
  torch function (B, C, H, W) -> (B, K) pre-softmax scores (probabilities, insertion,
  the PGD attack's input gradient), ``num_classes``, and the sanity test's block-wise
  weight randomisation (``randomisation_steps`` / ``randomised_models``).

It may import the core (capture, budget, fusion, classes) and nothing above it;
TensorFlow is imported only when a Keras model is used.
"""

from __future__ import annotations

from .torch import TorchBackend


def is_keras_model(model: object) -> bool:
    """Whether ``model`` is a Keras model, told from its type without importing Keras."""
    return any(cls.__module__.split(".")[0] == "keras" for cls in type(model).__mro__)


def backend_for(model: object):
    """The backend of ``model``: ``TorchBackend`` for a torch module, ``KerasBackend``
    for a Keras model; TypeError for anything else."""
    if is_keras_model(model):
        from .keras import KerasBackend

        return KerasBackend(model)
    return TorchBackend(model)


__all__ = ["TorchBackend", "backend_for", "is_keras_model"]

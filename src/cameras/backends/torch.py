"""The PyTorch backend: a ``torch.nn.Module`` (CNNs, and the token families of
``cameras.core.tokens`` through ``LayerCapture``), hooked in place and given back unchanged."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.budget import PassCost, probe_pass_cost, probe_sample
from ..core.capture import (
    LayerCapture,
    LayerSpec,
    check_batch,
    check_channels_first,
    eval_mode,
    model_device,
    model_dtype,
    resolve_layer,
    widened,
)
from ..core.targets import logits_of

RANDOMISATION_MODES = ("cascading", "independent")
_NORMALISATION = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class Step:
    """One randomisation step: a label and the dotted module (or layer) names it randomises."""

    label: str
    modules: tuple[str, ...]


class TorchBackend:
    """A ``torch.nn.Module`` classifier returning (B, K) scores (or ``.logits``)."""

    name = "torch"

    def __init__(self, model: object) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model

    # ---------------------------------------------------------------- the saliency seam

    def resolve_layer(self, layer: LayerSpec) -> tuple[str, nn.Module]:
        """(module name, module); None finds the last spatial layer (one probe)."""
        return resolve_layer(self.model, layer)

    def capture(self, layer: nn.Module, reshape_transform: Callable | None = None) -> LayerCapture:
        return LayerCapture(self.model, layer, reshape_transform)

    def input_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.device]:
        """A (B, C, H, W) batch on the model's device, float32 or wider (resizing runs in
        it; ``LayerCapture.run`` casts each scale to the model's dtype), and where results go."""
        x = check_batch(x)
        check_channels_first(x, self.model)
        return widened(x.to(model_device(self.model))), x.device

    def output(self, tensor: torch.Tensor, source: torch.device) -> torch.Tensor:
        return tensor.to(source)

    def plain_targets(self, targets):
        return targets

    def pass_cost(self, layer: nn.Module, x: torch.Tensor) -> PassCost | None:
        """The memory cost per input pixel, from one probe pass (``cameras.core.budget``)."""
        return probe_pass_cost(self.model, layer, probe_sample(x))

    # ---------------------------------------------------------------- the model's answers

    def scorer(self) -> nn.Module:
        """The model as a differentiable function (B, C, H, W) -> scores: itself."""
        return self.model

    def num_classes(self, size: int) -> int:
        """How many classes the model scores, from one no-grad pass of a size x size input."""
        with eval_mode(self.model), torch.no_grad():
            probe = torch.zeros(
                1, 3, size, size, device=model_device(self.model), dtype=model_dtype(self.model)
            )
            return int(logits_of(self.model(probe)).shape[1])

    def randomisation_steps(self, probe_size: int = 64) -> list[Step]:
        return randomisation_steps(self.model, probe_size)

    def randomised_models(
        self, steps: Sequence[Step], mode: str = "cascading", seed: int = 0
    ) -> Iterator[tuple[int, Step, nn.Module]]:
        return randomised_models(self.model, steps, mode, seed)


# ------------------------------------------------------------------ weight randomisation
# (the sanity test's model side; see ``cameras.apps.metrics.sanity`` for the test itself)


def _execution_order(model: nn.Module, names: list[str], probe_size: int) -> list[str]:
    """The names (of direct or nested modules) in the order their forward first ends,
    from one no-grad pass of a (1, 3, probe_size, probe_size) zero image."""
    modules = dict(model.named_modules())
    order: list[str] = []

    def hook_for(name: str):
        def hook(*_):
            if name not in order:
                order.append(name)

        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    try:
        with eval_mode(model), torch.no_grad():
            probe = torch.zeros(1, 3, probe_size, probe_size, dtype=model_dtype(model))
            model(probe.to(model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return order


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def randomisation_steps(model: nn.Module, probe_size: int = 64) -> list[Step]:
    """The model's blocks in randomisation order, from the logits down (see
    ``cameras.apps.metrics.sanity``)."""
    names: list[str] = []
    for name, child in model.named_children():
        if not _has_parameters(child):
            continue
        grandchildren = [(n, c) for n, c in child.named_children() if _has_parameters(c)]
        if (
            isinstance(child, _CONTAINERS)
            and len(grandchildren) > 1
            and all(isinstance(c, _CONTAINERS) for _, c in grandchildren)
        ):
            names.extend(f"{name}.{n}" for n, _ in grandchildren)
        else:
            names.append(name)
    ran = _execution_order(model, names, probe_size)
    # Modules that never ran in the probe (unused heads) come last, in definition order.
    ordered = ran + [n for n in names if n not in ran]
    modules = dict(model.named_modules())
    normalisation = [isinstance(modules[name], _NORMALISATION) for name in ordered]
    return grouped_steps(ordered, normalisation)


def grouped_steps(ordered: Sequence[str], normalisation: Sequence[bool]) -> list[Step]:
    """Steps from blocks in execution order: a normalisation block joins the one before
    it; the steps run from the logits down."""
    groups: list[list[str]] = []
    for name, is_normalisation in zip(ordered, normalisation, strict=True):
        if groups and is_normalisation:
            groups[-1].append(name)
        else:
            groups.append([name])
    return [Step("+".join(group), tuple(group)) for group in reversed(groups)]


def noise_like(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Normal noise with the tensor's own mean and standard deviation (float32)."""
    values = values.detach().float()
    std = float(values.std()) if values.numel() > 1 else 0.0
    noise = torch.randn(values.shape, generator=generator, dtype=torch.float32)
    return noise * std + float(values.mean())


@torch.no_grad()
def randomise_(model: nn.Module, module_names: Sequence[str], generator: torch.Generator) -> None:
    """In place: every parameter of the named modules becomes normal noise with the
    tensor's own mean and standard deviation (see ``cameras.apps.metrics.sanity``)."""
    modules = dict(model.named_modules())
    for name in module_names:
        if name not in modules:
            raise ValueError(f"randomise: {name!r} is not a module of the model")
        for parameter in modules[name].parameters():
            parameter.copy_(noise_like(parameter, generator).to(parameter))


def check_mode(mode: str) -> None:
    if mode not in RANDOMISATION_MODES:
        raise ValueError(f"mode must be one of {', '.join(RANDOMISATION_MODES)}, got {mode!r}")


def randomised_models(
    model: nn.Module,
    steps: Sequence[Step],
    mode: str = "cascading",
    seed: int = 0,
) -> Iterator[tuple[int, Step, nn.Module]]:
    """Yield ``(k, step, randomised copy)`` for k = 1 .. len(steps).

    cascading: one deep copy randomised further at each step (the same object is
    yielded each time, changed); independent: a fresh deep copy per step. The input
    model is never modified.
    """
    check_mode(mode)
    generator = torch.Generator().manual_seed(seed)
    cascade = copy.deepcopy(model) if mode == "cascading" else None
    for k, step in enumerate(steps, start=1):
        target = cascade if cascade is not None else copy.deepcopy(model)
        randomise_(target, step.modules, generator)
        yield k, step, target

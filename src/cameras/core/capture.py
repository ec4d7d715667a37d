"""Record one layer's output and the gradient of a class score with respect to it.

Everything here touches the user's model only inside a ``with`` block: hooks are
registered on entry and removed on exit (also when the body raises), and every
module's ``training`` flag is restored. Parameters are never modified, and their
``requires_grad`` flags are never changed.

Speed and memory come from one trick (see ``LayerCapture``): the forward pass runs
under ``torch.no_grad()`` up to the layer, so no autograd graph is kept for the
expensive part of the network; the hook then switches gradients on and hands the
rest of the network a fresh leaf tensor, so the backward pass stops at the layer.

Token models (ViT, DeiT, EVA, Swin; see ``tokens.py``) are run at any input size for
the duration of the block, and their tokens are laid on each scale's patch grid.

Several threads may explain with one model at once: each capture records only the
forward passes of the thread that opened it, and the model-wide changes (eval mode, any
input size) are made by the first block to open and undone by the last to close
(``shared_model_state``), so every thread gets the single-threaded result.

The caller's autograd mode does not matter: the block runs with gradients on and outside
inference mode (``autograd_enabled``), and puts the caller's modes back on exit. A
float16 or bfloat16 model runs in its own dtype (each input is cast to it) and the
activations and gradients come back as float32, so that everything downstream (fusion,
normalisation) accumulates in float32.
"""

from __future__ import annotations

import contextlib
import difflib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .families import native_size, task_layer
from .targets import Class, Target, class_scores_or_none
from .tokens import TokenFamily, token_family

LayerSpec = str | nn.Module | None

# A probe input's two sizes: a layer whose output grows between them is a spatial
# feature map; adaptive pools (fixed output size) and the classifier do not grow.
_PROBE_SIZES = (64, 96)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-less model)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


# Dtypes whose results are widened to float32 before they are accumulated.
REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter or buffer (float32 if none):
    the dtype its inputs are cast to."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def model_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` on the model's device and in its dtype, usable by autograd.

    A tensor made under ``torch.inference_mode()`` cannot take part in a backward pass,
    so one that would reach the model unchanged is cloned (call this outside inference
    mode, e.g. inside ``autograd_enabled``).
    """
    x = x.to(device=model_device(model), dtype=model_dtype(model))
    return x.clone() if x.is_inference() else x


def widened(tensor: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 -> float32; other dtypes unchanged."""
    return tensor.float() if tensor.dtype in REDUCED_PRECISION else tensor


@contextlib.contextmanager
def autograd_enabled() -> Iterator[None]:
    """Run the body with gradients on and inference mode off, whatever the caller's
    modes (``torch.no_grad()``, ``torch.inference_mode()``); both are put back on exit,
    also when the body raises."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextlib.contextmanager
def dtype_errors(model: nn.Module) -> Iterator[None]:
    """Turn the error of an operation that a float16 / bfloat16 model cannot run on its
    device ("... not implemented for 'Half'") into a TypeError that names the dtype."""
    try:
        yield
    except RuntimeError as error:
        dtype = model_dtype(model)
        spelled = {torch.float16: "Half", torch.bfloat16: "BFloat16"}.get(dtype)
        if spelled is None or spelled not in str(error):
            raise
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise TypeError(
            f"the model's dtype {dtype} is not supported here on {model_device(model)} "
            f"({reason}); convert a copy with model.float() or use another device"
        ) from error


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the body with every module in eval mode, then put back each module's own flag.

    Eval mode matters for exactness (dropout off) and for safety: in training mode
    BatchNorm would overwrite the user's running statistics on every scale.
    """
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, flag in flags:
            module.training = flag


class _SharedModelState:
    """The model-wide changes of the captures open on one model, counted: the first
    capture to open makes them and the last to close undoes them. Without the count, a
    thread that finished first would put a training model back in training mode (or a
    token model back to its fixed size) under a thread still running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, tuple[int, contextlib.ExitStack]] = {}  # id(model) -> state

    @contextlib.contextmanager
    def __call__(self, model: nn.Module, family: TokenFamily | None) -> Iterator[None]:
        key = id(model)  # the model is referenced by its captures while the key is used
        with self._lock:
            count, stack = self._open.get(key, (0, None))
            if stack is None:
                stack = contextlib.ExitStack()
                with contextlib.ExitStack() as opening:
                    opening.enter_context(eval_mode(model))
                    opening.enter_context(native_size(model))
                    if family is not None:
                        opening.enter_context(family.accept_any_size())
                    stack = opening.pop_all()
            self._open[key] = (count + 1, stack)
        try:
            yield
        finally:
            with self._lock:
                count, stack = self._open.pop(key)
                if count > 1:
                    self._open[key] = (count - 1, stack)
                else:
                    stack.close()


shared_model_state = _SharedModelState()


def resolve_layer(model: nn.Module, layer: LayerSpec) -> tuple[str, nn.Module]:
    """Find the layer to explain: a dotted module name, the module itself, or None (automatic).

    Returns (name, module). An unknown name raises ValueError listing the closest names.
    """
    modules = dict(model.named_modules())
    if layer is None:
        name = auto_layer_name(model)
        return name, modules[name]
    if isinstance(layer, nn.Module):
        for name, module in modules.items():
            if module is layer:
                return name, module
        raise ValueError("layer: the module given is not part of the model")
    if isinstance(layer, str):
        if layer in modules and layer != "":
            return layer, modules[layer]
        names = [n for n in modules if n]
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.4)
        hint = f"; closest: {', '.join(close)}" if close else f"; it has {len(names)} modules"
        raise ValueError(f"layer {layer!r} is not a module of the model{hint}")
    raise TypeError(f"layer must be a module name, a module or None, not {type(layer).__name__}")


def auto_layer_name(model: nn.Module) -> str:
    """The layer explained when none is given.

    Token models (see ``tokens.token_family``): a layer whose patch tokens receive a
    gradient from the class score: for a class-token ViT the last block's pre-attention
    norm, for an average-pooled ViT the last block, for Swin the final norm.

    CNNs: the last module, in execution order, whose 4-D output grows with the input size.
    This is the last spatial feature map before global pooling: ResNet ``layer4``,
    DenseNet ``features``, VGG ``features`` (its adaptive pool is skipped because its
    size is fixed), timm EfficientNet ``bn2``. Modules that run more than once per
    forward pass (a shared ReLU) are skipped: their output is ambiguous.
    """
    family = token_family(model)
    if family is not None:
        return family.auto_layer()
    known = task_layer(model)  # a segmentation or detection family (core/families.py)
    if known is not None:
        return known
    device = model_device(model)
    small, _, _ = _probe_spatial_outputs(model, _PROBE_SIZES[0], device)
    large, counts, order = _probe_spatial_outputs(model, _PROBE_SIZES[1], device)
    for name in reversed(order):
        grows = name in small and all(b > a for a, b in zip(small[name], large[name], strict=True))
        if grows and counts.get(name) == 1:
            return name
    raise ValueError(
        "layer: could not find a spatial 4-D layer automatically; pass layer='<module name>'"
    )


def _probe_spatial_outputs(model: nn.Module, size: int, device: torch.device):
    """One no-grad forward pass of a (1, 3, size, size) zero image, recording for every
    module its 4-D output's spatial size, how often it ran, and the order they finished."""
    spatial: dict[str, tuple[int, ...]] = {}
    counts: dict[str, int] = {}
    order: list[str] = []

    me = threading.get_ident()

    def record(name: str) -> Callable:
        def hook(_module, _inputs, output):
            if threading.get_ident() != me:
                return  # another thread's forward pass through the same model
            counts[name] = counts.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                spatial[name] = tuple(output.shape[2:])
                if name in order:
                    order.remove(name)
                order.append(name)

        return hook

    named = [(name, module) for name, module in model.named_modules() if name]
    handles = [module.register_forward_hook(record(name)) for name, module in named]
    try:
        with shared_model_state(model, None), torch.no_grad(), dtype_errors(model):
            model(torch.zeros(1, 3, size, size, device=device, dtype=model_dtype(model)))
    finally:
        for handle in handles:
            handle.remove()
    return spatial, counts, order


def check_channels_first(x: torch.Tensor, model: nn.Module) -> None:
    """A ValueError that says so for a (B, H, W, C) batch (a Keras / NumPy habit), told
    by the model's first convolution: its input channels are x's last size, not its
    second. PyTorch models take (B, C, H, W); the convolution's own error would not say."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or x.dim() != 4:
        return
    if x.shape[1] != first.in_channels and x.shape[-1] == first.in_channels:
        raise ValueError(
            f"x has shape {tuple(x.shape)}, channels last (B, H, W, C); a PyTorch model "
            "takes (B, C, H, W): pass x.permute(0, 3, 1, 2)"
        )


@dataclass
class ScaleCapture:
    """What one forward/backward pass at one input size gives (float32 for a float16 or
    bfloat16 model)."""

    logits: torch.Tensor | None  # (B, K) class scores, detached; None for other outputs
    activations: torch.Tensor  # (B, C, h, w), detached
    gradients: torch.Tensor  # (B, C, h, w): d score / d activations
    # The fraction of the input's (height, width) the grid spans, when that is not exactly
    # the input: a token grid padded to whole patches (> 1) or one that dropped a remainder
    # (< 1). See fusion.interpolation_matrix.
    covered: tuple[float, float] | None = None
    score: torch.Tensor | None = None  # (B,) the target's score, detached (float32)
    present: torch.Tensor | None = None  # (B,) bool: the target is there at this size


class LayerCapture:
    """Hooks one layer for the duration of a ``with`` block.

    Inside the block, ``run(x, target)`` does one forward pass and one backward pass
    that stops at the layer, for a target of ``cameras.core.targets`` (the score to
    back-propagate, and whether the target is present at this size).

    Token models (``tokens.token_family``) accept any input size inside the block, and
    their tokens come out as (B, C, h, w) grids unless ``reshape_transform`` is given.

    The block turns gradients on and inference mode off (``autograd_enabled``) and puts
    the caller's modes back on exit; ``run`` casts its input to the model's dtype.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.layer_name, self.layer = resolve_layer(model, layer)
        self.reshape_transform = reshape_transform
        self.family: TokenFamily | None = token_family(model)
        self._leaves: list[torch.Tensor] = []
        self._sizes_run: list[tuple[int, int]] = []
        self._stack: contextlib.ExitStack | None = None
        self._thread: int | None = None  # the thread whose forward passes are recorded
        self._channel_mask: torch.Tensor | None = None

    def __enter__(self) -> LayerCapture:
        self._sizes_run = []
        self._thread = threading.get_ident()
        # Entered together: if one step raises, those already entered are undone at once.
        with contextlib.ExitStack() as opening:
            opening.enter_context(autograd_enabled())
            opening.enter_context(shared_model_state(self.model, self.family))
            opening.callback(self.layer.register_forward_hook(self._hook).remove)
            self._stack = opening.pop_all()
        return self

    def __exit__(self, *exc_info) -> None:
        self._leaves.clear()
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def _hook(self, _module: nn.Module, _inputs, output):
        if threading.get_ident() != self._thread:
            return None  # another thread's pass (its own capture records it)
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"layer {self.layer_name!r} returned {type(output).__name__}; pick a layer "
                "whose output is a tensor"
            )
        if self._channel_mask is not None:  # a scores-only pass (``scores``): no graph
            return output * self._mask_shape(self._channel_mask, output)
        # From here on the network builds a graph, rooted at a leaf that holds the
        # layer's output: the backward pass then ends here. The no_grad() block that
        # ``run`` opened restores the grad mode when the forward pass returns.
        torch.set_grad_enabled(True)
        leaf = output.detach().requires_grad_(True)
        self._leaves.append(leaf)
        # A copy for the rest of the network, so that an in-place op downstream (a
        # ReLU(inplace=True)) changes neither the recorded activations nor the leaf.
        return leaf.clone()

    def run(
        self,
        x: torch.Tensor,
        target: Target | torch.Tensor,
        input_size: tuple[int, int] | None = None,
    ) -> tuple[ScaleCapture, Target]:
        """Forward ``x`` (B, 3, h, w), back-propagate the target's score to the layer.

        target: a bound ``cameras.core.targets`` target (``as_target``), or a (B,) tensor of
        class indices. input_size: the (height, width) of the caller's input, in whose
        coordinates boxes and masks are given (default: ``x``'s own). ``x`` is cast to the
        model's dtype. Returns the capture and the target (a class target that took the
        top-1 keeps it for the next scales).
        """
        if self._stack is None:
            raise RuntimeError("LayerCapture.run must be called inside its with-block")
        if isinstance(target, torch.Tensor):
            target = Class(target).bind(x.shape[0], None)
        size = (int(x.shape[2]), int(x.shape[3]))
        with dtype_errors(self.model):
            return self._run(model_input(x, self.model), target, input_size or size), target

    def _run(self, x: torch.Tensor, target: Target, input_size: tuple[int, int]) -> ScaleCapture:
        self._leaves.clear()
        with torch.no_grad():
            output = self._forward(x)
        leaves, self._leaves = self._leaves, []
        if not leaves:
            raise RuntimeError(
                f"layer {self.layer_name!r} did not run in the forward pass (or ran in "
                "another thread, as in nn.DataParallel); pick a layer the model runs itself"
            )
        if len(leaves) > 1:  # counted in this thread only: never another thread's call
            raise RuntimeError(
                f"layer {self.layer_name!r} ran {len(leaves)} times in one forward pass; "
                "pick a layer that runs exactly once"
            )
        leaf = leaves[0]
        score, present = target(output, (x.shape[2], x.shape[3]), input_size)
        gradients = self._gradients(score, leaf)
        activations, gradients = widened(leaf.detach()), widened(gradients)
        covered = None
        if self.reshape_transform is not None:
            activations = self.reshape_transform(activations)
            gradients = self.reshape_transform(gradients)
        elif self.family is not None:
            size = (x.shape[2], x.shape[3])
            activations, covered = self.family.to_grid(activations, size, self.layer_name)
            gradients, _ = self.family.to_grid(gradients, size, self.layer_name)
        if activations.dim() != 4:
            raise ValueError(
                f"layer {self.layer_name!r} gives a {tuple(activations.shape)} output; a "
                "saliency map needs (B, C, h, w): pick a convolutional layer or pass "
                "reshape_transform"
            )
        logits = class_scores_or_none(output)
        if logits is not None:
            logits = widened(logits.detach())
        return ScaleCapture(
            logits,
            activations,
            gradients.detach(),
            covered,
            widened(score.detach()),
            present,
        )

    def _gradients(self, score: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
        """d sum(score) / d leaf. A score with no graph (a box that no detection matches at
        this size) gives zeros; a graph that skips the layer is an error."""
        not_on_path = RuntimeError(
            f"the scores explained do not depend on layer {self.layer_name!r}; pick a layer "
            "that feeds the model's output"
        )
        if not score.requires_grad:
            if score.grad_fn is None and not bool(score.detach().ne(0).any()):
                return torch.zeros_like(leaf)
            raise not_on_path
        try:
            (gradients,) = torch.autograd.grad(score.sum(), leaf)
        except RuntimeError as error:  # the score comes from a path that skips the layer
            if "not have been used in the graph" not in str(error):
                raise
            raise not_on_path from None
        return gradients

    def _forward(self, x: torch.Tensor) -> object:
        """The model's output for ``x``; a model that cannot run at this input size (a
        fixed-size model we cannot adapt, say) gives a ValueError naming the sizes it took."""
        size = (int(x.shape[2]), int(x.shape[3]))
        try:
            output = self.model(x)
        except (RuntimeError, AssertionError, ValueError) as error:
            if not self._sizes_run or size in self._sizes_run:
                raise
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            ran = ", ".join(f"{h}x{w}" for h, w in self._sizes_run)
            raise ValueError(
                f"the model cannot run at input size {size[0]}x{size[1]} ({reason}); it ran at "
                f"{ran}: pass scales= that it accepts"
            ) from error
        if size not in self._sizes_run:
            self._sizes_run.append(size)
        return output

    def target_scores(
        self,
        x: torch.Tensor,
        target: Target,
        input_size: tuple[int, int] | None = None,
        channel_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B,) scores of ``target`` for ``x``: one forward pass, no gradient (float32).

        channel_mask: (B, C) factors for the layer's channels on the way through (0 removes
        a channel: Ablation-CAM); None leaves the layer's output as it is.
        """
        if self._stack is None:
            raise RuntimeError("LayerCapture.target_scores must be called inside its with-block")
        x = model_input(x, self.model)
        ones = torch.ones(x.shape[0], 1, device=x.device, dtype=x.dtype)
        self._channel_mask = ones if channel_mask is None else channel_mask.to(x.device, x.dtype)
        size = (int(x.shape[2]), int(x.shape[3]))
        try:
            with torch.no_grad(), dtype_errors(self.model):
                score, _ = target(self._forward(x), size, input_size or size)
                return widened(score.detach())
        finally:
            self._channel_mask = None

    def _mask_shape(self, mask: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        # The channel axis of the layer's own output: 1 for a CNN's (B, C, h, w), last for
        # tokens (B, N, C) and channel-last stages (B, h, w, C).
        if output.dim() == 4 and not (self.family is not None and self.family.channels_last):
            return mask[:, :, None, None]
        return mask.reshape(mask.shape[0], *[1] * (output.dim() - 2), mask.shape[1])


def check_batch(x: torch.Tensor) -> torch.Tensor:
    """A (B, C, H, W) float batch from a batch or one (C, H, W) image; clear errors otherwise
    (a ValueError for NaN or infinite values)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, not {type(x).__name__}")
    if x.dim() == 3:
        x = x[None]
    if x.dim() == 4 and x.shape[0] == 0:
        raise ValueError(f"x is an empty batch {tuple(x.shape)}; pass at least one image")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor (preprocessed image), not {x.dtype}")
    check_finite(x)
    return x


def check_finite(x: torch.Tensor, argument: str = "x") -> None:
    """ValueError, saying how many, when ``x`` holds NaN or infinite values: the model
    would give NaN scores, which no class or map can be read from."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = x[~finite]
        nan = int(bad.isnan().sum())
        raise ValueError(
            f"{argument} has {bad.numel()} non-finite values of {x.numel()} ({nan} NaN, "
            f"{bad.numel() - nan} infinite); pass a preprocessed image with finite pixels"
        )

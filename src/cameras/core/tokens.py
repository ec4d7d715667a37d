"""Token models (ViT, DeiT, EVA, Swin): tokens laid on their patch grid, and any input size.

Two jobs, both used by ``capture.LayerCapture`` for the duration of one call:

1. **Layout.** A transformer layer gives tokens (B, N, C), or a channel-last stage output
   (B, h, w, C) for Swin. ``TokenFamily.to_grid`` turns either into the (B, C, h, w) grid a
   saliency method needs: prefix tokens (class, distillation, registers) are dropped, the
   remaining N - prefix tokens are laid row-major on the grid that this input's size and
   the layer's stride give, and channel-last outputs are permuted. It also returns the
   part of the input the grid covers: token (i, j) covers pixels [i*p, (i+1)*p) x
   [j*p, (j+1)*p) of the input, so a grid of h x w tokens covers h*p x w*p pixels. That is
   more than the input when the model pads to whole patches and less when it drops the
   remainder; ``fusion.interpolation_matrix`` maps the grid onto the input's pixels from it.
2. **Any input size.** Models built for one input size are made to accept every scale
   (``TokenFamily.accept_any_size``): timm's dynamic image size and its own padding to whole
   patches, Hugging Face's ``interpolate_pos_encoding``, an equivalent for torchvision's
   ViT. Every attribute set is put back when the context closes, also after an exception.

The families are recognised by class (timm, torchvision, Hugging Face); nothing here
imports timm or transformers unless the model came from them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_MISSING = object()


@contextlib.contextmanager
def _attributes_set(changes: list[tuple[object, str, object]]) -> Iterator[None]:
    """Set ``obj.name = value`` for each change, and put back the old value (or remove an
    attribute that did not exist on the instance) on exit, in reverse order."""
    saved: list[tuple[object, str, object]] = []
    try:
        for obj, name, value in changes:
            saved.append((obj, name, obj.__dict__.get(name, _MISSING)))
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, old in reversed(saved):
            if old is _MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(obj, name)
            else:
                setattr(obj, name, old)


class TokenFamily:
    """What one family of token models needs: its strides, prefix tokens, automatic layer,
    and how to make it accept any input size."""

    name = "token model"
    #: 4-D outputs of this family's stages are (B, h, w, C).
    channels_last = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def strides(self) -> list[int]:
        """Pixels per grid cell, for each layer depth the family has (ViT: one patch size)."""
        raise NotImplementedError

    def prefix_tokens(self) -> int:
        """Tokens before the patch tokens in a (B, N, C) output (class, distillation, registers)."""
        return 0

    def auto_layer(self) -> str:
        """The module name whose patch tokens receive a gradient from the class score."""
        raise NotImplementedError

    def accept_any_size(self) -> contextlib.AbstractContextManager:
        """A context in which the model runs at any input size."""
        return contextlib.nullcontext()

    def native_size(self) -> tuple[int, int] | None:
        """The input size the model was built for, if it says."""
        return None

    def to_grid(
        self, output: torch.Tensor, input_size: tuple[int, int], layer_name: str
    ) -> tuple[torch.Tensor, tuple[float, float] | None]:
        """Tokens (B, N, C), (B, h, w, C) or (B, C, h, w) -> ((B, C, h, w) grid, covered).

        covered: the grid's extent as a fraction of the input's height and width (h*p / H,
        w*p / W); None when it is the input exactly.
        """
        height, width = input_size
        if output.dim() == 3:
            tokens = output.shape[1] - self.prefix_tokens()
            for stride in self.strides():
                for rows, cols in _grid_candidates(height, width, stride):
                    if rows * cols == tokens:
                        grid = output[:, self.prefix_tokens() :]
                        grid = grid.reshape(output.shape[0], rows, cols, output.shape[2])
                        return grid.permute(0, 3, 1, 2), _covered(rows, cols, stride, input_size)
            raise ValueError(
                f"layer {layer_name!r} gives {output.shape[1]} tokens for a {height}x{width} "
                f"input; {self.name} with {self.prefix_tokens()} prefix tokens and stride "
                f"{self.strides()} does not lay them on a grid: pass reshape_transform"
            )
        if output.dim() == 4:
            # Which two axes are the grid: (h, w) first for a channel-last stage, last for
            # NCHW (a patch-embedding convolution, torchvision Swin's final permute).
            orders = ((1, 2), (2, 3)) if self.channels_last else ((2, 3),)
            for first, second in orders:
                rows, cols = output.shape[first], output.shape[second]
                for stride in self.strides():
                    if (rows, cols) in _grid_candidates(height, width, stride):
                        grid = output.permute(0, 3, 1, 2) if first == 1 else output
                        return grid, _covered(rows, cols, stride, input_size)
        raise ValueError(
            f"layer {layer_name!r} gives a {tuple(output.shape)} output that is not a patch "
            f"grid of the {height}x{width} input; pick a transformer block or pass "
            "reshape_transform"
        )


def _grid_candidates(height: int, width: int, stride: int) -> list[tuple[int, int]]:
    """Grids a stride-``stride`` model can give: the remainder dropped or padded, per side."""
    rows = sorted({height // stride, math.ceil(height / stride)})
    cols = sorted({width // stride, math.ceil(width / stride)})
    return [(r, c) for r in rows for c in cols if r > 0 and c > 0]


def _covered(
    rows: int, cols: int, stride: int, input_size: tuple[int, int]
) -> tuple[float, float] | None:
    height, width = input_size
    if rows * stride == height and cols * stride == width:
        return None
    return rows * stride / height, cols * stride / width


def _last_index(container: nn.Module) -> int:
    return len(container) - 1  # type: ignore[arg-type]


class TimmViT(TokenFamily):
    """timm VisionTransformer and its subclasses (DeiT distilled, registers) and EVA."""

    name = "timm ViT"

    def strides(self):
        return [int(self.model.patch_embed.patch_size[0])]

    def prefix_tokens(self):
        return int(self.model.num_prefix_tokens)

    def auto_layer(self):
        last = f"blocks.{_last_index(self.model.blocks)}"
        # Pooled from prefix tokens only (class token; DeiT's class + distillation tokens):
        # after the last block only those reach the head, so the patch tokens' gradient
        # exists at the block's input, i.e. its pre-attention norm. Average / attention
        # pooling reads the patch tokens of the final block's output directly.
        if _pools_prefix_only(self.model):
            return f"{last}.norm1"
        return last

    def native_size(self):
        size = getattr(self.model.patch_embed, "img_size", None)
        return tuple(size) if size is not None else None

    def accept_any_size(self):
        from timm.layers import Format

        embed = self.model.patch_embed
        changes: list[tuple[object, str, object]] = [
            # timm's own dynamic image size: position embeddings resampled to each grid,
            # patches kept channel-last until then.
            (self.model, "dynamic_img_size", True),
            (embed, "strict_img_size", False),
            (embed, "flatten", False),
            (embed, "output_fmt", Format.NHWC),
            # timm pads the input to whole patches (right and bottom) when asked; without
            # it a size that is not a multiple of the patch is an error.
            (embed, "dynamic_img_pad", True),
        ]
        rope = getattr(self.model, "rope", None)
        if rope is not None and getattr(rope, "_use_cached_embed", False):
            # EVA's rotary embeddings: built per grid from their frequency bands (what a
            # model created with dynamic_img_size=True does) instead of the cached native grid.
            changes.append((rope, "_use_cached_embed", False))
        return _attributes_set(changes)


def _pools_prefix_only(model: nn.Module) -> bool:
    if type(model).__name__ == "VisionTransformerDistilled":
        return True
    return getattr(model, "global_pool", "token") == "token"


class TimmSwin(TokenFamily):
    """timm SwinTransformer: channel-last stages, each halving the grid."""

    name = "timm Swin"
    channels_last = True

    def strides(self):
        patch = int(self.model.patch_embed.patch_size[0])
        return [patch * 2**stage for stage in range(len(self.model.layers))]

    def auto_layer(self):
        # The last stage after its norm: the last spatial output before average pooling
        # (like EfficientNet's bn2 for CNNs).
        return "norm"

    def native_size(self):
        size = getattr(self.model.patch_embed, "img_size", None)
        return tuple(size) if size is not None else None

    def accept_any_size(self):
        changes: list[tuple[object, str, object]] = [
            (self.model.patch_embed, "strict_img_size", False),
            (self.model.patch_embed, "dynamic_img_pad", True),
        ]
        # Windows pad themselves; the shifted-window mask is then computed per input
        # instead of the buffer made for the native size (timm's strict_img_size=False).
        for module in self.model.modules():
            if hasattr(module, "dynamic_mask"):
                changes.append((module, "dynamic_mask", True))
        return _attributes_set(changes)


class TorchvisionViT(TokenFamily):
    """torchvision VisionTransformer (vit_b_16 and friends)."""

    name = "torchvision ViT"

    def strides(self):
        return [int(self.model.patch_size)]

    def prefix_tokens(self):
        return 1  # the class token

    def auto_layer(self):
        layers = self.model.encoder.layers
        last = list(dict(layers.named_children()))[-1]
        return f"encoder.layers.{last}.ln_1"

    def native_size(self):
        return (int(self.model.image_size),) * 2

    def accept_any_size(self):
        model = self.model
        encoder = model.encoder
        current = {}  # the grid of the forward pass in progress

        def process_input(x: torch.Tensor) -> torch.Tensor:
            # torchvision's own patching without its fixed-size check; like the model, the
            # strided convolution drops a remainder that is not a whole patch.
            grid = model.conv_proj(x)
            current["grid"] = tuple(grid.shape[2:])
            return grid.flatten(2).transpose(1, 2)

        def encoder_forward(tokens: torch.Tensor) -> torch.Tensor:
            native = model.image_size // model.patch_size
            position = _resize_position_embedding(encoder.pos_embedding, 1, current["grid"], native)
            return encoder.ln(encoder.layers(encoder.dropout(tokens + position)))

        # Instance attributes shadow the class's methods while the context is open.
        return _attributes_set(
            [(model, "_process_input", process_input), (encoder, "forward", encoder_forward)]
        )


def _resize_position_embedding(
    embedding: torch.Tensor, prefix: int, grid: tuple[int, int], native: int
) -> torch.Tensor:
    """(1, prefix + native^2, C) position embedding -> (1, prefix + h*w, C) for grid (h, w).

    Bicubic with align_corners=True, as torchvision's own ``interpolate_embeddings`` does
    when it adapts a checkpoint to another (square) size.
    """
    if tuple(grid) == (native, native):
        return embedding
    head, body = embedding[:, :prefix], embedding[:, prefix:]
    channels = body.shape[2]
    body = body.reshape(1, native, native, channels).permute(0, 3, 1, 2)
    body = F.interpolate(body, size=grid, mode="bicubic", align_corners=True)
    return torch.cat([head, body.flatten(2).transpose(1, 2)], 1)


class TorchvisionSwin(TokenFamily):
    """torchvision SwinTransformer (swin_t, swin_v2_t, ...): pads windows itself."""

    name = "torchvision Swin"
    channels_last = True

    def strides(self):
        first = self.model.features[0][0]
        patch = int(first.stride[0])
        stages = sum(1 for block in self.model.features if not isinstance(block, nn.Sequential))
        return [patch * 2**stage for stage in range(stages + 1)]

    def auto_layer(self):
        return "norm"


class HuggingFaceViT(TokenFamily):
    """Hugging Face ViT-style models (``ViTForImageClassification``, DeiT, ...)."""

    name = "Hugging Face ViT"

    def strides(self):
        patch = self.model.config.patch_size
        return [int(patch[0] if isinstance(patch, list | tuple) else patch)]

    def prefix_tokens(self):
        embeddings = self._embeddings()
        return 1 + int(getattr(embeddings, "distillation_token", None) is not None)

    def _embeddings(self) -> nn.Module:
        base = getattr(self.model, self.model.base_model_prefix, self.model)
        return base.embeddings

    def auto_layer(self):
        # The last block's pre-attention norm (``vit.encoder.layer.N`` in transformers 4,
        # ``vit.layers.N`` in 5): only the class token reaches the classifier after it.
        return _pre_attention_norms(self.model)[-1]

    def native_size(self):
        size = self.model.config.image_size
        return tuple(size) if isinstance(size, list | tuple) else (int(size), int(size))

    @contextlib.contextmanager
    def accept_any_size(self):
        def interpolate(_module, args, kwargs):
            # Hugging Face's own switch: position embeddings interpolated to the input.
            return args, {**kwargs, "interpolate_pos_encoding": True}

        handle = self.model.register_forward_pre_hook(interpolate, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


def token_family(model: nn.Module) -> TokenFamily | None:
    """The token family of ``model``, or None for a CNN (or anything unrecognised)."""
    for cls in type(model).__mro__:
        module, name = cls.__module__, cls.__name__
        if module.startswith("timm.") and name in ("VisionTransformer", "Eva"):
            return TimmViT(model)
        if module.startswith("timm.") and name == "SwinTransformer":
            return TimmSwin(model)
        if module.startswith("torchvision.") and name == "VisionTransformer":
            return TorchvisionViT(model)
        if module.startswith("torchvision.") and name == "SwinTransformer":
            return TorchvisionSwin(model)
        if module.startswith("transformers.") and hasattr(model, "base_model_prefix"):
            config = getattr(model, "config", None)
            if getattr(config, "patch_size", None) is not None and _has_vit_encoder(model):
                return HuggingFaceViT(model)
    return None


def _has_vit_encoder(model: nn.Module) -> bool:
    base = getattr(model, model.base_model_prefix, model)
    has_patches = hasattr(getattr(base, "embeddings", None), "patch_embeddings")
    return has_patches and bool(_pre_attention_norms(model))


def _pre_attention_norms(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name.endswith(".layernorm_before")]


def any_input_size(model: nn.Module) -> contextlib.AbstractContextManager:
    """A context in which ``model`` runs at any input size (a no-op for CNNs); the model's
    attributes are put back on exit, also after an exception."""
    family = token_family(model)
    return family.accept_any_size() if family is not None else contextlib.nullcontext()

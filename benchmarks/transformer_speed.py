"""CAMERAS on a vision transformer against its no-grad forward floor, side by side.

    .venv/bin/python benchmarks/transformer_speed.py [--device cpu|cuda] [--rounds 2]

ViT-S/16 from timm (random weights: speed does not depend on them), one 224 x 224 input,
the 8 default scales 224..924 (14 x 14 up to 58 x 58 patches). Two variants, each in its
own fresh process so that peak memory is its own:
  floor    one plain torch.no_grad() forward pass per scale (the resize included), the
           model made to accept each size the same way CAMERAS does: any exact CAMERAS
           must run at least this;
  cameras  this library: cameras.CAMERAS(model)(x), automatic layer (the last block's
           pre-attention norm): forward without a graph up to it, forward and backward
           through the last block and the head, fusion at 224 x 224.
Rounds alternate between the variants so that machine noise hits both alike; each
variant's time is its best round. Prints the ratio cameras / floor (target <= 1.3).
"""

from __future__ import annotations

import timm
import torch
from rounds import arguments, best_of_rounds, device_name, measure, print_variants

from cameras.core.tokens import any_input_size
from cameras.methods.cameras import default_scales, resize_to_scale

SIZE = 224
SCALES = default_scales(SIZE)


def _model_and_input(device: str):
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False).eval().to(device)
    return model, torch.randn(1, 3, SIZE, SIZE, device=device)


def floor(model, x):
    with any_input_size(model), torch.no_grad():
        for scale in SCALES:
            model(resize_to_scale(x, scale))


def child(variant: str, device: str, repeats: int) -> None:
    import cameras

    model, x = _model_and_input(device)
    if variant == "cameras":
        method = cameras.CAMERAS(model)

        def job():
            return method(x)
    else:

        def job():
            return floor(model, x)

    measure(job, device, repeats)


def main() -> None:
    args = arguments(__doc__.splitlines()[0], rounds=2)
    if args.child:
        child(args.child, args.device, args.repeats)
        return
    variants = ["floor", "cameras"]
    best = best_of_rounds(__file__, variants, args.device, args.repeats, args.rounds)
    print(
        f"ViT-S/16, {SIZE}x{SIZE} input, scales {SCALES[0]}..{SCALES[-1]} ({len(SCALES)}), "
        f"{device_name(args.device)}"
    )
    print_variants(best, variants, args.device)
    print(f"cameras / floor: {best['cameras']['time'] / best['floor']['time']:.2f}x")


if __name__ == "__main__":
    main()

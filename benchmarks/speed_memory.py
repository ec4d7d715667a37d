"""CAMERAS speed and memory against the floor and the authors' recipe, side by side.

    .venv/bin/python benchmarks/speed_memory.py [--device cpu|cuda] [--rounds 3]

ResNet-50 (random weights: speed does not depend on them), one 224 x 224 input, the 8
default scales 224..924. Three variants, each in its own fresh process so peak memory
is its own:
  floor    one plain torch.no_grad() forward pass per scale (the resize included):
           any exact CAMERAS must run at least this;
  cameras  this library: cameras.CAMERAS(model)(x);
  authors  the authors' recipe: a full backward pass to the input at every scale, then
           every channel of activations and gradients upsampled to full resolution.
Rounds alternate between variants so that machine noise hits all of them alike; each
variant's time is its best round. Prints the ratios the README quotes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from rounds import arguments, best_of_rounds, device_name, measure, print_variants

SCALES = list(range(224, 925, 100))


def _model_and_input(device: str):
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval().to(device)
    x = torch.randn(1, 3, 224, 224, device=device)
    return model, x


def _resize(x, scale):
    if scale == x.shape[-1]:
        return x
    return F.interpolate(x, size=(scale, scale), mode="bicubic", align_corners=False)


def floor(model, x):
    with torch.no_grad():
        for scale in SCALES:
            model(_resize(x, scale))


def authors(model, x):
    size = x.shape[-2:]
    acts_sum, grads_sum, target = None, None, None
    for scale in SCALES:
        scaled = _resize(x, scale).detach().requires_grad_(True)
        store = {}
        handle = model.layer4.register_forward_hook(lambda m, i, o, store=store: store.update(a=o))
        logits = model(scaled)
        handle.remove()
        store["a"].retain_grad()
        if target is None:
            target = int(logits.argmax())
        model.zero_grad()
        logits[0, target].backward()
        up_a = F.interpolate(store["a"].detach(), size=size, mode="bilinear", align_corners=False)
        up_g = F.interpolate(store["a"].grad, size=size, mode="bilinear", align_corners=False)
        acts_sum = up_a if acts_sum is None else acts_sum + up_a
        grads_sum = up_g if grads_sum is None else grads_sum + up_g
    return torch.relu((acts_sum * grads_sum).sum(1))


def child(variant: str, device: str, repeats: int) -> None:
    import cameras

    model, x = _model_and_input(device)
    if variant == "cameras":
        method = cameras.CAMERAS(model, layer="layer4")

        def job():
            return method(x)
    else:
        job_fn = {"floor": floor, "authors": authors}[variant]

        def job():
            return job_fn(model, x)

    measure(job, device, repeats)


def main() -> None:
    args = arguments(__doc__.splitlines()[0], rounds=3)
    if args.child:
        child(args.child, args.device, args.repeats)
        return
    variants = ["floor", "cameras", "authors"]
    best = best_of_rounds(__file__, variants, args.device, args.repeats, args.rounds)
    print(
        f"ResNet-50, 224x224 input, scales {SCALES[0]}..{SCALES[-1]} ({len(SCALES)}), "
        f"{device_name(args.device)}"
    )
    print_variants(best, variants, args.device)
    f, c, a = best["floor"], best["cameras"], best["authors"]
    print(f"cameras time / floor time      = {c['time'] / f['time']:.2f}  (target <= 1.30)")
    print(f"cameras peak RSS / floor's     = {c['rss_mib'] / f['rss_mib']:.2f}  (target <= 1.20)")
    if args.device == "cuda":
        print(f"cameras peak GPU / floor's     = {c['gpu_mib'] / f['gpu_mib']:.2f}")
    print(f"authors' recipe time / cameras = {a['time'] / c['time']:.2f}  (target >= 3.00)")


if __name__ == "__main__":
    main()

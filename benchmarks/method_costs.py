"""What each saliency method costs on the default model: passes per image and time.

    python benchmarks/method_costs.py [--photo PATH] [--repeats 3]

Runs every method of ``cameras.METHODS`` on one photo (scikit-image's chelsea by default)
with the default model (EfficientNet-Lite0, its automatic layer, the photo's top-1
class), side by side in one process, and prints a Markdown table: forward passes per
image (images through the model, divided by the batch), backward passes (calls of
``torch.autograd.grad``: to the layer for the CAM methods, to the input for FullGrad)
and the median wall time of ``repeats`` calls after one warm-up call (Score-CAM and
Ablation-CAM, minutes per call on a CPU, are timed once, without a warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch

import cameras
from cameras.core.budget import method_pass_cost

SLOW = ("scorecam", "ablationcam")


@contextmanager
def counted(model: torch.nn.Module):
    """Count the images through ``model`` and the calls of torch.autograd.grad."""
    counts = {"images": 0, "backward": 0}
    grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        counts["backward"] += 1
        return grad(*args, **kwargs)

    def count_images(_module, inputs):
        counts["images"] += int(inputs[0].shape[0])

    handle = model.register_forward_pre_hook(count_images)
    torch.autograd.grad = counting_grad
    try:
        yield counts
    finally:
        torch.autograd.grad = grad
        handle.remove()


def measure(session, name: str, x: torch.Tensor, repeats: int) -> tuple[int, int, float]:
    method = cameras.METHODS[name](session.model, class_names=session.class_names)
    method_pass_cost(method, x)  # the memory probe's pass, done once per method, not counted
    if name not in SLOW:
        method(x)  # warm-up
    times = []
    for _ in range(1 if name in SLOW else repeats):
        with counted(session.model) as counts:
            start = time.perf_counter()
            method(x)
            times.append(time.perf_counter() - start)
    return counts["images"], counts["backward"], statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", help="image file (default: scikit-image's chelsea)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    session = cameras.Session.load()
    if args.photo is None:
        import skimage.data
        from PIL import Image

        image = Image.fromarray(skimage.data.chelsea())
        x = session.input(image)
    else:
        _, x = session.open(args.photo)
    size = "x".join(str(side) for side in x.shape[2:])
    print(f"efficientnet_lite0, input {size}, {torch.get_num_threads()} threads\n")
    print("| method | forward passes / image | backward passes / image | time (s) |")
    print("|---|---|---|---|")
    for name in cameras.METHODS:
        images, backward, seconds = measure(session, name, x, args.repeats)
        print(f"| {name} | {images} | {backward} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()

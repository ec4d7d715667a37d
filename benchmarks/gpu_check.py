"""CUDA gives the CPU's maps, and how fast CAMERAS runs on a GPU.

    python benchmarks/gpu_check.py

Compares CAMERAS maps computed on the CPU and on CUDA (the default model on a bundled
photo at the 8 default scales, and a random ResNet-50 batch of 2), with cuDNN's TF32
on (PyTorch's default) and off, then times CAMERAS on the GPU.
"""

from __future__ import annotations

import time

import torch
from PIL import Image

import cameras
from cameras.methods.cameras import resize_to_scale


def compare(model, x, label):
    cpu = cameras.CAMERAS(model.cpu())(x.cpu())
    for tf32 in (True, False):
        torch.backends.cudnn.allow_tf32 = tf32
        gpu = cameras.CAMERAS(model.cuda())(x.cuda())
        diff = (gpu.maps.cpu() - cpu.maps).abs().max().item()
        same = gpu.targets == cpu.targets and [[s.kept for s in r] for r in gpu.scales] == [
            [s.kept for s in r] for r in cpu.scales
        ]
        print(
            f"{label}: cudnn TF32 {'on ' if tf32 else 'off'}: max |GPU - CPU| = {diff:.2e}, "
            f"same targets and kept scales: {same}"
        )
    torch.backends.cudnn.allow_tf32 = True


def timed(method, x, repeats=10):
    method(x)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        method(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def no_grad_floor(model, x):
    """One plain forward pass per default scale: the least any exact CAMERAS must run."""
    for scale in cameras.default_scales(min(x.shape[2:])):
        model(resize_to_scale(x, scale))


def main():
    from skimage import data

    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    model, prep, _ = cameras.load_model()
    x = prep(Image.fromarray(data.chelsea()))[None]
    compare(model, x, "EfficientNet-Lite0, chelsea 224x337")
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet50().eval()
    batch = torch.randn(2, 3, 224, 224)
    compare(resnet, batch, "ResNet-50 (random), batch of 2")
    model.cuda()
    resnet.cuda()
    for label, m, inp in [
        ("EfficientNet-Lite0", model, x.cuda()),
        ("ResNet-50", resnet, batch[:1].cuda()),
    ]:
        t = timed(cameras.CAMERAS(m), inp)
        floor_t = timed(
            lambda z, m=m: [
                m(cameras.methods.cameras.resize_to_scale(z, s))
                for s in cameras.default_scales(224)
            ],
            inp,
        )
        print(
            f"{label}: CAMERAS 8 scales on CUDA {t * 1000:.1f} ms per image "
            f"(no_grad forward floor {floor_t * 1000:.1f} ms)"
        )
    big = torch.randn(16, 3, 224, 224, device="cuda")
    t = timed(cameras.CAMERAS(resnet), big, repeats=3)
    print(
        f"ResNet-50 batch of 16: {t * 1000 / 16:.1f} ms per image; peak GPU memory "
        f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    )


if __name__ == "__main__":
    main()

"""What the benchmarks in tools/ share: a rate measured over a few seconds, FLOP counts, this device's peak on a
large matrix product, one printed line per number beside its slower variant, and a synthetic photo."""
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from lib.device import autocast, sync


def rate(step, n_images, device, seconds=4.0):
    """Images per second of step(), after one warm-up call, over at least `seconds`."""
    step()
    sync(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        calls += 1
    sync(device)
    return calls * n_images / (time.perf_counter() - start)


def flops(fn):
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_gflops(device, amp, seconds, n=2048):
    """This device's rate on a large matrix product (in the training step's precision): near its peak."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

    def matmul():
        with autocast(device, amp):
            a @ b
    return rate(matmul, 1, device, seconds) * 2 * n ** 3 / 1e9


def line(name, fast, slow=None, slow_name="", unit="img/s"):
    text = f"{name:<52} {fast:8.1f} {unit}"
    if slow is not None:
        text += f"   vs {slow_name}: {slow:.1f} {unit} ({fast / slow:.1f}x)"
    print(text, flush=True)


def write_photo(path, rng):
    """A 1024x768 JPEG of smooth random blobs (noise drawn at 1/8 scale, upsampled); returns that noise."""
    noise = rng.integers(0, 255, (768 // 8, 1024 // 8, 3), dtype=np.uint8)
    Image.fromarray(noise).resize((1024, 768), Image.BICUBIC).save(path, quality=90)
    return noise

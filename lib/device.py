"""Where a PyTorch model runs and in which precision: the --device flag's values (cli.add_device_flag) as torch
devices, autocast, synchronisation."""
import contextlib
import os

import torch

from lib.errors import UsageError


def pick_device(name):
    """torch.device for a --device value; raises UsageError for a device that is not there."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible to PyTorch; use --device cpu or auto")
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun: this process's own GPU
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available on this machine; use --device cpu or auto")
    return torch.device(name)


def autocast(device, enabled):
    """Mixed precision on accelerators: bfloat16 where supported, else float16. CPU runs in float32."""
    if not enabled or device.type == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=half_dtype(device))


def half_dtype(device):
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16


def sync(device):
    """Wait for the device's queued work (for timing)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()

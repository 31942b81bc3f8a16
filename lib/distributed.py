"""Several processes, one job: torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) read in one place. Without
torchrun every function here is a no-op and a script runs exactly as one process always has.

    torchrun --nproc_per_node=2 train.py ...          # docs/scale.md: several GPUs, several machines, SLURM
"""
import contextlib
import os
import sys


def world_size():
    return int(os.environ.get("WORLD_SIZE", 1))


def rank():
    return int(os.environ.get("RANK", 0))


def is_main():
    """True in the process that writes files and prints (rank 0), and in a job of one process."""
    return rank() == 0


def my_share(n):
    """((first, end) of this process's images among a global batch's n, its share of them): all n and None in a
    job of one process. Under torchrun each process takes a contiguous part; a process left without images (a last
    batch smaller than the number of processes) takes the batch's first image with a share of 0, so that every
    process still takes part in the step."""
    world, me = world_size(), rank()
    if world == 1:
        return (0, n), None
    bounds = [n * k // world for k in range(world + 1)]
    lo, hi = bounds[me], bounds[me + 1]
    return ((lo, hi), (hi - lo) / n) if hi > lo else ((0, 1), 0.0)


def start(device=None):
    """Join the job's process group (gloo for CPUs, NCCL for GPUs; no device: gloo, for sums of counts alone) when
    torchrun started several processes, and return this process's device: its own GPU (LOCAL_RANK) on a machine
    with several."""
    if world_size() == 1:
        return device
    import torch  # here: a job of one process never imports it for this
    import torch.distributed as dist
    if device is None:
        dist.init_process_group("gloo")
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def joined():
    """torch.distributed once start() joined a process group, else None."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_initialized() else None


def stop():
    if dist := joined():
        dist.destroy_process_group()


def barrier():
    if dist := joined():
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """The main process runs the block first (e.g. decoding images into the shared cache), the others after it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def total(values):
    """The sum over all processes of a float64 tensor (in place); the tensor itself in a job of one process."""
    if dist := joined():
        dist.all_reduce(values)
    return values


def total_counts(counts):
    """total() of a list of whole numbers; the list itself unless start() joined a process group."""
    if not joined():
        return counts
    import torch
    return [int(c) for c in total(torch.tensor(counts, dtype=torch.float64))]


@contextlib.contextmanager
def quiet_unless_main():
    """Only the main process prints: the others' stdout goes nowhere (their errors still reach stderr)."""
    if is_main():
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def main_only(context):
    """The context (a run folder's lock, its log) in the process that writes the run's files; none elsewhere."""
    return context if is_main() else contextlib.nullcontext()


def global_mean_parts(loss, share):
    """(this process's part of the global batch's mean loss, what it back-propagates) of its images' mean loss and
    its share of the batch (my_share()): the part, and the part times the number of processes, since
    DistributedDataParallel averages the gradients over them. One process: (loss, loss)."""
    if share is None:
        return loss, loss
    part = loss * share
    return part, part * world_size()


def global_losses(losses, share):
    """The global batches' mean losses of this process's parts (0-dim tensors), summed over the processes: the
    parts themselves in a job of one process (share None, as my_share() gives it there)."""
    if share is None:
        return losses
    import torch
    return list(total(torch.stack(losses).double()))


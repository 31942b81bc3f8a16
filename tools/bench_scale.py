"""Measure one process against two under torchrun (gloo, one thread each) on this machine: make predict's command
on --images photos of 1024x768, and training on a synthetic set (make bench-scale; docs/scale.md).

    python tools/bench_scale.py --images 20
"""
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from project_root import ROOT  # first: lib/ and the top-level modules import from the project's root

from lib import cli, saving
from lib.synthetic import write_synthetic
from lib.timing import write_photo


def bench_scale(args, epochs=2):
    """One process against two (torchrun, gloo, one thread each) on this machine: make predict's command on
    --images photos of 1024x768 (images per second, start-up included), and training on a synthetic set
    (seconds per step of the last epoch, and its training loss)."""
    here, launch = ROOT, [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    with tempfile.TemporaryDirectory() as tmp:
        photos, rng = Path(tmp) / "photos", np.random.default_rng(0)
        photos.mkdir()
        for i in range(args.images):
            write_photo(photos / f"photo{i:03d}.jpg", rng)
        write_synthetic(Path(tmp) / "data", n_train=160, n_test=8)
        train = ["--data-dir", str(Path(tmp) / "data"), "--cache-dir", str(Path(tmp) / "cache"), "--workers", "0",
                 "--encoder-weights", "none", "--epochs", str(epochs), "--batch-size", str(args.batch_size),
                 "--device", "cpu"]
        for n in (1, 2):
            start = time.perf_counter()
            subprocess.run([*launch, f"--nproc_per_node={n}", "predict.py", str(photos), "--out",
                            str(Path(tmp) / f"masks{n}"), "--device", "cpu"], cwd=here, check=True, capture_output=True)
            seconds = time.perf_counter() - start
            print(f"{f'make predict, {n} process(es), {args.images} photos':<52} {seconds:8.2f} s "
                  f"({args.images / seconds:.1f} img/s)")
            subprocess.run([*launch, f"--nproc_per_node={n}", "train.py", *train, "--out", str(Path(tmp) / f"run{n}")],
                           cwd=here, check=True, capture_output=True)
            last = saving.read_csv(Path(tmp) / f"run{n}" / "history.csv")[-1]
            steps = -(-144 * 4 // args.batch_size)  # 144 training images (a tenth validates), 3 copies each
            print(f"{f'training, {n} process(es), global batch {args.batch_size}':<52} "
                  f"{last['seconds'] / steps:8.3f} s per step (train loss {last['train_loss']:.4f})")


def main():
    parser = cli.parser(__doc__)
    parser.add_argument("--images", type=int, default=100, help="photos of 1024x768 to segment")
    parser.add_argument("--batch-size", type=int, default=32, help="training's global batch")
    args = parser.parse_args()
    bench_scale(args)


if __name__ == "__main__":
    cli.run(main)

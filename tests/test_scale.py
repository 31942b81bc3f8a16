"""Past one process: train.py and predict.py under torchrun with 2 CPU processes (gloo), against one process."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, train_args

import predict
import train
from lib import distributed, saving
from lib.errors import StorageError
from lib.mapped import load_mapped_split

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # as torchrun gives each of its processes
LOSS_TOLERANCE = 0.02  # relative: each process normalises (BatchNorm) its own half of the batch; on GPUs --sync-bn


def torchrun(script, *args, **kwargs):
    return subprocess.run([*TORCHRUN, script, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env=ONE_THREAD, **kwargs)


def losses(run):
    return [(row["train_loss"], row["val_loss"]) for row in saving.read_csv(run / "history.csv")]


def test_two_processes_train_with_the_losses_of_one(synthetic, tmp_path):
    train.main(train_args(synthetic[0], tmp_path / "one", "--epochs", "2"))
    two = torchrun("train.py", *train_args(synthetic[0], tmp_path / "two", "--epochs", "2"))
    assert two.returncode == 0, two.stderr[-2000:]
    for (a_train, a_val), (b_train, b_val) in zip(losses(tmp_path / "one"), losses(tmp_path / "two")):
        assert b_train == pytest.approx(a_train, rel=LOSS_TOLERANCE)
        assert b_val == pytest.approx(a_val, rel=LOSS_TOLERANCE)
    assert len(losses(tmp_path / "two")) == 2 and two.stdout.count("epoch   1/2") == 1  # one process printed
    assert sorted(p.name for p in (tmp_path / "two").glob("*.pt")) == ["best.pt", "last.pt"]


def test_a_rank_killed_stops_the_job_and_resume_finishes_it(synthetic, tmp_path):
    out = tmp_path / "run"
    flags = train_args(synthetic[0], out, "--epochs", "4")
    job = subprocess.Popen([*TORCHRUN, "train.py", *flags], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    deadline = time.time() + 300
    while not (out / "last.pt").exists() and time.time() < deadline and job.poll() is None:
        time.sleep(0.05)
    agent = job.pid
    workers = [int(p) for p in Path(f"/proc/{agent}/task/{agent}/children").read_text().split()]
    os.kill(workers[-1], signal.SIGKILL)  # one of the two ranks dies at once
    _, err = job.communicate(timeout=300)
    assert job.returncode != 0 and "train.py FAILED" in err
    done = len(saving.read_csv(out / "history.csv"))
    assert 1 <= done < 4
    resumed = torchrun("train.py", *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [row["epoch"] for row in saving.read_csv(out / "history.csv")] == [1, 2, 3, 4]
    assert f"resuming {out} after epoch {done}" in resumed.stdout


def test_two_processes_write_every_mask_once_as_one_process_does(synthetic, tmp_path):
    images = synthetic[0] / "ISBI2016_ISIC_Part1_Test_Data"
    predict.main([str(images), "--out", str(tmp_path / "one"), "--device", "cpu"])
    two = torchrun("predict.py", images, "--out", tmp_path / "two", "--device", "cpu")
    assert two.returncode == 0, two.stderr[-2000:]
    masks = sorted(p.name for p in (tmp_path / "one").glob("*_segmentation.png"))
    assert masks == sorted(p.name for p in (tmp_path / "two").glob("*_segmentation.png"))
    assert len(masks) == len(list(images.iterdir()))
    ranked = [saving.read_csv(tmp_path / "two" / f"unsure-{r}.csv") for r in (0, 1)]  # one per process
    assert sorted(r["mask"] for rows in ranked for r in rows) == masks
    assert all((tmp_path / "one" / m).read_bytes() == (tmp_path / "two" / m).read_bytes() for m in masks)
    assert f"wrote {len(masks)} masks" in two.stdout and two.stdout.count("wrote") == 1
    again = torchrun("predict.py", images, "--out", tmp_path / "two", "--device", "cpu", "--skip-existing")
    assert f"wrote 0 masks to {tmp_path / 'two'}/ ({len(masks)} skipped" in again.stdout


def test_a_memory_mapped_cache_trains_exactly_as_the_in_memory_one(synthetic, tmp_path):
    flags = ["--epochs", "2", "--aug-copies", "0", "--random-aug"]
    for name, extra in (("memory", []), ("mapped", ["--memory-map"])):
        train.main(train_args(synthetic[0], tmp_path / name, *flags, *extra))
    assert list((tmp_path / "cache").glob("train_*.mapped/images.npy"))  # the images stayed on disk
    assert losses(tmp_path / "memory") == losses(tmp_path / "mapped")
    assert (tmp_path / "memory" / "test_metrics.json").read_text() == (tmp_path / "mapped" / "test_metrics.json"
                                                                       ).read_text()


def test_a_damaged_memory_mapped_cache_is_rebuilt(synthetic, tmp_path, capsys):
    first = load_mapped_split(synthetic[0], "test", 32, tmp_path)["images"][:]  # read before the file is cut
    images = next(tmp_path.glob("test_*.mapped")) / "images.npy"
    with open(images, "r+b") as f:
        f.truncate(images.stat().st_size // 2)
    again = load_mapped_split(synthetic[0], "test", 32, tmp_path)
    assert "is damaged; decoding the images again" in capsys.readouterr().out
    assert torch.equal(first, again["images"][:])
    bad = subprocess.run([sys.executable, "train.py", *train_args(synthetic[0], tmp_path / "x", "--memory-map")],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--memory-map keeps the images on disk: give it --aug-copies 0" in bad.stderr


def test_a_full_disk_stops_the_memory_mapped_cache_with_one_sentence(synthetic, small_disk):
    disk, resize = small_disk  # 1 MB: less than the 1.8 MB of pixels and masks of 12 images at 192 px
    with pytest.raises(StorageError, match="no space left in .* for the memory-mapped cache"):
        load_mapped_split(synthetic[0], "test", 192, disk)
    assert list(disk.iterdir()) == []  # no half-written cache is left to be read later
    resize(8)
    assert len(load_mapped_split(synthetic[0], "test", 192, disk)["images"]) == 12


def test_each_process_takes_its_own_part_of_every_global_batch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for n in (1, 2, 7, 32):
        parts = []
        for rank in (0, 1):
            monkeypatch.setenv("RANK", str(rank))
            parts.append(distributed.my_share(n))
        if n == 1:  # a process without images takes part with a weight of 0
            assert sorted(share for _, share in parts) == [0.0, 1.0]
            continue
        (lo0, hi0), share0 = parts[0]
        (lo1, hi1), share1 = parts[1]
        assert (lo0, hi1) == (0, n) and hi0 == lo1 and share0 + share1 == pytest.approx(1)
        assert share0 == (hi0 - lo0) / n

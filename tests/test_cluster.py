"""predict.py --cluster on a local Ray cluster of this machine's cores, on the light runtime (no torch): the files
of a plain run, byte for byte, with an actor's process killed (kill -9) mid-run, and with the driver killed and
the run continued with --skip-existing. Needs ray (requirements-cluster.txt; make test installs it)."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REAL_DATA, ROOT, without_torch

pytest.importorskip("ray", reason="make cluster-setup installs Ray Data (make test does)")
FLAGS = ("--tta", "--largest-component", "--overlay", "--batch-size", "2")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """80 real photos, and the files a plain run writes for them."""
    folder = tmp_path_factory.mktemp("cluster") / "photos"
    folder.mkdir()
    for path in sorted((REAL_DATA / "ISBI2016_ISIC_Part1_Test_Data").glob("*.jpg"))[:80]:
        shutil.copy(path, folder)
    plain = folder.parent / "plain"
    assert start(folder, plain).wait() == 0
    return folder, plain


def start(folder, out, *flags):
    env = without_torch(out.parent / "env")  # the light install: ONNX Runtime and Ray, no PyTorch
    return subprocess.Popen([sys.executable, "predict.py", str(folder), "-o", str(out), *FLAGS, *flags], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def files_of(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def processes(title):
    """pids of the processes whose command line starts with `title` (Ray names its workers' processes)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{pid}/cmdline", "rb").read().startswith(title.encode()):
                found.append(int(pid))
        except OSError:  # ended meanwhile
            pass
    return found


def when(condition, timeout=120):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_the_cluster_writes_a_plain_runs_files_and_says_which_photo_it_could_not_read(photos, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(photos[0], folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a photo")
    plain = start(folder, tmp_path / "plain")
    plain.communicate()
    cluster = start(folder, tmp_path / "cluster", "--cluster", "local")
    stdout, stderr = cluster.communicate()
    assert (cluster.returncode, plain.returncode) == (1, 1) and "wrote 80 masks" in stdout
    assert "broken.jpg" in stderr.splitlines()[-1] and "1 of 81 images not segmented" in stderr
    assert files_of(tmp_path / "cluster") == files_of(tmp_path / "plain")  # masks, overlays and unsure.csv


def test_an_actor_killed_mid_run_is_replaced_and_its_photos_written_once(photos, tmp_path):
    folder, plain = photos
    out = tmp_path / "out"
    run = start(folder, out, "--cluster", "local")
    when(lambda: processes("ray::MapWorker") and list(out.glob("*_segmentation.png")))
    victim = processes("ray::MapWorker")[0]
    os.kill(victim, signal.SIGKILL)
    written_then = len(list(out.glob("*_segmentation.png")))
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert written_then < 80 and "wrote 80 masks" in stdout and victim not in processes("ray::")
    assert files_of(out) == files_of(plain)  # every photo once, whole, as a plain run: no temporary file left


def test_a_killed_drivers_actors_end_and_skip_existing_finishes(photos, tmp_path):
    folder, plain = photos
    out = tmp_path / "out"
    run = start(folder, out, "--cluster", "local")
    when(lambda: len(list(out.glob("*_segmentation.png"))) >= 10)
    run.send_signal(signal.SIGKILL)
    run.wait()
    orphans = set(processes("ray::MapWorker"))  # the actors, each holding a model (Ray's agents end in about 30 s)
    again = start(folder, out, "--cluster", "local", "--skip-existing")
    again.communicate(timeout=300)  # redoes what the killed run did not score (unsure.csv is saved every 30 s)
    assert again.returncode == 0 and files_of(out) == files_of(plain)
    when(lambda: not orphans & set(processes("ray::")), timeout=120)  # the killed driver's actors end too

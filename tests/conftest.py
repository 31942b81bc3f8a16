import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]  # tests call the tools' functions too

from lib.synthetic import write_synthetic  # noqa: E402
from model import DECODER_WIDTHS, MobileNetSegmenter  # noqa: E402

REAL_DATA = ROOT.parent / "shared" / "isic2016"
REAL_WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2_imagenet.pth"
HAM = ROOT.parent / "shared" / "ham10000"  # HAM10000 with masks: a second real clinic


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """(data_dir, {id: lesion area fraction}) of a small synthetic ISIC-layout data set, shared by tests."""
    root = tmp_path_factory.mktemp("isic-synthetic")
    areas = write_synthetic(root, n_train=40, n_test=12, seed=1)
    return root, areas


def train_args(data_dir, out, *extra):
    """train.py flags for a tiny, fast run on the synthetic set."""
    return ["--data-dir", str(data_dir), "--cache-dir", str(Path(out).parent / "cache"), "--out", str(out),
            "--encoder-weights", "none", "--image-size", "64", "--epochs", "1", "--batch-size", "16",
            "--aug-copies", "1", "--workers", "0", "--device", "cpu", *extra]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A checkpoint of an untrained model in the format train.py writes."""
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    config = {"skips": False, "freeze_encoder": False, "decoder_widths": list(DECODER_WIDTHS),
              "image_size": 64, "no_amp": False, "loss": "bce", "data_dir": ["data"], "val_fraction": 0.1,
              "split_seed": 0}
    torch.manual_seed(0)
    torch.save({"config": config, "model": MobileNetSegmenter("none").state_dict()}, path)
    return path


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of limited size (tmpfs), grown again by resize(megabytes)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]).returncode:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")

    def resize(megabytes):
        subprocess.run(["mount", "-o", f"remount,size={megabytes}m", str(disk)], check=True)
    yield disk, resize
    subprocess.run(["umount", str(disk)])


def start_server(log, *flags):
    """(process, address) of `python serve.py --port 0 [flags]`, its request log in log."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "tools/serve.py", "--port", "0", *flags], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    line = proc.stdout.readline()
    assert line.startswith("serving on http://127.0.0.1:"), line + log.read_text()
    return proc, line.split()[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(address, its request log) of `python serve.py --port 0` with the released model."""
    log = tmp_path_factory.mktemp("server") / "requests.log"
    proc, address = start_server(log)
    yield address, log
    proc.terminate()
    proc.wait()


def without_torch(tmp_path):
    """The environment of a process where `import torch` fails, as on the light install (requirements-predict.txt):
    a torch package that raises, first on PYTHONPATH."""
    blocker = tmp_path / "no-torch" / "torch"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "__init__.py").write_text("raise ImportError('no PyTorch on the light install')\n")
    return {**os.environ, "PYTHONPATH": str(blocker.parent)}


@pytest.fixture(scope="session", autouse=True)
def leave_no_cache_behind():
    """The scripts some tests run cache decoded images in ./cache (their default): what the tests add there is
    removed when they end, and the folder too if they made it."""
    cache = ROOT / "cache"
    before = set(cache.iterdir()) if cache.is_dir() else None
    yield
    if cache.is_dir():
        for path in set(cache.iterdir()) - (before or set()):
            path.unlink() if path.is_file() else shutil.rmtree(path, ignore_errors=True)
        if before is None and not any(cache.iterdir()):
            cache.rmdir()

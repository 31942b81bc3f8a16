"""The three edits a student makes first, in a clone of this repository: a decoder width in model.py, a loss in
losses.py used through the Makefile's FLAGS, an augmentation where augment.py's first lines say. Each touches one
file, takes effect, and leaves its trace in the run folder (config.json's code and augmentations, code.diff)."""
import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, train_args

EDITS = {  # file: (text in it, what the student writes instead)
    "model.py": ("DECODER_WIDTHS = (128, 64, 32, 16, 8)", "DECODER_WIDTHS = (96, 48, 24, 12, 6)"),
    "losses.py": ('LOSSES = {"bce": bce_loss,', 'LOSSES = {"mine": lambda logits, masks: 3 * bce_loss(logits, masks), '
                  '"bce": bce_loss,'),
    "augment.py": ('"flipped horizontally": lambda x: x.flip(-1)}',
                   '"flipped horizontally": lambda x: x.flip(-1), "flipped vertically": lambda x: x.flip(-2)}'),
}


@pytest.fixture
def clone(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout")
    folder = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(folder)], check=True)
    return folder


def train_in(folder, data, out, *flags):
    result = subprocess.run([sys.executable, "train.py", *train_args(data, out, "--no-test", *flags)], cwd=folder,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads((out / "config.json").read_text())


def copies_in(folder):
    """The first training image's flipped and turned copy, as augment.py in `folder` makes it."""
    code = ("import torch, augment; x = torch.arange(96, dtype=torch.uint8).reshape(2, 3, 4, 4); "
            "print(augment.fixed_copies(x, x[:, :1], 1, 0)[0][2].flatten().tolist())")
    return subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True).stdout


def first_loss(out):
    return float((out / "history.csv").read_text().splitlines()[1].split(",")[1])


def test_a_students_three_edits_take_effect_and_leave_their_trace(clone, synthetic, tmp_path):
    _, before = train_in(clone, synthetic[0], tmp_path / "before")
    assert before["code"]["dirty"] is False and not (tmp_path / "before" / "code.diff").exists()
    assert before["augmentations"][0].startswith("fixed_copies: 1 copy") and "vertically" not in str(before)

    for name, (old, new) in EDITS.items():
        path = clone / name
        assert path.read_text().count(old) == 1, name  # the place the README and augment.py point to
        path.write_text(path.read_text().replace(old, new))
    make = subprocess.run(["make", "-n", "exp1-bce", "FLAGS=--loss mine"], cwd=clone, capture_output=True, text=True)
    assert "--lr 1e-3 --loss mine" in make.stdout  # FLAGS come after the recipe's flags: they win
    printed, after = train_in(clone, synthetic[0], tmp_path / "after", "--loss", "mine")
    assert copies_in(clone) != copies_in(ROOT)  # the copies every run trains on are flipped vertically now
    assert "or flipped vertically, then turned" in after["augmentations"][0]  # and the run's record says so

    assert after["loss"] == "mine" and after["decoder_widths"] == [96, 48, 24, 12, 6]
    assert after["code"] == {"commit": before["code"]["commit"], "dirty": True}
    diff = (tmp_path / "after" / "code.diff").read_text()
    assert all(new in diff for _, new in EDITS.values())
    assert "code.diff" in printed and "augmentation, fixed_copies" in printed
    # the loss is three times BCE on other copies of the images: far from the run before the edits
    assert first_loss(tmp_path / "after") > 2 * first_loss(tmp_path / "before")


def test_a_metric_added_in_one_place_reaches_test_metrics_and_evaluates_line(clone, synthetic, tmp_path):
    """A fourth edit: precision, one line in lib/metrics.py's per_image_metrics, then in train.py's
    test_metrics.json and in evaluate.py's printed line, with nothing else edited."""
    path = clone / "lib" / "metrics.py"
    old = '            "sensitivity": ratio(tp, tp + fn),  # recall\n'
    assert path.read_text().count(old) == 1
    path.write_text(path.read_text().replace(old, old + '            "precision": ratio(tp, tp + fp),\n'))
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "train.py", *train_args(synthetic[0], out)], cwd=clone,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 0 <= json.loads((out / "test_metrics.json").read_text())["precision"] <= 1
    result = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", str(out / "best.pt"), "--data-dir",
                             str(synthetic[0]), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"],
                            cwd=clone, capture_output=True, text=True)
    assert result.returncode == 0 and re.search(r", precision [01]\.\d{4}, ", result.stdout), result.stderr


def test_two_runs_of_one_target_under_two_names_both_stay(synthetic, tmp_path):
    """make exp1-bce RUN=... twice: two run folders, the first untouched by the second; a third under a name in use
    is refused in one sentence that offers RUN=."""
    if not (ROOT / ".venv" / "installed").exists():
        pytest.skip("make setup's .venv is not there (make test sets it up)")
    flags = (f"--image-size 64 --aug-copies 1 --workers 0 --device cpu --no-test --cache-dir {tmp_path / 'cache'} "
             "--encoder-weights none")
    make = ["make", "-s", "exp1-bce", f"DATA_DIR={synthetic[0]}", f"RUNS={tmp_path}", "EPOCHS=1", "BATCH_SIZE=16",
            f"FLAGS={flags}"]
    first = subprocess.run(make + ["RUN=bce-a"], cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    history = (tmp_path / "bce-a" / "history.csv").read_text()
    second = subprocess.run(make + ["RUN=bce-b", "FLAGS=" + flags + " --loss iou"], cwd=ROOT, capture_output=True,
                            text=True)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "bce-a" / "history.csv").read_text() == history
    assert json.loads((tmp_path / "bce-b" / "config.json").read_text())["loss"] == "iou"
    again = subprocess.run(make + ["RUN=bce-a"], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode != 0 and "RUN=another-name" in again.stderr

"""Data and training faults, each with the real fault: damaged cache files, kill -9 while the cache is built,
palette and JPEG masks, masks that are all empty, a damaged last.pt, a diverging loss, a moved run folder, a
mistyped DATA_DIR."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import HAM, ROOT, train_args
from PIL import Image

import train
from lib import decoding, layouts, readers, saving
from lib.errors import DataError, TrainingError, UsageError

TRAIN_IMAGES, TRAIN_MASKS = layouts.SPLITS["train"]


@pytest.fixture
def copy(synthetic, tmp_path):
    """A private copy of the synthetic data set that a test may change."""
    shutil.copytree(synthetic[0], tmp_path / "isic")
    return tmp_path / "isic"


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "garbage in the middle"])
def test_a_damaged_cache_file_is_rebuilt_with_a_notice_never_used(synthetic, tmp_path, damage, capsys):
    cache = tmp_path / "cache"
    clean = decoding.load_split(synthetic[0], "train", 64, cache)
    path, = cache.glob("train_64px_*.pt")
    raw = path.read_bytes()
    damaged = {"truncated": raw[:len(raw) // 2], "random bytes": os.urandom(len(raw)),
               "garbage in the middle": raw[:len(raw) // 2] + os.urandom(20_000) + raw[len(raw) // 2 + 20_000:]}
    path.write_bytes(damaged[damage])
    capsys.readouterr()
    again = decoding.load_split(synthetic[0], "train", 64, cache)
    out = capsys.readouterr().out
    assert f"cache file {path} is damaged; decoding the images again" in out and "weights_only" not in out
    assert torch.equal(again["images"], clean["images"]) and torch.equal(again["masks"], clean["masks"])
    assert path.read_bytes() == raw  # rebuilt whole
    decoding.load_split(synthetic[0], "train", 64, cache)
    assert "damaged" not in capsys.readouterr().out


def alive(pid):
    """Whether a process exists and has not ended (a zombie has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads processes from /proc (Linux)")
def test_kill_9_while_the_cache_is_built_ends_the_decoding_workers(tmp_path):
    folder = tmp_path / "big"
    for f in layouts.SPLITS["train"]:
        (folder / f).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(300):  # PNGs of noise: slow to decode, so the build is still running when the kill comes
        Image.fromarray(rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(
            folder / TRAIN_IMAGES / f"ISIC_{i:07d}.png")
        Image.fromarray(np.full((400, 400), 255, np.uint8)).save(
            folder / TRAIN_MASKS / f"ISIC_{i:07d}_Segmentation.png")
    code = f"from lib import decoding; decoding.load_split({str(folder)!r}, 'train', 64, {str(tmp_path / 'cache')!r}, workers=2)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.time() + 60
    while time.time() < deadline and len(children.read_text().split()) < 2:
        time.sleep(0.01)
    workers = [int(pid) for pid in children.read_text().split()]
    time.sleep(0.5)  # the workers are decoding
    assert len(workers) == 2 and not list((tmp_path / "cache").glob("*.pt"))  # the build is under way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(map(alive, workers)):
        time.sleep(0.1)
    assert not any(map(alive, workers))


def palette_mask(values, colours):
    """A palette ('P') image of index values [H,W] with the given RGB colours, one per index."""
    im = Image.fromarray(values.astype(np.uint8), "L").convert("P")
    im.putpalette([c for colour in colours for c in colour])
    return im


def test_palette_masks_are_read_by_index_unless_black_and_white_say_otherwise(tmp_path):
    values = np.zeros((8, 8), np.uint8)
    values[2:6, 2:6] = 1
    # by index: colours that are not black and white, or one colour for two indices, say nothing of the lesion
    cases = {"only-index-0.png": [(0, 0, 0)], "white-background.png": [(255, 255, 255), (255, 0, 0)],
             "mask.gif": [(0, 0, 0), (0, 0, 0)], "voc.png": [(0, 0, 0), (128, 0, 0)]}
    for name, colours in cases.items():
        palette_mask(values, colours).save(tmp_path / name)
        with Image.open(tmp_path / name) as im:
            assert im.mode == "P"
        assert np.array_equal(readers.read_binary_mask(tmp_path / name), values == 1), name
    # by colour: HAM10000's 402 palette masks show the lesion as index 0 in white, the background as 255 in black
    ham = palette_mask(np.where(values == 1, 0, 255), [(255 - i,) * 3 for i in range(256)])
    ham.save(tmp_path / "ham.png")
    assert np.array_equal(readers.read_binary_mask(tmp_path / "ham.png"), values == 1)


@pytest.mark.skipif(not HAM.is_dir(), reason="needs ../shared/ham10000")
def test_hams_palette_masks_read_as_their_grey_twins():
    """Real HAM10000 palette masks mark about as much lesion as its grey masks do (a median near 0.2), not the
    inverse."""
    masks = HAM / "train" / "masks"
    palette = [p for p in sorted(masks.glob("ISIC_00243*.png")) if Image.open(p).mode == "P"][:20]
    assert len(palette) == 20
    shares = [readers.read_binary_mask(p).mean() for p in palette]
    assert np.median(shares) < 0.5, shares


def test_a_data_set_whose_masks_are_all_empty_refuses_to_train(copy, tmp_path):
    for path in (copy / TRAIN_MASKS).iterdir():
        with Image.open(path) as im:
            size = im.size
        palette_mask(np.zeros(size[::-1]), [(0, 0, 0)]).save(path)
    with pytest.raises(DataError, match=r"every mask of the train split in .* is empty \(all background\)"):
        train.main(train_args(copy, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_jpeg_mask_is_refused_with_the_reason(copy):
    mask = copy / TRAIN_MASKS / "ISIC_0000004_Segmentation.png"
    with Image.open(mask) as im:
        im.convert("L").save(mask.with_suffix(".jpg"))
    mask.unlink()
    with pytest.raises(DataError) as e:
        layouts.find_pairs(copy, "train")
    assert f"mask {mask.with_suffix('.jpg')} is a JPEG" in str(e.value) and "save masks as PNG" in str(e.value)
    assert "no mask named" not in str(e.value)


def test_a_damaged_last_pt_is_one_sentence_that_offers_best_pt(synthetic, tmp_path):
    out = tmp_path / "run"
    train.main(train_args(synthetic[0], out))
    raw = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(raw[:len(raw) // 2])
    command = [sys.executable, "train.py", *train_args(synthetic[0], out, "--epochs", "2", "--resume")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    best_epoch = torch.load(out / "best.pt", weights_only=True)["epoch"]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: {out}/last.pt is damaged and cannot be resumed; best.pt (epoch "
                                     f"{best_epoch}) is intact: to resume from it, copy it over last.pt (cp "
                                     f"{out}/best.pt {out}/last.pt) and run again with --resume")
    shutil.copy(out / "best.pt", out / "last.pt")  # as the message says
    assert subprocess.run(command, cwd=ROOT, capture_output=True).returncode == 0
    assert len(saving.read_csv(out / "history.csv")) == 2


def test_a_second_run_is_refused_before_loading_any_data(synthetic, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "train.py", *train_args(synthetic[0], out, "--epochs", "50")],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / "config.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        # a data folder that does not exist: refused for the lock, before the data would fail
        with pytest.raises(UsageError, match="another train.py is running in"):
            train.main(train_args(tmp_path / "no-such-data", out, "--overwrite"))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_train_log_keeps_every_line_at_once_through_kill_9(synthetic, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *train_args(synthetic[0], out, "--epochs", "20",
                                                                     "--image-size", "128", "--aug-copies", "3")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, deadline = out / "train.log", time.time() + 300
    while time.time() < deadline and not (log.exists() and "training on" in log.read_text()):
        time.sleep(0.01)
    first_epoch_done = (out / "history.csv").exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not first_epoch_done  # the line reached the log while the epoch ran, not when it ended
    assert "training on" in log.read_text()


def test_a_moved_run_resumes_with_its_new_folder_in_config(synthetic, tmp_path):
    train.main(train_args(synthetic[0], tmp_path / "old", "--epochs", "1"))
    shutil.move(tmp_path / "old", tmp_path / "new")
    train.main(train_args(synthetic[0], tmp_path / "new", "--epochs", "2", "--resume"))
    assert saving.read_json(tmp_path / "new" / "config.json")["out"] == str(tmp_path / "new")


def test_a_diverging_but_finite_loss_stops_with_a_sentence(synthetic, tmp_path):
    with pytest.raises(TrainingError) as e:
        train.main(train_args(synthetic[0], tmp_path / "run", "--lr", "1e3", "--optimizer", "rmsprop",
                              "--epochs", "3"))
    message = str(e.value)
    assert message.startswith("the loss diverged: ") and "at epoch 1, step" in message
    assert "no epoch had finished, so none was saved" in message and "last.pt holds" not in message
    assert "--lr (now 1000.0)" in message and not (tmp_path / "run" / "last.pt").exists()


def test_a_mistyped_data_dir_is_one_sentence_and_downloads_nothing(tmp_path):
    typo = tmp_path / "isic216"
    result = subprocess.run(["make", "-s", "-o", ".venv/installed", "exp1-bce", f"DATA_DIR={typo}",
                             f"RUNS={tmp_path / 'runs'}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and not typo.exists() and not (tmp_path / "runs").exists()
    assert f"error: DATA_DIR={typo}: no such folder; check the path, or run make data DATA_DIR={typo}" in result.stderr

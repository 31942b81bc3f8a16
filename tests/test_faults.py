"""Faults tested with the real fault: kill -9, a full filesystem, two processes on one run folder, bad files."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, train_args
from PIL import Image

import predict
import train
from lib import decoding, layouts, readers, saving
from lib.errors import DataError, ModelFileError, StorageError, UsageError
from lib.checkpoints import load_checkpoint

LEARNED = ("epoch", "train_loss", "val_loss", "val_iou", "val_dice", "lr")


def learned(run):
    """history.csv's columns that training determines (not timings), NaN (no validation) as None."""
    rows = saving.read_csv(run / "history.csv")
    return [{k: None if row[k] != row[k] else row[k] for k in LEARNED} for row in rows]


def start(args):
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def kill_when(proc, condition, timeout=300):
    """kill -9 the process as soon as condition() holds (polled every millisecond)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not condition():
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_9_mid_write_and_mid_epoch_then_resume_gives_the_uninterrupted_result(synthetic, tmp_path):
    flags = ["--epochs", "3", "--aug-copies", "3"]
    train.main(train_args(synthetic[0], tmp_path / "whole", *flags))
    out = tmp_path / "killed"
    writing = lambda: any(out.glob(".*.pt.*.tmp"))  # noqa: E731  a checkpoint half written
    kill_when(start(train_args(synthetic[0], out, *flags)), writing)
    kill_when(start(train_args(synthetic[0], out, *flags, "--resume")),
              lambda: (out / "history.csv").exists() and len(saving.read_csv(out / "history.csv")) >= 2)
    result = subprocess.run([sys.executable, "train.py", *train_args(synthetic[0], out, *flags, "--resume")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert learned(out) == learned(tmp_path / "whole")
    assert saving.read_json(out / "test_metrics.json") == saving.read_json(tmp_path / "whole" / "test_metrics.json")
    assert not list(out.glob(".*.tmp"))


def test_full_disk_stops_with_a_sentence_keeps_last_pt_and_resume_finishes(synthetic, tmp_path, small_disk):
    flags = ["--epochs", "2", "--val-fraction", "0", "--cache-dir", str(tmp_path / "cache")]
    train.main(train_args(synthetic[0], tmp_path / "whole", *flags))
    checkpoint_mb = (tmp_path / "whole" / "last.pt").stat().st_size / 2 ** 20
    disk, resize = small_disk
    resize(int(2.5 * checkpoint_mb))  # epoch 1 writes best.pt and last.pt; epoch 2 has no room for a third
    out = disk / "run"
    result = subprocess.run([sys.executable, "train.py", *train_args(synthetic[0], out, *flags)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("error: no space left to write") and "MB needed" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1  # the previous last.pt is intact
    resize(int(4 * checkpoint_mb))
    train.main(train_args(synthetic[0], out, *flags, "--resume"))
    assert learned(out) == learned(tmp_path / "whole")


def test_resume_of_a_run_whose_best_pt_was_removed_finishes_on_last_pt(synthetic, tmp_path):
    out = tmp_path / "run"
    train.main(train_args(synthetic[0], out))
    (out / "best.pt").unlink()  # the user removed it; last.pt holds epoch 1
    result = subprocess.run([sys.executable, "train.py", *train_args(synthetic[0], out, "--epochs", "2", "--resume")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "best.pt is missing: scoring last.pt instead" in result.stdout
    assert saving.read_json(out / "test_metrics.json")["n_images"] == 12


def test_atomic_write_on_a_full_disk_raises_storage_error_and_leaves_the_old_file(small_disk):
    disk, resize = small_disk
    saving.write_text(disk / "notes.txt", "old")
    with pytest.raises(StorageError, match=r"notes.txt \(2.0 MB needed"):
        saving.write_text(disk / "notes.txt", "x" * 2_000_000)
    assert (disk / "notes.txt").read_text() == "old" and not list(disk.glob(".*.tmp"))


def test_overwrite_removes_only_what_a_run_wrote(synthetic, tmp_path):
    out = tmp_path / "mine"
    train.main(train_args(synthetic[0], out, "--epochs", "4", "--viz-every", "4"))
    (out / "my_notes.txt").write_text("keep me")
    (out / "photos").mkdir()
    train.main(train_args(synthetic[0], out, "--overwrite"))
    assert (out / "my_notes.txt").read_text() == "keep me" and (out / "photos").is_dir()
    assert not (out / "panel_epoch004.png").exists()  # the old run's files are gone
    assert len(saving.read_csv(out / "history.csv")) == 1


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_runs(synthetic, tmp_path):
    out = tmp_path / "run"
    first = start(train_args(synthetic[0], out, "--epochs", "50"))
    try:
        deadline = time.time() + 300
        while not (out / "config.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(UsageError, match=f"another train.py is running in .* \\(pid {first.pid}\\)"):
            train.main(train_args(synthetic[0], out, "--overwrite"))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kernel released the dead process's lock: the run can be resumed
    train.main(train_args(synthetic[0], out, "--resume", "--epochs", "1"))


@pytest.mark.parametrize("flags", [["--epochs", "0"], ["--batch-size", "0"], ["--lr", "-1"], ["--lr", "nan"],
                                   ["--encoder-weights", "missing.pth"]])
def test_numbers_that_cannot_train_are_refused_before_anything_is_written(synthetic, tmp_path, flags, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(train_args(synthetic[0], tmp_path / "run", *flags))
    assert e.value.code == 2 and flags[0] in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_output_to_a_file_has_plain_lines_not_progress_bars(synthetic, tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "train.py", *train_args(synthetic[0], tmp_path / "run", "--epochs", "2")],
                       cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True)
    text = log.read_text()
    assert "\r" not in text and "epoch   2/2" in text and "test (best epoch" in text


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48), dtype=np.uint16)
    Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "eight.png")
    Image.fromarray(rgb * 257).save(tmp_path / "sixteen.png")  # the same picture in 16 bits
    with Image.open(tmp_path / "sixteen.png") as im:
        assert im.mode.startswith("I")
    eight, _ = readers.read_image(tmp_path / "eight.png", 32)
    sixteen, _ = readers.read_image(tmp_path / "sixteen.png", 32)
    assert np.abs(eight.astype(int) - sixteen.astype(int)).max() <= 1 and sixteen.mean() < 200


def test_exif_orientation_is_applied_to_images(tmp_path):
    stored = np.zeros((40, 64, 3), np.uint8)
    stored[:, :8] = 255  # a white band on the stored image's left edge
    exif = Image.Exif()
    exif[readers.ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image, size = readers.read_image(tmp_path / "phone.jpg", 32)
    assert size == (40, 64)  # width, height as displayed
    assert image[:4].mean() > 200 and image[-4:].mean() < 50  # the band is now on top
    assert readers.read_full_image(tmp_path / "phone.jpg").shape[:2] == (64, 40)


def test_predict_keeps_masks_of_inputs_with_the_same_name_apart_and_skips_hidden_files(checkpoint, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    picture = Image.fromarray(np.full((40, 30, 3), 128, np.uint8))
    for name in ("x.jpg", "x.png", "sub/x.jpg"):
        picture.save(folder / name)
    (folder / "._x.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    predict.main([str(folder), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"),
                  "--device", "cpu"])
    masks = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*_segmentation.png"))
    assert masks == ["sub/x_segmentation.png", "x_jpg_segmentation.png", "x_png_segmentation.png"]


def test_masks_keep_the_isic_name_whatever_the_format_and_only_a_clash_names_the_format(checkpoint, tmp_path,
                                                                                       capsys):
    folder, linked, out = tmp_path / "in", tmp_path / "elsewhere", tmp_path / "out"
    folder.mkdir()
    linked.mkdir()
    picture = Image.fromarray(np.full((40, 30, 3), 128, np.uint8))
    picture.save(folder / "photo2.bmp")
    for i in range(3):
        picture.save(linked / f"behind{i}.jpg")
    (folder / "link").symlink_to(linked, target_is_directory=True)
    (linked / "loop").symlink_to(folder, target_is_directory=True)  # a link loop ends
    flags = ["--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu", "--skip-existing"]
    predict.main([str(folder), *flags])
    first = sorted(str(p.relative_to(out)) for p in out.rglob("*_segmentation.png"))
    assert first == ["link/behind0_segmentation.png", "link/behind1_segmentation.png", "link/behind2_segmentation.png",
                     "photo2_segmentation.png"]  # a BMP's mask is named as a JPEG's: <stem>_segmentation.png
    picture.save(folder / "photo2.png")  # beside photo2.bmp: both now named with their format, and the run says so
    predict.main([str(folder), *flags])
    assert "photo2.bmp -> photo2_bmp, photo2.png -> photo2_png" in capsys.readouterr().out
    assert {"photo2_bmp_segmentation.png", "photo2_png_segmentation.png"} <= {p.name for p in out.iterdir()}
    picture.save(folder / "photo2.JPG")
    picture.save(folder / "photo2.jpg")  # two files, one name even with the format: left out, named; others written
    picture.save(folder / "new.jpg")
    with pytest.raises(UsageError, match=r"(?s)2 of 8 images not segmented.*photo2.JPG: it and photo2.jpg would "
                       r"write the same mask .photo2_jpg_segmentation.png.; rename one"):
        predict.main([str(folder), *flags])
    assert (out / "new_segmentation.png").exists() and not (out / "photo2_jpg_segmentation.png").exists()


def test_predict_writes_every_readable_image_and_lists_the_others(checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.jpg", "c.jpg"):
        Image.fromarray(np.full((40, 30, 3), 128, np.uint8)).save(folder / name)
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UsageError, match=r"1 of 3 images not segmented.*\n  .*b.jpg"):
        predict.main([str(folder), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"),
                      "--device", "cpu"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_segmentation.png", "c_segmentation.png",
                                                                "unsure.csv"]  # the unsure score of each
    assert "wrote 2 masks" in capsys.readouterr().out


def test_predict_output_that_cannot_be_a_folder_is_one_sentence(checkpoint, tmp_path):
    (tmp_path / "file").write_text("")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    with pytest.raises(UsageError, match="is a file, not a folder"):
        predict.main([str(image), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "file")])


def test_bad_weight_files_are_one_sentence_without_pytorch_advice(synthetic, tmp_path):
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    with pytest.raises(ModelFileError) as e:
        load_checkpoint(tmp_path / "random.pt")
    assert "weights_only" not in str(e.value) and len(str(e.value)) < 300
    (tmp_path / "text.pth").write_text("hello")
    args = train_args(synthetic[0], tmp_path / "run")
    args[args.index("--encoder-weights") + 1] = str(tmp_path / "text.pth")
    result = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: --encoder-weights") and "not a MobileNetV2 state_dict" in result.stderr


def test_every_data_problem_is_reported_in_one_message(synthetic, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(synthetic[0], copy)
    image_dir, mask_dir = (copy / f for f in layouts.SPLITS["train"])
    next(mask_dir.glob("*.png")).unlink()  # an image without a mask
    sorted(image_dir.glob("*.jpg"))[-1].write_bytes(b"corrupt")  # and an unreadable image
    with pytest.raises(DataError) as e:
        decoding.load_split(copy, "train", 32, tmp_path / "cache")
    assert "2 problem(s)" in str(e.value) and "image without a mask" in str(e.value)
    assert "cannot read image" in str(e.value)

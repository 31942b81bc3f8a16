"""predict.py under real faults: Ctrl-C (a real SIGINT), a full disk (a real small tmpfs), and an output folder
inside the input folder. Every output is whole or absent, and a rerun with --skip-existing finishes the job."""
import io
import queue
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT
from PIL import Image

import predict
from lib import saving
from lib.errors import StorageError, UsageError


def noise_photos(folder, n, size=(300, 300), seed=0):
    """n photos of random noise (large overlays, so a small disk fills after a few)."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(folder / f"p{i:03d}.png")
    return folder


def all_outputs_whole(out):
    """No temporary file is left, and every PNG in out decodes completely."""
    assert not list(out.rglob(".*.tmp"))
    for path in out.rglob("*.png"):
        with Image.open(path) as im:
            im.load()
    return True


def test_ctrl_c_leaves_whole_files_says_how_far_and_skip_existing_finishes(tmp_path):
    photos, out = noise_photos(tmp_path / "photos", 40, size=(1024, 768)), tmp_path / "out"
    command = [sys.executable, "predict.py", str(photos), "--out", str(out), "--overlay", "--batch-size", "2"]
    # a shell that runs these tests in the background leaves SIGINT ignored in its children: restore Ctrl-C's default
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600  # a loaded machine starts torch slowly
    while time.time() < deadline and proc.poll() is None and len(list(out.glob("*_overlay.jpg"))) < 3:
        time.sleep(0.01)
    assert proc.poll() is None and len(list(out.glob("*_overlay.jpg"))) >= 3  # mid-job
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    written = len(list(out.glob("*_overlay.jpg")))  # an image counts once both its files are written
    assert proc.returncode == 130 and "Traceback" not in err and 3 <= written < 40
    assert len(list(out.glob("*_segmentation.png"))) in (written, written + 1)
    assert err.strip().splitlines()[-1] == (f"interrupted: wrote {written} of 40 masks to {out}/; run the same "
                                            "command with --skip-existing to continue")
    assert all_outputs_whole(out)
    result = subprocess.run(command + ["--skip-existing"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"wrote {40 - written} masks to {out}/ ({written} skipped: already in {out}/)" in result.stdout
    assert len(list(out.glob("*_segmentation.png"))) == len(list(out.glob("*_overlay.jpg"))) == 40


def test_unsure_scores_saved_while_masks_are_written_survive_a_kill_9(tmp_path):
    """unsure.csv is saved every SAVE_SECONDS while masks are written (here 0: with each), so a run killed with a real
    kill -9, which saves nothing at its end, keeps the scores of the masks it wrote; --skip-existing then redoes only
    the masks without a score or a whole file, and the rerun scores all 40."""
    photos, out = noise_photos(tmp_path / "photos", 40, size=(1024, 768)), tmp_path / "out"
    flags = [str(photos), "--out", str(out), "--batch-size", "2"]
    proc = subprocess.Popen([sys.executable, "-c", "import sys, predict; predict.SAVE_SECONDS = 0; predict.main()",
                             *flags], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600  # a loaded machine starts slowly
    while time.time() < deadline and proc.poll() is None and len(scored_rows(out)) < 3:
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read()  # mid-job
    proc.kill()
    proc.wait()
    scored = {r["mask"] for r in scored_rows(out)}
    assert 3 <= len(scored) < 40
    kept = {m for m in scored if (out / m).exists()}  # a score is added as its mask's write is queued
    result = subprocess.run([sys.executable, "predict.py", *flags, "--skip-existing"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert f"wrote {40 - len(kept)} masks to {out}/ ({len(kept)} skipped" in result.stdout
    assert len(scored_rows(out)) == len(list(out.glob("*_segmentation.png"))) == 40 and all_outputs_whole(out)


def scored_rows(out):
    """out/unsure.csv's rows, none before it is first written (it is replaced whole: never read half-written)."""
    return saving.read_csv(out / "unsure.csv") if (out / "unsure.csv").exists() else []


def test_a_full_disk_is_one_sentence_with_the_count_and_no_partial_file(checkpoint, tmp_path, small_disk):
    disk, _ = small_disk  # 1 MB: a few 300x300 noise overlays (about 200 KB each) fit
    photos = noise_photos(tmp_path / "photos", 12)
    with pytest.raises(StorageError) as e:
        predict.main([str(photos), "--checkpoint", str(checkpoint), "--out", str(disk / "out"), "--overlay",
                      "--device", "cpu"])
    written = len(list((disk / "out").glob("*_overlay.jpg")))
    assert 1 <= written < 12 and len(str(e.value).splitlines()) == 1
    assert str(e.value).startswith(f"no space left in {disk / 'out'}/: wrote {written} of 12 masks, and no partial "
                                   "file;") and "--skip-existing" in str(e.value)
    assert all_outputs_whole(disk / "out")


def test_an_output_folder_inside_the_inputs_is_refused_and_nothing_is_written(checkpoint, tmp_path):
    photos = noise_photos(tmp_path / "photos", 2, size=(40, 30))
    truth = photos / "p000_segmentation.png"  # a user's own file, named as predict.py names its masks
    Image.fromarray(np.full((30, 40), 255, np.uint8)).save(truth)
    before = truth.read_bytes()
    for out, inputs in ((photos, [str(photos)]), (photos / "masks", [str(photos)]),
                        (photos, [str(photos / "p000.png")])):
        with pytest.raises(UsageError, match="inside the input folder .*choose an --out outside it"):
            predict.main([*inputs, "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu"])
    assert truth.read_bytes() == before and sorted(p.name for p in photos.iterdir()) == [
        "p000.png", "p000_segmentation.png", "p001.png"]


def test_skip_existing_redoes_outputs_that_do_not_decode_whole(checkpoint, tmp_path):
    photos, out = noise_photos(tmp_path / "photos", 5, size=(64, 48)), tmp_path / "out"
    command = [str(photos), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu"]
    predict.main(command)
    (out / "p001_segmentation.png").write_bytes(b"")  # emptied
    cut = out / "p002_segmentation.png"
    cut.write_bytes(cut.read_bytes()[:60])  # cut short
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(out / "p003_segmentation.png")  # another image's size
    result = subprocess.run([sys.executable, "predict.py", *command, "--skip-existing"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "p001_segmentation.png: does not decode whole at 64x48; writing it again" in result.stdout
    assert f"wrote 3 masks to {out}/ (2 skipped: already in {out}/)" in result.stdout
    assert all_outputs_whole(out) and all(Image.open(p).size == (64, 48) for p in out.glob("*.png"))


def test_a_run_killed_mid_write_leaves_temporaries_that_the_next_run_removes(tmp_path):
    photos, out = noise_photos(tmp_path / "photos", 30, size=(1024, 768)), tmp_path / "out"
    command = [sys.executable, "predict.py", str(photos), "--out", str(out), "--overlay"]
    for _ in range(10):  # kill -9 the moment a temporary file exists: it then stays behind
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not list(out.glob(".*.tmp")):
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if list(out.glob(".*.tmp")):
            break
    left = list(out.glob(".*.tmp"))
    assert left, "no kill landed mid-write in 10 tries"
    result = subprocess.run(command + ["--skip-existing"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"removed {len(left)} temporary files of a run that was killed" in result.stdout
    assert all_outputs_whole(out) and len(list(out.glob("*_overlay.jpg"))) == 30


def test_watch_segments_a_photo_copied_in_slowly_once_and_whole_and_stops_on_ctrl_c(tmp_path):
    """--watch with --out the watched folder itself: a photo written in four chunks 0.3 s apart is segmented once,
    whole, and ranked in unsure.csv at once; its own outputs are never taken for photos, and SIGINT stops it with
    nothing half-written."""
    clinic = tmp_path / "clinic"
    clinic.mkdir()
    proc = subprocess.Popen([sys.executable, "predict.py", str(clinic), "-o", str(clinic), "--watch", "--overlay"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while "watching" not in (line := proc.stdout.readline()):
            assert line, proc.stderr.read()
        photo = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(photo, "JPEG")
        data = photo.getvalue()
        with open(clinic / "new.jpg", "wb") as f:
            for k in range(4):  # a copy in progress: the first chunks alone do not decode whole
                f.write(data[k * len(data) // 4:(k + 1) * len(data) // 4])
                f.flush()
                time.sleep(0.3)
        assert proc.stdout.readline().strip() == f"{clinic / 'new.jpg'} -> {clinic / 'new'}_segmentation.png"
        with Image.open(clinic / "new_segmentation.png") as mask:
            assert mask.size == (400, 300)
        assert [r["mask"] for r in saving.read_csv(clinic / "unsure.csv")] == ["new_segmentation.png"]  # ranked now
        time.sleep(1)  # the watcher sees its own outputs in the folder now, and must leave them alone
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.strip().splitlines() == [f"stopped watching: wrote 1 more mask to {clinic}/"]
    assert sorted(p.name for p in clinic.iterdir()) == ["new.jpg", "new_overlay.jpg", "new_segmentation.png",
                                                        "unsure.csv"]
    assert all_outputs_whole(clinic)


def jpeg_bytes(seed, size=(400, 300)):
    photo = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(photo, "JPEG")
    return photo.getvalue()


def start_watching(clinic):
    """(predict.py --watch on clinic, its outputs beside the photos, once it says it is watching; its next line
    within a minute, or an assertion error)."""
    proc = subprocess.Popen([sys.executable, "predict.py", str(clinic), "-o", str(clinic), "--watch"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def next_line():
        try:
            return lines.get(timeout=60)
        except queue.Empty:
            raise AssertionError("predict.py --watch said nothing for a minute") from None
    while "watching" not in next_line():
        pass
    return proc, next_line


def test_watch_retries_a_photo_still_arriving_renews_a_replaced_one_and_takes_photos_named_like_outputs(tmp_path):
    """Half a JPEG, the rest 3 s later (past SETTLE): reported, then segmented once whole. A photo copied over with
    another: a new mask. The user's own lesion_overlay.jpg (no lesion.* beside it): a photo, as a plain run takes
    it. SIGTERM, as a service manager stops it, ends it with its summary line."""
    clinic = tmp_path / "clinic"
    clinic.mkdir()
    (clinic / "lesion_overlay.jpg").write_bytes(jpeg_bytes(3))
    proc, next_line = start_watching(clinic)
    try:
        data = jpeg_bytes(0)
        (clinic / "late.jpg").write_bytes(data[:len(data) // 2])
        assert next_line().startswith(f"{clinic / 'late.jpg'}: ")  # unreadable for now
        (clinic / "late.jpg").write_bytes(data)
        assert next_line().strip() == f"{clinic / 'late.jpg'} -> {clinic / 'late'}_segmentation.png"
        first = (clinic / "late_segmentation.png").read_bytes()
        (clinic / "late.jpg").write_bytes(jpeg_bytes(1, (300, 200)))  # replaced in place by another photo
        assert next_line().strip() == f"{clinic / 'late.jpg'} -> {clinic / 'late'}_segmentation.png"
        with Image.open(clinic / "late_segmentation.png") as mask:
            assert mask.size == (300, 200) and (clinic / "late_segmentation.png").read_bytes() != first
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and next_line().strip() == f"stopped watching: wrote 2 more masks to {clinic}/"
    assert (clinic / "lesion_overlay_segmentation.png").exists()  # the first pass segmented the user's photo


def test_sigterm_ends_a_plain_run_as_ctrl_c_does(tmp_path):
    photos, out = noise_photos(tmp_path / "photos", 40, size=(1024, 768)), tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "predict.py", str(photos), "--out", str(out), "--batch-size", "2"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and len(list(out.glob("*_segmentation.png"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    written = len(list(out.glob("*_segmentation.png")))
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (f"interrupted: wrote {written} of 40 masks to {out}/; run the same "
                                            "command with --skip-existing to continue")
    assert all_outputs_whole(out)


def test_a_photos_corrupt_exif_warning_names_the_photo(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x010F] = "Camera"
    for name in ("a.jpg", "b.jpg"):  # the EXIF block cut short: PIL warns "Corrupt EXIF data" and reads on
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / name, exif=exif.tobytes()[:20])
    result = subprocess.run([sys.executable, "predict.py", str(folder), "-o", str(tmp_path / "out")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "Corrupt EXIF" in line]
    assert sorted(line.split(":")[0] for line in lines) == [str(folder / "a.jpg"), str(folder / "b.jpg")], lines

"""Damaged and hostile files, and what a user types: a flipped byte in a checkpoint, two predict.py processes
writing into one folder, a file replaced in place under the cache, EPS bytes named .jpg, folders named like
images, configs and flags that cannot work, a port in use and paths with spaces. Each is the real fault."""
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from PIL import Image

import evaluate
import predict
import train
from lib import cli, decoding, layouts
from lib.errors import DataError, ModelFileError
from lib.checkpoints import load_checkpoint, sealed

from model import DECODER_WIDTHS, MobileNetSegmenter

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n"


def run(*args):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def one_line_error(result, *phrases):
    """The run failed with one line on stderr, no traceback, that says each phrase."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and "Traceback" not in result.stderr and lines, result.stderr
    assert all(p in lines[-1] for p in phrases), lines[-1]
    return True


def one_line_exit(main, argv, *phrases):
    """main(argv), run by its script's entry point in this process (no second start of torch), ends with one line,
    no traceback, that says each phrase."""
    with pytest.raises(SystemExit) as stop:
        cli.run(lambda: main(argv))
    message = str(stop.value.code)
    assert message.startswith("error: ") and "\n" not in message.strip() and all(p in message for p in phrases), message
    return True


def saved_checkpoint(path, **config_changes):
    config = {"skips": False, "freeze_encoder": False, "decoder_widths": list(DECODER_WIDTHS), "image_size": 64,
              "no_amp": False, "loss": "bce", **config_changes}
    state = MobileNetSegmenter("none").state_dict()
    torch.save(sealed({"config": config, "model": state}), path)
    return path


def test_a_flipped_byte_in_a_checkpoints_weights_is_refused(tmp_path):
    path = saved_checkpoint(tmp_path / "best.pt")
    load_checkpoint(path)  # intact: loads
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # in the middle of the weights
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match="damaged"):
        load_checkpoint(path)


@pytest.mark.parametrize("changes, phrase", [({"skips": None}, "KeyError"), ({"image_size": 100}, "multiple of 32"),
                                             ({"threshold": float("nan")}, "strictly between 0 and 1"),
                                             ({"edge_move": 0.9}, "share of the mask's radius from -0.5 to 0.5"),
                                             ({"edge_move": "in"}, "share of the mask's radius from -0.5 to 0.5")])
def test_a_checkpoint_with_a_config_that_cannot_work_is_one_sentence(tmp_path, changes, phrase):
    path = saved_checkpoint(tmp_path / "odd.pt", **changes)
    if changes.get("skips", 0) is None:  # a config without the key at all
        ckpt = torch.load(path, weights_only=True)
        del ckpt["config"]["skips"]
        torch.save(sealed(ckpt), path)
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    argv = [str(tmp_path / "a.png"), "--checkpoint", str(path), "-o", str(tmp_path / "out")]
    assert one_line_exit(predict.main, argv, phrase)


def test_two_predict_processes_into_one_folder_both_finish(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (200, 260, 3), dtype=np.uint8)).save(photos / f"p{i:02d}.png")
    command = [sys.executable, "predict.py", str(photos), "-o", str(tmp_path / "out"), "--overlay",
               "--batch-size", "40"]
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    assert len(list((tmp_path / "out").glob("*_segmentation.png"))) == 40 and not list(
        (tmp_path / "out").glob(".*.tmp"))


def test_an_image_replaced_in_place_with_its_old_length_and_time_is_decoded_again(synthetic, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic[0], data)
    first = decoding.load_split(data, "test", 32, tmp_path / "cache")
    path = layouts.find_pairs(data, "test")[0][1]
    before, length = os.stat(path), path.stat().st_size
    with Image.open(path) as im:
        flipped = im.transpose(Image.FLIP_LEFT_RIGHT)
    flipped.save(tmp_path / "new.jpg", quality=90)
    raw = (tmp_path / "new.jpg").read_bytes()[:length]
    path.write_bytes(raw + b"\0" * (length - len(raw)))  # a JPEG of the same length (padding after its end)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and its old modification time
    again = decoding.load_split(data, "test", 32, tmp_path / "cache")
    assert not torch.equal(first["images"][0], again["images"][0])


def test_eps_bytes_named_jpg_are_never_decoded(synthetic, tmp_path):
    (tmp_path / "photo.jpg").write_bytes(EPS)
    result = run("predict.py", tmp_path / "photo.jpg", "-o", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr and "Ghostscript" not in result.stderr
    assert "error: 1 of 1 image not segmented" in result.stderr
    assert f"{tmp_path / 'photo.jpg'}: not an image of a format read here" in result.stderr
    data = tmp_path / "data"
    shutil.copytree(synthetic[0], data)
    image = layouts.find_pairs(data, "test")[0][1]
    image.write_bytes(EPS)
    with pytest.raises(DataError, match=f"cannot read image {image}: not an image of a format read here"):
        decoding.load_split(data, "test", 32, tmp_path / "cache")


def test_folders_named_like_images_are_searched_and_gifs_are_read_alike(synthetic, tmp_path):
    folder = tmp_path / "photos"
    (folder / "x.jpg").mkdir(parents=True)  # a folder named like an image, an image inside it
    source = sorted((synthetic[0] / layouts.SPLITS["test"][0]).glob("*.jpg"))[0]
    shutil.copy(source, folder / "x.jpg" / "inner.jpg")
    frames = [Image.open(source).convert("P"), Image.open(source).convert("P").rotate(90)]
    frames[0].save(folder / "moving.gif", save_all=True, append_images=frames[1:])
    predict.main([str(folder), "-o", str(tmp_path / "out")])
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png")) == [
        "moving_segmentation.png", "x.jpg/inner_segmentation.png"]
    data = tmp_path / "data"
    shutil.copytree(synthetic[0], data)
    (data / layouts.SPLITS["test"][0] / "folder.jpg").mkdir()
    assert len(layouts.find_pairs(data, "test")) == len(layouts.find_pairs(synthetic[0], "test"))


@pytest.mark.parametrize("content, phrase", [("{not json", "cannot be read as JSON"),
                                             ("[1, 2]", "holds a JSON list")])
def test_train_config_that_is_not_a_runs_flags_is_one_sentence(tmp_path, content, phrase):
    (tmp_path / "config.json").write_text(content)
    argv = ["--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "run")]
    assert one_line_exit(train.main, argv, phrase)


def test_evaluate_refuses_a_threshold_outside_zero_to_one(tmp_path):
    assert one_line_exit(evaluate.main, ["--threshold", "nan", "--out", str(tmp_path)], "strictly between 0 and 1")


def test_serve_on_a_port_in_use_or_out_of_range_says_so(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert one_line_error(run("tools/serve.py", "--port", port), f"cannot listen on 127.0.0.1:{port}", "PORT=")
    result = run("tools/serve.py", "--port", "99999")
    assert result.returncode == 2 and "a port is a whole number from 0 to 65535" in result.stderr


def test_make_takes_paths_with_spaces(synthetic, tmp_path):
    if not (ROOT / ".venv" / "predict-installed").exists():
        pytest.skip("make predict's .venv is not set up (make test sets it up)")
    photos = tmp_path / "my photos"
    photos.mkdir()
    for p in sorted((synthetic[0] / layouts.SPLITS["test"][0]).glob("*.jpg"))[:2]:
        shutil.copy(p, photos)
    out = tmp_path / "my masks"
    result = subprocess.run(["make", "-s", "predict", f"INPUT={photos}/", f"OUT={out}"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("*_segmentation.png"))) == len(list(out.glob("*_overlay.jpg"))) == 2
    dry = subprocess.run(["make", "-n", "exp1-bce", "cross-dataset", f"DATA_DIR={tmp_path}/my data",
                          f"RUNS={tmp_path}/my runs", f"CHECKPOINT={tmp_path}/my model.pt"], cwd=ROOT,
                         capture_output=True, text=True)
    assert f'--data-dir "{tmp_path}/my data"' in dry.stdout and f'--out "{tmp_path}/my runs/exp1-bce"' in dry.stdout
    assert f'--checkpoint "{tmp_path}/my model.pt"' in dry.stdout, dry.stdout

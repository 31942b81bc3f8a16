"""make calibrate on the light install (tools/calibrate.py): no PyTorch, the same edge move and held-out images as
adapt.py's calibration, and a calibrated .onnx that make predict uses."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REAL_DATA, ROOT, without_torch
from PIL import Image

import data
from lib import annotators, layouts, model_files, readers
from lib.masks import move_edge
from lib.segmenter import Segmenter
from lib.splits import labelled_pairs


@pytest.fixture(scope="module")
def tighter_folder(tmp_path_factory):
    """A plain images/ + masks/ folder of 15 real ISIC test images whose masks a tighter annotator drew."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"{REAL_DATA} not present: the real ISIC 2016 images are only on development and CI machines")
    folder = tmp_path_factory.mktemp("tighter")
    for sub in ("images", "masks"):
        (folder / sub).mkdir()
    for i, image, mask in layouts.find_pairs(REAL_DATA, "test")[:15]:
        shutil.copy(image, folder / "images" / image.name)
        tight = annotators.tighter(readers.read_binary_mask(mask))
        Image.fromarray(tight.astype(np.uint8) * 255).save(folder / "masks" / f"{i}.png")
    return folder


def run_without_torch(tmp_path, *args):
    """tools/calibrate.py where `import torch` fails, as on the light install (requirements-predict.txt)."""
    return subprocess.run([sys.executable, str(ROOT / "tools" / "calibrate.py"), *map(str, args)],
                          env=without_torch(tmp_path), capture_output=True, text=True, cwd=ROOT)


def test_make_calibrate_needs_no_torch_and_writes_a_calibrated_onnx(tighter_folder, tmp_path):
    out = tmp_path / "calibrate"
    result = run_without_torch(tmp_path, "--data-dir", tighter_folder, "--out", out)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "calibrate.json").read_text())
    assert report["edge_move"] > 0 and report["held_out"] == 3  # a tighter annotator: the edge moves in
    card = (out / "README.md").read_text()
    assert f"`make predict INPUT=photos/ CHECKPOINT={out / 'model.onnx'}`" in card.split("\n")[2]
    calibrated, released = Segmenter.load([out / "model.onnx"]), Segmenter.load()
    assert calibrated.edge_move == report["edge_move"] and calibrated.threshold == 0.5
    photo = readers.read_full_image(next((tighter_folder / "images").iterdir()))
    assert np.array_equal(calibrated.segment(photo), move_edge(released.segment(photo), report["edge_move"]))
    model_files.check_seal(out / "model.onnx")  # sealed anew after its metadata changed
    again = run_without_torch(tmp_path, "--data-dir", tighter_folder, "--out", out)
    assert again.returncode == 1 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_make_calibrate_holds_out_and_moves_as_adapt_does(tighter_folder, tmp_path):
    """The light tool and adapt.py's calibration (PyTorch, the .pt) hold out the same images of a folder without
    a split and find the same edge move, with held-out scores equal within the two runtimes' difference."""
    held = data.load_splits(tighter_folder, 128, 0, 0, tmp_path / "cache", draft=False)["test"]["ids"]
    light = run_without_torch(tmp_path, "--data-dir", tighter_folder, "--out", tmp_path / "light")
    torch_run = subprocess.run([sys.executable, str(ROOT / "tools" / "adapt.py"), "--data-dir", str(tighter_folder),
                                "--out", str(tmp_path / "torch"), "--cache-dir", str(tmp_path / "cache")],
                               capture_output=True, text=True, cwd=ROOT)
    assert light.returncode == 0 and torch_run.returncode == 0, light.stderr + torch_run.stderr
    ours, theirs = (json.loads(p.read_text()) for p in (tmp_path / "light" / "calibrate.json",
                                                       tmp_path / "torch" / "adapt.json"))
    assert [i for i, _, _ in labelled_pairs(tighter_folder)[1]] == held
    assert ours["edge_move"] == theirs["edge_move"] and ours["held_out"] == theirs["held_out"] == len(held)
    for row, theirs_row in zip(ours["comparisons"].values(), theirs["comparisons"].values()):
        assert row["new"] == pytest.approx(theirs_row["new"], abs=2e-3)


def test_make_calibrate_refuses_a_pytorch_checkpoint_in_one_sentence(tighter_folder, tmp_path):
    result = run_without_torch(tmp_path, "--data-dir", tighter_folder, "--checkpoint", model_files.PT,
                               "--out", tmp_path / "x")
    assert result.returncode == 1 and "make export" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    card = model_files.FOLDER / "README.md"  # no model at all: no advice to export it
    result = run_without_torch(tmp_path, "--data-dir", tighter_folder, "--checkpoint", card, "--out", tmp_path / "x")
    assert result.returncode == 1 and "is not a model" in result.stderr and "make export" not in result.stderr


def disc_folder(folder, n, radius=lambda i: 60 + 5 * i):
    """A plain folder of n noise images with a disc as each mask (radius(i) 0: an empty mask)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :300]
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(folder / "images" / f"p{i}.png")
        Image.fromarray(((yy - 150) ** 2 + (xx - 150) ** 2 < radius(i) ** 2).astype(np.uint8) * 255).save(
            folder / "masks" / f"p{i}.png")
    return folder


def test_make_calibrate_refuses_what_cannot_calibrate_in_one_sentence(tmp_path, small_disk, tighter_folder):
    """The guarantees make calibrate gave when it ran on PyTorch (docs/faults.md): one-value masks, a single image,
    a full disk (real photos: the model finds no lesion in noise), each one sentence and no model left behind."""
    cases = [(disc_folder(tmp_path / "flat", 10, lambda i: 0 if i < 7 else 60), tmp_path / "a",
              "masks in", "all lesion or all background"),
             (disc_folder(tmp_path / "one", 1), tmp_path / "b", "1 labelled training image(s)", "at least 2"),
             (tighter_folder, small_disk[0] / "c", "no space left to write", "model.onnx")]
    for folder, out, *phrases in cases:
        result = run_without_torch(tmp_path, "--data-dir", folder, "--out", out)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and all(p in lines[0] for p in phrases), result.stderr
        assert not (out / "model.onnx").exists()


def test_make_calibrate_refuses_inverted_masks_and_masks_of_another_size(tighter_folder, tmp_path):
    """Masks drawn black on white (HAM10000's palette read by index gave these) would ship a model whose edge moves
    out by 16%; a mask of another size would be scored against the wrong pixels: each one sentence, no model
    written."""
    inverted, half = tmp_path / "inverted", tmp_path / "half"
    for folder in (inverted, half):
        shutil.copytree(tighter_folder, folder)
    for path in (inverted / "masks").iterdir():
        Image.fromarray(~readers.read_binary_mask(path)).save(path)
    one = sorted((half / "masks").iterdir())[3]
    Image.fromarray(readers.read_binary_mask(one)).resize((128, 128)).save(one)  # half-size
    for folder, phrase in ((inverted, "inverted"), (half, "size mismatch in 1 of")):
        result = run_without_torch(tmp_path, "--data-dir", folder, "--out", tmp_path / folder.name / "out")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and phrase in lines[0], result.stderr
        assert not (tmp_path / folder.name / "out" / "model.onnx").exists()


def test_calibrating_a_calibrated_model_starts_from_its_move_and_keeps_its_threshold(tighter_folder, tmp_path):
    """The card's 'before' is the model given (its move, its threshold), not the released one; a second calibration
    on the same images keeps the first's move, and a threshold of 0.3 stays 0.3."""
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    assert run_without_torch(tmp_path, "--data-dir", tighter_folder, "--out", first).returncode == 0
    report = json.loads((first / "calibrate.json").read_text())
    result = run_without_torch(tmp_path, "--data-dir", tighter_folder, "--checkpoint", first / "model.onnx",
                               "--out", second)
    assert result.returncode == 0, result.stderr
    again = json.loads((second / "calibrate.json").read_text())
    before, after = report["comparisons"].values()
    assert again["comparisons"]["before"]["new"] == pytest.approx(after["new"])  # the given model, as it scores
    assert again["comparisons"]["before"]["new"] != pytest.approx(before["new"])
    assert again["edge_move"] == report["edge_move"] and again["calibration"]["neutral"] == report["edge_move"]
    low = tmp_path / "low.onnx"
    low.write_bytes(model_files.with_metadata(model_files.ONNX.read_bytes(), {"threshold": "0.3"}))
    assert run_without_torch(tmp_path, "--data-dir", tighter_folder, "--checkpoint", low, "--out", third).returncode == 0
    assert Segmenter.load([third / "model.onnx"]).threshold == 0.3

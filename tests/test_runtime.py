"""The light runtime: the released ONNX model on ONNX Runtime with PyTorch unimportable, its masks against the
PyTorch path's, the one loaded-model object (segmenter.Segmenter) and the checks on the files it loads."""
import fcntl
import io
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_DATA, ROOT
from PIL import Image

import predict
from lib import layouts, masks, model_files, readers, saving
from lib.errors import ModelFileError, UsageError
from lib.photos import output_stem
from lib.segmenter import Segmenter

# Runs a script as `python SCRIPT ARGS...` would, with torch and torchvision made unimportable
WITHOUT_TORCH = ("import runpy, sys; sys.modules.update(torch=None, torchvision=None); script = sys.argv[1]; "
                 "sys.argv = sys.argv[1:]; sys.path.insert(0, '.'); runpy.run_path(script, run_name='__main__')")


def run_without_torch(*args):
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True)


def test_the_released_onnx_file_is_what_its_card_says():
    card = saving.read_json(model_files.FOLDER / "card.json")
    assert card["onnx"]["sha256"] == model_files.sha256(model_files.ONNX) and card["onnx"]["bytes"] == \
        model_files.ONNX.stat().st_size
    assert f"`{card['onnx']['sha256']}`" in (model_files.FOLDER / "README.md").read_text()
    assert sum(f.stat().st_size for f in model_files.FOLDER.iterdir()) <= 16 * 2 ** 20


def read_masks(folder, names):
    return [np.asarray(Image.open(folder / f"{n}_segmentation.png")) > 0 for n in names]


def test_predict_without_torch_writes_the_masks_of_the_torch_path(synthetic, tmp_path):
    folder = REAL_DATA if REAL_DATA.is_dir() else synthetic[0]  # with ../shared: 40 real ISIC test images
    inputs = tmp_path / "photos"
    inputs.mkdir()
    for photo in sorted((folder / layouts.SPLITS["test"][0]).glob("*.jpg"))[:40]:
        (inputs / photo.name).symlink_to(photo)
    photos = sorted(inputs.glob("*.jpg"))
    light = run_without_torch("predict.py", inputs, "-o", tmp_path / "onnx", "--tta", "--largest-component",
                              "--overlay")
    assert light.returncode == 0 and f"wrote {len(photos)} masks" in light.stdout, light.stderr
    heavy = subprocess.run([sys.executable, "predict.py", inputs, "-o", tmp_path / "torch", "--tta",
                            "--largest-component", "--checkpoint", model_files.PT, "--device", "cpu"], cwd=ROOT,
                           capture_output=True, text=True)
    assert heavy.returncode == 0, heavy.stderr
    names = [p.stem for p in photos]
    ious = [(a & b).sum() / max((a | b).sum(), 1)
            for a, b in zip(read_masks(tmp_path / "onnx", names), read_masks(tmp_path / "torch", names))]
    assert len(ious) == len(photos) and np.mean(ious) >= 0.999, np.mean(ious)
    assert all((tmp_path / "onnx" / f"{output_stem(p.name)}_overlay.jpg").stat().st_size > 0 for p in photos)


def test_a_pt_file_without_torch_is_one_sentence_on_what_to_install(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    result = run_without_torch("predict.py", tmp_path / "a.jpg", "--checkpoint", model_files.PT)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "PyTorch is not installed here" in result.stderr and "requirements.txt" in result.stderr


def test_segment_takes_paths_pil_images_and_arrays_alike_and_leaves_them_as_they_are(synthetic):
    segmenter = Segmenter.load()
    path = sorted((synthetic[0] / layouts.SPLITS["test"][0]).glob("*.jpg"))[0]
    expected = segmenter.segment(path)
    with Image.open(path) as im:
        size = im.size
        assert np.array_equal(segmenter.segment(im), expected) and im.size == size
        array = np.asarray(im.convert("RGB"))
    before = array.copy()
    assert np.array_equal(segmenter.segment(array), expected) and np.array_equal(array, before)
    grey = array.mean(2).astype(np.uint8)  # a grey [H,W] array is the photo with three equal channels
    assert np.array_equal(segmenter.segment(grey), segmenter.segment(np.repeat(grey[..., None], 3, 2)))
    with pytest.raises(Exception, match="uint8"):
        segmenter.segment(array.astype(np.float32))


def test_a_flipped_byte_in_a_released_file_is_refused(tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(model_files.FOLDER, copy)
    Segmenter.load([copy / "lesion_segmenter.onnx"])  # an intact copy loads
    for name in ("lesion_segmenter.onnx", "lesion_segmenter.pt"):
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0x10
        (copy / name).write_bytes(data)
        with pytest.raises(ModelFileError, match="damaged or was changed.*git checkout models/"):
            Segmenter.load([copy / name])


def test_a_damaged_copy_of_a_model_elsewhere_under_any_name_is_refused(synthetic, tmp_path):
    """The file checks itself: a flipped byte in a copy outside models/, renamed, with no card beside it, is one
    sentence from predict.py (on ONNX Runtime without torch, and on PyTorch), not masks from damaged weights."""
    photo = sorted((synthetic[0] / layouts.SPLITS["test"][0]).glob("*.jpg"))[0]
    for source, name in ((model_files.ONNX, "mine.onnx"), (model_files.PT, "mine.pt")):
        data = bytearray(source.read_bytes())
        intact = tmp_path / f"intact-{name}"
        intact.write_bytes(data)
        Segmenter.load([intact], "cpu")  # an intact copy loads
        data[int(len(data) * 0.6)] ^= 0x10  # inside the weights
        damaged = tmp_path / name
        damaged.write_bytes(data)
        result = subprocess.run([sys.executable, "predict.py", str(photo), "--checkpoint", str(damaged), "-o",
                                 str(tmp_path / "out"), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and "is damaged" in lines[0], result.stderr
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_changed_byte_in_a_copys_seal_key_or_config_is_refused(tmp_path):
    """The seal covers every byte that changes what a model computes: in a copy with no card beside it, the .onnx
    seal's own key (sealed -> semled) and the .pt config's image_size (128 -> 160) are each refused."""
    onnx = bytearray(model_files.ONNX.read_bytes())
    at = onnx.rindex(b"sealed_sha256")
    onnx[at + 2] = ord("m")
    (tmp_path / "key.onnx").write_bytes(onnx)
    pt = bytearray(model_files.PT.read_bytes())
    at = pt.index(b"image_sizeq")  # the pickle: the key, a memo opcode and its index, then K (a byte) and 128
    at = pt.index(b"K\x80", at)
    pt[at + 1] = 160
    (tmp_path / "config.pt").write_bytes(pt)
    for name in ("key.onnx", "config.pt"):
        with pytest.raises(ModelFileError, match="is damaged"):
            Segmenter.load([tmp_path / name], "cpu")


def test_the_released_files_carry_their_own_checks():
    """The released .pt holds the seal of its weights and config and the .onnx file its seal, so copies check
    themselves."""
    assert "seal" in pt_keys(model_files.PT)
    sealed = model_files.seal_of(model_files.ONNX.read_bytes())
    assert sealed is not None and sealed[0] == sealed[1]


def pt_keys(path):
    """The keys of a .pt file's top-level dict."""
    import torch
    return set(torch.load(path, map_location="cpu", weights_only=True))


@pytest.mark.parametrize("value", ["nan", "inf", "2", "-1", "0", "1"])
def test_a_threshold_outside_zero_to_one_is_refused(value, tmp_path):
    result = run_without_torch("predict.py", tmp_path, "--threshold", value)
    assert result.returncode == 1 and "strictly between 0 and 1" in result.stderr and "Traceback" not in result.stderr
    assert masks.checked_threshold("0.3") == 0.3


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="needs ../shared/isic2016")
def test_make_predicts_masks_score_what_the_card_says(tmp_path):
    """The number a user is shown is the number of what the user runs: predict.py's mask files on the 339 test
    images, scored as the official ISIC scorer scores them (each image's Jaccard and Dice, then the mean), equal
    the card's to 1e-4 (its ONNX Runtime and its PyTorch numbers)."""
    card = saving.read_json(model_files.FOLDER / "card.json")
    test_images, truths = (REAL_DATA / folder for folder in layouts.SPLITS["test"])
    result = run_without_torch("predict.py", test_images, "-o", tmp_path / "masks", "--tta", "--largest-component")
    assert result.returncode == 0, result.stderr
    jaccard, dice = [], []
    for truth_file in sorted(truths.glob("*.png")):
        truth = np.asarray(Image.open(truth_file)) > 127
        name = truth_file.name.replace(layouts.MASK_SUFFIX, "")
        mask = np.asarray(Image.open(tmp_path / "masks" / f"{output_stem(name + '.jpg')}_segmentation.png")) > 127
        both, either = (mask & truth).sum(), (mask | truth).sum()
        jaccard.append(both / either)
        dice.append(2 * both / (mask.sum() + truth.sum()))
    assert len(jaccard) == card["test_images"]
    assert np.mean(jaccard) == pytest.approx(card["onnx"]["test_iou"], abs=1e-4)
    assert np.mean(jaccard) == pytest.approx(card["test"]["iou"], abs=1e-4)
    assert np.mean(dice) == pytest.approx(card["test"]["dice"], abs=1e-4)


def test_an_ensemble_of_onnx_files_is_refused_with_what_to_do():
    with pytest.raises(UsageError, match="export it as one ONNX file"):
        Segmenter.load([model_files.ONNX, model_files.ONNX])


def onnx_file(path, module, input_size, metadata_size):
    """A real ONNX file of `module` taking images [N,3,input_size,input_size], its metadata saying metadata_size."""
    import onnx
    import torch
    torch.onnx.export(module.eval(), (torch.rand(1, 3, input_size, input_size),), str(path), input_names=["images"],
                      dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"image_size": str(metadata_size)})
    onnx.save(model, str(path))
    return path


def test_an_onnx_file_of_another_shape_is_one_sentence(synthetic, tmp_path):
    import torch
    photo = sorted((synthetic[0] / layouts.SPLITS["test"][0]).glob("*.jpg"))[0]
    two_channels = onnx_file(tmp_path / "two.onnx", torch.nn.Conv2d(3, 2, 1), 128, 128)
    classifier = onnx_file(tmp_path / "classes.onnx", torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1),
                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()), 128, 128)
    bigger = onnx_file(tmp_path / "bigger.onnx", torch.nn.Conv2d(3, 1, 1), 256, 128)
    for model in (two_channels, classifier, bigger):
        for tta in ([], ["--tta"]):
            result = subprocess.run([sys.executable, "predict.py", str(photo), "--checkpoint", str(model), "-o",
                                     str(tmp_path / "out"), *tta], cwd=ROOT, capture_output=True, text=True)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 1 and len(lines) == 1, result.stderr
            assert f"{model} does not fit its metadata (image_size 128)" in lines[0]


def reference_outputs(segmenter, path):
    """An image's mask and overlay bytes by the plain path make predict took before it was made fast: decoded whole
    by read_full_image, resized by model_input, the contour drawn in numpy, both encoded by PIL."""
    photo = readers.read_full_image(path)
    prob = segmenter.probabilities(readers.model_input(photo, segmenter.image_size)[None], tta=True)[0]
    mask = masks.mask_at_size(prob, photo.shape[1], photo.shape[0], segmenter.threshold, True, segmenter.edge_move)
    drawn = photo.copy()
    drawn[masks.outline(mask, masks.contour_width(*mask.shape))] = (255, 0, 0)
    jpeg = io.BytesIO()
    Image.fromarray(drawn).save(jpeg, format="JPEG", quality=masks.OVERLAY_QUALITY, subsampling=0)
    return mask, jpeg.getvalue()


def test_the_fast_pipeline_writes_the_reference_paths_masks_and_overlays_exactly(synthetic, tmp_path):
    """make predict's one decode per photo, its masks made in threads, its own PNG writer, the contour pasted by
    PIL and the JPEG encoded into a file in memory give, byte for byte, the overlays and, pixel for pixel, the masks
    of the plain path: on real ISIC photos, a phone photo turned by its EXIF orientation, a 16-bit grey PNG and a
    large photo."""
    folder = REAL_DATA if REAL_DATA.is_dir() else synthetic[0]
    inputs = tmp_path / "photos"
    inputs.mkdir()
    for photo in sorted((folder / layouts.SPLITS["test"][0]).glob("*.jpg"))[:12]:
        shutil.copy(photo, inputs)
    rng = np.random.default_rng(0)
    big = np.asarray(Image.open(next(inputs.iterdir())).resize((1000, 750), Image.BICUBIC))
    exif = Image.Exif()
    exif[readers.ORIENTATION] = 6  # shown turned by 90 degrees
    Image.fromarray(big).save(inputs / "phone.jpg", exif=exif, quality=90)
    Image.fromarray(big).save(inputs / "big.jpg", quality=90)
    Image.fromarray((rng.random((90, 70)) * 65535).astype(np.uint16)).save(inputs / "grey16.png")
    predict.main([str(inputs), "-o", str(tmp_path / "out"), "--tta", "--largest-component", "--overlay",
                  "--batch-size", "5"])
    segmenter = Segmenter.load()
    for path in sorted(inputs.iterdir()):
        mask, overlay = reference_outputs(segmenter, path)
        name = tmp_path / "out" / output_stem(path.name)
        written = Image.open(f"{name}_segmentation.png")
        assert written.mode == "L" and set(np.unique(np.asarray(written))) <= {0, 255}, path.name
        assert np.array_equal(np.asarray(written) == 255, mask), path.name
        assert Path(f"{name}_overlay.jpg").read_bytes() == overlay, path.name
    assert Image.open(tmp_path / "out" / "phone_segmentation.png").size == (750, 1000)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (750, 1000)])
def test_mask_png_reads_back_as_8_bit_0_and_255_whatever_the_mask(shape, tmp_path):
    """What the official ISIC scorer requires of a mask: PIL mode L, values 0 and 255 only."""
    rng = np.random.default_rng(shape[0])
    for mask in (np.zeros(shape, bool), np.ones(shape, bool), rng.random(shape) > 0.5):
        (tmp_path / "m.png").write_bytes(masks.mask_png(mask))
        read = Image.open(tmp_path / "m.png")
        assert read.format == "PNG" and read.mode == "L" and read.size == shape[::-1]
        assert np.array_equal(np.asarray(read), mask.astype(np.uint8) * 255)
        assert readers.decodes_whole(tmp_path / "m.png", shape[::-1])


def read_all(fd):
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the terminal's other end closed
            return out
        if not chunk:
            return out
        out += chunk


def test_predict_shows_its_progress_bar_on_a_terminal_and_none_in_a_pipe(tmp_path):
    """make predict on a terminal (a real pseudo-terminal, 120 columns) draws tqdm's bar; with its output in a pipe
    or a log it prints the summary line alone (and tqdm is never imported: start-up)."""
    inputs = tmp_path / "photos"
    inputs.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (60, 80, 3), np.uint8)).save(inputs / f"{i}.jpg")
    command = [sys.executable, "predict.py", str(inputs), "--out", str(tmp_path / "masks")]
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(command, cwd=ROOT, stdout=follower, stderr=follower)
    os.close(follower)
    shown = read_all(leader).decode()
    os.close(leader)
    assert process.wait() == 0 and "predicting: 100%" in shown and "3/3" in shown, shown
    piped = subprocess.run([sys.executable, "-X", "importtime", *command[1:], "--out", str(tmp_path / "piped")],
                           cwd=ROOT, capture_output=True, text=True)  # importtime: each import on stderr
    said = [line for line in piped.stderr.splitlines() if not line.startswith("import time:")]
    assert piped.returncode == 0 and not said and piped.stdout.startswith("wrote 3 masks"), piped.stdout + "\n".join(said)
    assert "| tqdm" not in piped.stderr

"""The released model: in the repository as its card says, used by predict.py and torch.hub with no training."""
import hashlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import release
import torch
from conftest import REAL_DATA, ROOT
from PIL import Image

import predict
from data import split_to_score
from lib import layouts, readers, saving
from lib.checkpoints import load_checkpoint
from lib.errors import ModelFileError
from lib.metrics import per_image_metrics
from lib.model_files import PT as RELEASED
from lib.photos import output_stem
from lib.scoring import score_model
from lib.segmenter import Segmenter
from losses import LOSSES

CARD = ROOT / "models" / "card.json"


def test_the_released_file_is_what_its_card_says():
    card = saving.read_json(CARD)
    digest = hashlib.sha256(RELEASED.read_bytes()).hexdigest()
    assert card["sha256"] == digest and f"`{digest}`" in (ROOT / "models" / "README.md").read_text()
    assert RELEASED.stat().st_size == card["bytes"]
    ckpt = torch.load(RELEASED, weights_only=True)
    assert set(ckpt) <= {"config", "model", "seal"}  # the weights alone: no optimizer state, no history
    assert {v.dtype for v in ckpt["model"].values() if v.is_floating_point()} == {torch.float16}


def synthetic_photos(synthetic, folder, n=4):
    """n of the synthetic test images (dark ellipses on skin, varied sizes) copied to folder: [(path, truth)]."""
    return copied_photos(synthetic[0], folder, n)


def copied_photos(data_dir, folder, n):
    """n test images of data_dir copied to folder: [(path, boolean truth mask)]."""
    folder.mkdir()
    pairs = layouts.find_pairs(data_dir, "test")[:n]
    for _, image, _ in pairs:
        shutil.copy(image, folder)
    return [(folder / image.name, readers.read_binary_mask(mask)) for _, image, mask in pairs]


def ious_of_predict_without_checkpoint(photos, folder, tmp_path):
    """Per-image IoU of the masks `python predict.py FOLDER --out masks --tta --largest-component`, run from
    another folder as a user would (the released model is found from predict.py's own place), writes."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "predict.py"), str(folder), "--out", "masks", "--tta",
                             "--largest-component"], cwd=elsewhere, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ious = []
    for path, truth in photos:
        with Image.open(elsewhere / "masks" / f"{output_stem(path.name)}_segmentation.png") as m:
            mask = np.asarray(m) > 0
        assert mask.shape == truth.shape
        ious.append(per_image_metrics(torch.from_numpy(mask)[None, None], torch.from_numpy(truth)[None, None])
                    ["iou"].item())
    return ious


def test_predict_without_a_checkpoint_finds_the_lesions_of_images_the_test_writes(synthetic, tmp_path):
    photos = synthetic_photos(synthetic, tmp_path / "photos", n=8)
    ious = ious_of_predict_without_checkpoint(photos, tmp_path / "photos", tmp_path)
    # synthetic ellipses are not dermoscopy, yet most are found (an untrained model scores 0 here)
    assert np.median(ious) > 0.7, ious


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="needs ../shared/isic2016")
def test_predict_without_a_checkpoint_draws_real_lesions_well(tmp_path):
    photos = copied_photos(REAL_DATA, tmp_path / "photos", n=12)
    ious = ious_of_predict_without_checkpoint(photos, tmp_path / "photos", tmp_path)
    assert np.mean(ious) > 0.8, ious


def test_torch_hub_gives_the_released_model_and_its_masks_are_predicts(synthetic, tmp_path):
    model = torch.hub.load(str(ROOT), "lesion_segmenter", source="local")
    (path, _), = synthetic_photos(synthetic, tmp_path / "photos", n=1)
    predict.main([str(path), "--out", str(tmp_path / "masks"), "--tta", "--largest-component", "--device", "cpu",
                  "--checkpoint", str(RELEASED)])
    with Image.open(tmp_path / "masks" / f"{output_stem(path.name)}_segmentation.png") as m:
        expected = np.asarray(m) > 0
    assert model.runtime.name == "PyTorch" and np.array_equal(model.segment(path), expected)
    with Image.open(path) as im:
        assert np.array_equal(model.segment(im), expected)
    logits = model.runtime.model(torch.zeros(2, 3, model.image_size, model.image_size, dtype=torch.uint8))
    assert logits.shape == (2, 1, model.image_size, model.image_size)


def test_torch_hub_works_from_a_project_with_a_lib_package_of_its_own(synthetic, tmp_path):
    """A caller whose own `lib` package is imported first gets the segmenter, its masks, and its own `lib` back."""
    project = tmp_path / "project"
    (project / "lib").mkdir(parents=True)
    (project / "lib" / "__init__.py").write_text("MINE = True\n")
    (path, _), = synthetic_photos(synthetic, tmp_path / "photos", n=1)
    script = (f"import lib, torch\nm = torch.hub.load({str(ROOT)!r}, 'lesion_segmenter', source='local')\n"
              f"mask = m.segment({str(path)!r})\nimport lib\nprint(mask.shape, mask.any(), lib.MINE)")
    result = subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "True" and "True" in result.stdout.split()[-2]


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="needs ../shared/isic2016")
def test_the_released_model_scores_what_its_card_says(tmp_path):
    card = saving.read_json(CARD)
    model, config = load_checkpoint(RELEASED)
    split = split_to_score(REAL_DATA, "test", [config], tmp_path / "cache")[0]
    summary, _ = score_model(model, split, LOSSES[config["loss"]], 64, torch.device("cpu"), not config["no_amp"])
    assert summary["n_images"] == card["test_images"]
    assert summary["fullres_lcc_tta_iou"] == pytest.approx(card["test"]["iou"], abs=1e-4)
    assert summary["fullres_lcc_tta_dice"] == pytest.approx(card["test"]["dice"], abs=1e-4)


def test_release_writes_half_precision_weights_and_fills_the_cards_numbers(synthetic, checkpoint, tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    prose = f"# A card\n\nWords a person wrote.\n\n{release.NUMBERS_START}\nold\n{release.NUMBERS_END}\n\nEnd."
    (out / "README.md").write_text(prose)
    release.main(["--checkpoint", str(checkpoint), "--data-dir", str(synthetic[0]), "--out", str(out),
                  "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    card, text = saving.read_json(out / "card.json"), (out / "README.md").read_text()
    assert card["sha256"] == hashlib.sha256((out / "lesion_segmenter.pt").read_bytes()).hexdigest()
    assert text.startswith("# A card\n\nWords a person wrote.\n\n") and text.endswith("\n\nEnd.")
    assert "old" not in text and card["sha256"] in text and card["robustness"]["shifts"] == 18
    assert abs(card["test"]["iou"] - card["test_float32"]["iou"]) < release.MAX_HALF_PRECISION_LOSS
    assert (out / "worst_test_images.png").stat().st_size > 0
    assert card["onnx"]["sha256"] == hashlib.sha256((out / "lesion_segmenter.onnx").read_bytes()).hexdigest()
    assert abs(card["onnx"]["test_iou"] - card["test"]["iou"]) <= release.MAX_ONNX_DIFFERENCE
    full, half = load_checkpoint(checkpoint)[0], load_checkpoint(out / "lesion_segmenter.pt")[0]
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(full(images).sigmoid(), half(images).sigmoid(), atol=0.02)
    (out / "README.md").write_text("# A card without a numbers block\n")
    with pytest.raises(ModelFileError, match="no numbers block"):
        release.write_card(card, out / "README.md")


def test_make_quantize_writes_a_sealed_int8_file_that_segments_like_the_float_one(synthetic, tmp_path):
    """make quantize's file: int8 convolutions, the released file's threshold and edge move, a seal that every load
    checks, and probabilities close to the float file's on images it was not calibrated on."""
    result = subprocess.run([sys.executable, "tools/quantize.py", "--data-dir", synthetic[0], "--images", "8",
                             "--seconds", "0.1", "--out", tmp_path / "q", "--cache-dir", tmp_path / "cache"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    int8 = tmp_path / "q" / "lesion_segmenter_int8.onnx"
    assert b"QLinearConv" in int8.read_bytes() and "forward pass with flip TTA" in result.stdout
    found = saving.read_json(tmp_path / "q" / "quantize.json")
    assert set(found["test"]) == set(found["speed"]) == {"float", "int8"} and found["verdict"]
    quantized, released = Segmenter.load([int8]), Segmenter.load()
    assert (quantized.threshold, quantized.edge_move, quantized.image_size) == (
        released.threshold, released.edge_move, released.image_size)
    photos = np.stack([readers.read_image(p, released.image_size, draft=False)[0]
                       for p in sorted((synthetic[0] / layouts.SPLITS["test"][0]).glob("*.jpg"))])
    assert np.abs(quantized.probabilities(photos) - released.probabilities(photos)).mean() < 0.02
    damaged = bytearray(int8.read_bytes())
    damaged[len(damaged) // 2] ^= 1
    int8.write_bytes(bytes(damaged))
    with pytest.raises(ModelFileError, match="damaged"):
        Segmenter.load([int8])

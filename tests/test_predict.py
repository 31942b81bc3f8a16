import math
import os
import resource
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import predict
from lib import checkpoints, decoding, layouts, model_files, onnx_model
from lib.checkpoints import Ensemble, load_checkpoint, load_models
from lib.errors import ModelFileError, UsageError
from lib.masks import keep_largest_component, outline, overlay_jpeg
from lib.metrics import full_resolution_metrics
from lib.photos import output_stem
from lib.scoring import predict_probs, score_model
from losses import LOSSES
from model import MobileNetSegmenter

BIG = 50.0


class LeftColumn(torch.nn.Module):
    """A fake model that marks the leftmost column of any image as lesion."""

    def forward(self, images):
        logits = torch.full((len(images), 1, *images.shape[-2:]), -BIG)
        logits[..., 0] = BIG
        return logits


class Constant(torch.nn.Module):
    """A fake model that gives every pixel the same logit."""

    def __init__(self, logit):
        super().__init__()
        self.logit = logit

    def forward(self, images):
        return torch.full((len(images), 1, *images.shape[-2:]), self.logit)


def test_ensemble_averages_the_members_probabilities():
    images = torch.zeros(2, 3, 4, 4)
    mean = Ensemble([Constant(2.0), Constant(-1.0)])(images).sigmoid()
    expected = (torch.tensor(2.0).sigmoid() + torch.tensor(-1.0).sigmoid()) / 2
    assert torch.allclose(mean, expected.expand_as(mean))
    two = Ensemble([LeftColumn(), LeftColumn()])(images)
    assert (two[..., 0] > 0).all() and (two[..., 1:] < 0).all()


def test_load_models_makes_an_ensemble_of_several_checkpoints(checkpoint, tmp_path):
    single, configs = load_models([checkpoint])
    assert isinstance(single, MobileNetSegmenter) and len(configs) == 1
    twice, configs = load_models([checkpoint, checkpoint])
    assert isinstance(twice, Ensemble) and len(configs) == 2
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert torch.allclose(predict_probs(twice, images, 2, torch.device("cpu")),
                          predict_probs(single, images, 2, torch.device("cpu")), atol=1e-5)
    other = torch.load(checkpoint, weights_only=True)
    other["config"] = {**other["config"], "image_size": 96}
    torch.save(other, tmp_path / "96.pt")
    with pytest.raises(ModelFileError, match="different --image-size"):
        load_models([checkpoint, tmp_path / "96.pt"])


def test_keep_largest_component_drops_smaller_regions():
    mask = np.zeros((8, 8), bool)
    mask[0:3, 0:3] = True  # 9 pixels
    mask[3, 3] = True  # touches the square at a corner: 8-connected, so part of it
    mask[5:8, 6:8] = True  # 6 pixels
    kept = keep_largest_component(mask)
    assert kept.sum() == 10 and kept[3, 3] and not kept[5:, 6:].any()
    assert not keep_largest_component(np.zeros((4, 4), bool)).any()


def test_keep_largest_component_keeps_the_region_scipys_labelling_finds():
    """The runs-based regions are scipy.ndimage.label's 8-connected ones, ties included (the first in reading
    order), on random masks of every density and on masks that fill their image."""
    from scipy import ndimage

    def labelled(mask):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        return mask if n <= 1 else labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    rng = np.random.default_rng(0)
    for _ in range(2000):
        mask = rng.random(rng.integers(1, 40, 2)) < rng.uniform(0, 1)
        assert np.array_equal(keep_largest_component(mask), labelled(mask))
    assert keep_largest_component(np.ones((3, 5), bool)).all()


def test_tta_averages_flipped_back_predictions():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    plain = predict_probs(LeftColumn(), images, 8, torch.device("cpu"))
    tta = predict_probs(LeftColumn(), images, 8, torch.device("cpu"), tta=True)
    assert torch.allclose(plain[..., 0], torch.ones(2, 1, 4)) and plain[..., 1:].max() < 1e-6
    # original and vertical flip mark column 0; the horizontal flip, flipped back, marks the last column
    assert torch.allclose(tta[..., 0], torch.full((2, 1, 4), 2 / 3))
    assert torch.allclose(tta[..., -1], torch.full((2, 1, 4), 1 / 3), atol=1e-6)


def test_full_resolution_metrics_score_at_the_masks_own_size(tmp_path):
    mask = np.zeros((8, 12), np.uint8)
    mask[:, :6] = 255  # left half
    Image.fromarray(mask).save(tmp_path / "m.png")
    probs = torch.zeros(1, 1, 4, 4)
    probs[..., :2] = 1.0  # left half at model resolution
    wider = probs.clone()
    wider[..., 2] = 1.0  # three quarters predicted, the edge blurred by bilinear upsampling
    results = full_resolution_metrics({"half": probs, "wider": wider}, [tmp_path / "m.png"])
    per_image, pooled = results["half"]
    assert per_image["iou"].item() == 1 and pooled == 1
    per_image, pooled = results["wider"]
    assert 0.6 < per_image["iou"].item() < 0.8 and math.isclose(pooled, per_image["iou"].item())


def test_score_model_reports_every_variant(synthetic, checkpoint, tmp_path):
    model, config = load_checkpoint(checkpoint)
    split = decoding.load_split(synthetic[0], "test", 64, tmp_path)
    summary, per_image = score_model(model, split, LOSSES["bce"], 8, torch.device("cpu"))
    for key in ("loss", "iou", "dice", "pooled_iou", "tta_iou", "tta_dice", "fullres_iou", "fullres_dice",
                "fullres_accuracy", "fullres_sensitivity", "fullres_specificity", "fullres_iou_thresholded",
                "fullres_pooled_iou", "fullres_tta_iou", "fullres_lcc_iou", "fullres_lcc_tta_iou",
                "fullres_lcc_pooled_iou"):
        assert key in summary and 0 <= summary[key] <= 1 + 1e-9, key
    assert all(len(v) == 12 for v in per_image.values()) and "fullres_tta_dice" in per_image


def test_predict_writes_masks_at_each_images_own_size(synthetic, checkpoint, tmp_path):
    folder = tmp_path / "mine"
    shutil.copytree(synthetic[0] / layouts.SPLITS["test"][0], folder)
    Image.open(next(folder.glob("*.jpg"))).convert("L").resize((333, 71)).save(folder / "gray.png")
    inputs = [str(folder / "ISIC_000004*.jpg"), str(folder / "gray.png"), str(folder)]
    predict.main([*inputs, "--out", str(tmp_path / "out"), "--overlay", "--tta", "--device", "cpu",
                  "--checkpoint", str(checkpoint), str(checkpoint), "--largest-component"])
    images = sorted(folder.iterdir())
    assert len(list((tmp_path / "out").glob("*_segmentation.png"))) == len(images) == 13
    for image_path in images:
        with Image.open(image_path) as im, Image.open(tmp_path / "out" / f"{output_stem(image_path.name)}_segmentation.png") as m:
            assert m.size == im.size and set(np.unique(np.asarray(m))) <= {0, 255}
            assert ndimage.label(np.asarray(m), structure=np.ones((3, 3)))[1] <= 1  # one region at most
        assert (tmp_path / "out" / f"{output_stem(image_path.name)}_overlay.jpg").exists()


class TwoSquares(torch.nn.Module):
    """A fake model that marks a large square and, apart from it, a small one."""

    def forward(self, images):
        logits = torch.full((len(images), 1, *images.shape[-2:]), -BIG)
        logits[..., 4:24, 4:24] = BIG
        logits[..., 40:48, 40:48] = BIG
        return logits


def test_predict_largest_component_keeps_one_region_per_mask(synthetic, checkpoint, tmp_path, monkeypatch):
    _, configs = load_models([checkpoint])
    monkeypatch.setattr(checkpoints, "load_models", lambda paths, device: (TwoSquares(), configs))
    image = next((synthetic[0] / layouts.SPLITS["test"][0]).glob("*.jpg"))
    for flags, regions in (([], 2), (["--largest-component"], 1)):
        out = tmp_path / str(regions)
        predict.main([str(image), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu", *flags])
        with Image.open(out / f"{output_stem(image.name)}_segmentation.png") as m:
            assert ndimage.label(np.asarray(m), structure=np.ones((3, 3)))[1] == regions


def test_predict_names_inputs_that_match_nothing(checkpoint, tmp_path):
    with pytest.raises(UsageError, match="no images found for: .*nothing-here"):
        predict.main(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "nothing-here*.jpg")])


def test_outline_is_the_inner_boundary():
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    edge = outline(mask)
    assert edge.sum() == 12 and not edge[2:4, 2:4].any()


def test_onnx_export_round_trips(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install -r requirements-export.txt")
    model, config = load_checkpoint(checkpoint)
    onnx_model.export(model, 64, tmp_path / "m.onnx")
    assert onnx_model.check(model, 64, tmp_path / "m.onnx") < 1e-3
    recorded, actual = model_files.seal_of((tmp_path / "m.onnx").read_bytes())  # every exported file is sealed
    assert recorded == actual
    ensemble, _ = load_models([checkpoint, checkpoint])
    onnx_model.export(ensemble, 64, tmp_path / "ensemble.onnx")
    assert onnx_model.check(ensemble, 64, tmp_path / "ensemble.onnx") < 1e-3


def test_an_overlay_is_encoded_whole_when_no_file_descriptor_is_left():
    """The overlay's JPEG goes into a memfd where one can be opened; with every file descriptor taken (a real
    EMFILE) it goes into memory all the same, the same bytes."""
    rng = np.random.default_rng(0)
    photo, mask = Image.fromarray(rng.integers(0, 255, (60, 80, 3), np.uint8)), rng.random((60, 80)) > 0.5
    expected = overlay_jpeg(photo, mask)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
    held = []
    try:
        with pytest.raises(OSError):
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        assert overlay_jpeg(photo, mask) == expected
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

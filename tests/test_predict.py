import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import data
import export
import predict
from evaluate import full_resolution_metrics, predict_probs, score_model
from model import DECODER_WIDTHS, SegNet, load_checkpoint

BIG = 50.0


@pytest.fixture(scope="module")
def checkpoint(synthetic, tmp_path_factory):
    """A checkpoint of an untrained model in the format train.py writes."""
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    config = {"skips": False, "freeze_encoder": False, "decoder_widths": list(DECODER_WIDTHS),
              "image_size": 64, "no_amp": False, "loss": "bce"}
    torch.manual_seed(0)
    torch.save({"config": config, "model": SegNet("none").state_dict()}, path)
    return path


class LeftColumn(torch.nn.Module):
    """A fake model that marks the leftmost column of any image as lesion."""

    def forward(self, images):
        logits = torch.full((len(images), 1, *images.shape[-2:]), -BIG)
        logits[..., 0] = BIG
        return logits


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
    split = data.load_split(synthetic[0], "test", 64, tmp_path)
    summary, per_image = score_model(model, split, "bce", 8, torch.device("cpu"))
    for key in ("loss", "iou", "dice", "pooled_iou", "tta_iou", "tta_dice", "fullres_iou", "fullres_dice",
                "fullres_accuracy", "fullres_sensitivity", "fullres_specificity", "fullres_iou_thresholded",
                "fullres_pooled_iou", "fullres_tta_iou"):
        assert key in summary and 0 <= summary[key] <= 1 + 1e-9, key
    assert all(len(v) == 12 for v in per_image.values()) and "fullres_tta_dice" in per_image


def test_predict_writes_masks_at_each_images_own_size(synthetic, checkpoint, tmp_path):
    folder = tmp_path / "mine"
    shutil.copytree(synthetic[0] / data.SPLITS["test"][0], folder)
    Image.open(next(folder.glob("*.jpg"))).convert("L").resize((333, 71)).save(folder / "gray.png")
    inputs = [str(folder / "ISIC_000004*.jpg"), str(folder / "gray.png"), str(folder)]
    predict.main(["--checkpoint", str(checkpoint), *inputs, "--out", str(tmp_path / "out"), "--overlay",
                  "--tta", "--device", "cpu"])
    images = sorted(folder.iterdir())
    assert len(list((tmp_path / "out").glob("*_segmentation.png"))) == len(images) == 13
    for image_path in images:
        with Image.open(image_path) as im, Image.open(tmp_path / "out" / f"{image_path.stem}_segmentation.png") as m:
            assert m.size == im.size and set(np.unique(np.asarray(m))) <= {0, 255}
        assert (tmp_path / "out" / f"{image_path.stem}_overlay.png").exists()


def test_predict_names_inputs_that_match_nothing(checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="no images found for: .*nothing-here"):
        predict.main(["--checkpoint", str(checkpoint), str(tmp_path / "nothing-here*.jpg")])


def test_outline_is_the_inner_boundary():
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    edge = predict.outline(mask)
    assert edge.sum() == 12 and not edge[2:4, 2:4].any()


def test_onnx_export_round_trips(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install -r requirements-export.txt")
    model, config = load_checkpoint(checkpoint)
    export.export(model, 64, tmp_path / "m.onnx")
    assert export.check(model, 64, tmp_path / "m.onnx") < 1e-3

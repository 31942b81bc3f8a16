import math

import torch

from lib.compare import iou
from lib.metrics import per_image_metrics, score
from losses import LOSSES, bce_loss, lovasz_hinge_loss, soft_iou_loss

BIG = 50.0  # a logit whose sigmoid is 1 to float precision


def masks_of(*rows):
    return torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, 1, -1)


def test_metrics_hand_computed():
    pred = masks_of([1, 1, 0, 0], [1, 0, 0, 0])
    true = masks_of([1, 0, 1, 0], [1, 0, 0, 0])
    m = per_image_metrics(pred > 0, true)
    # image 0: tp=1 fp=1 fn=1 tn=1
    assert math.isclose(m["iou"][0].item(), 1 / 3)
    assert math.isclose(m["dice"][0].item(), 2 / 4)
    assert math.isclose(m["accuracy"][0].item(), 2 / 4)
    assert math.isclose(m["sensitivity"][0].item(), 1 / 2)
    assert math.isclose(m["specificity"][0].item(), 1 / 2)
    assert m["iou_thresholded"][0].item() == 0  # below 0.65 counts as 0
    assert m["iou"][1].item() == 1 and m["iou_thresholded"][1].item() == 1


def test_metrics_empty_masks_and_one_pixel_off():
    empty = torch.zeros(1, 1, 8, 8)
    assert per_image_metrics(empty > 0, empty)["iou"].item() == 1
    assert per_image_metrics(empty > 0, empty)["dice"].item() == 1
    one = empty.clone()
    one[0, 0, 3, 3] = 1
    assert per_image_metrics(one > 0, empty)["iou"].item() == 0  # a false pixel on an empty mask
    square = torch.zeros(1, 1, 8, 8)
    square[..., 2:6, 2:6] = 1  # 16 pixels
    off = square.clone()
    off[0, 0, 2, 2] = 0  # prediction misses one pixel
    m = per_image_metrics(off > 0, square)
    assert math.isclose(m["iou"].item(), 15 / 16)
    assert math.isclose(m["dice"].item(), 30 / 31)


def test_numpy_iou_is_the_metrics_iou():
    """lib/compare.py's IoU (the light install's: make calibrate) is per_image_metrics's, empty masks included."""
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.rand(37, 29, generator=g) > p, torch.rand(37, 29, generator=g) > q)
             for p, q in ((0.5, 0.5), (0.9, 0.2), (1.0, 1.0), (1.0, 0.5), (0.0, 0.7))]
    for pred, target in pairs:
        expected = per_image_metrics(pred[None, None], target[None, None])["iou"].item()
        assert iou(pred.numpy(), target.numpy()) == expected


def test_score_thresholds_logits_at_zero_and_averages_per_image():
    true = masks_of([1, 1, 0, 0], [0, 0, 0, 0])
    logits = masks_of([1, -1, -1, -1], [-1, -1, -1, -1]) * 3
    summary, per_image = score(logits, true, LOSSES["bce"])
    assert math.isclose(summary["iou"], (0.5 + 1.0) / 2)  # per-image mean, not pooled
    assert summary["n_images"] == 2


def test_soft_iou_loss_hand_computed():
    true = masks_of([1, 1, 0, 0])
    logits = masks_of([BIG, -BIG, BIG, -BIG])  # probabilities 1, 0, 1, 0: I=1, U=3
    assert math.isclose(soft_iou_loss(logits, true, smooth=0).item(), 1 - 1 / 3, rel_tol=1e-6)
    assert math.isclose(soft_iou_loss(logits, true, smooth=1).item(), 1 - 2 / 4, rel_tol=1e-6)


def test_soft_iou_loss_empty_mask_is_finite_and_zero_when_predicted_empty():
    empty = torch.zeros(2, 1, 4, 4)
    assert soft_iou_loss(torch.full_like(empty, -BIG), empty).item() < 1e-6
    assert math.isfinite(soft_iou_loss(torch.zeros_like(empty), empty).item())


def test_soft_iou_loss_does_not_depend_on_batch_size():
    torch.manual_seed(0)
    logits, true = torch.randn(4, 1, 8, 8), (torch.rand(4, 1, 8, 8) > 0.5).float()
    whole = soft_iou_loss(logits, true)
    halves = (soft_iou_loss(logits[:2], true[:2]) + soft_iou_loss(logits[2:], true[2:])) / 2
    assert torch.allclose(whole, halves)


def test_bce_matches_definition():
    logits, true = torch.tensor([[[[2.0, -1.0]]]]), torch.tensor([[[[1.0, 0.0]]]])
    expected = -(math.log(1 / (1 + math.exp(-2))) + math.log(1 - 1 / (1 + math.exp(1)))) / 2
    assert math.isclose(bce_loss(logits, true).item(), expected, rel_tol=1e-6)


def test_lovasz_hinge_at_plus_minus_one_logits_is_twice_the_jaccard_loss():
    # with logits +-1 the hinge errors are 0 (right) or 2 (wrong), and the Lovasz extension is exact there
    torch.manual_seed(0)
    masks = (torch.rand(6, 1, 8, 8) > 0.5).float()
    pred = (torch.rand(6, 1, 8, 8) > 0.5).float()
    pred[0] = masks[0]  # one perfect image
    iou = per_image_metrics(pred > 0, masks)["iou"]
    assert math.isclose(lovasz_hinge_loss(pred * 2 - 1, masks).item(), 2 * (1 - iou).mean().item(), rel_tol=1e-5)
    assert lovasz_hinge_loss((masks * 2 - 1) * 3, masks) == 0  # right with a margin: nothing to pay
    empty = torch.zeros(2, 1, 8, 8)
    assert torch.isfinite(lovasz_hinge_loss(torch.randn(2, 1, 8, 8), empty))

"""Inference and scoring of PyTorch models, shared by training, evaluation, the robustness suite and the release:
logits and probabilities batch by batch, every test number of a model. Prediction for users is segmenter.py's."""
import torch

from lib.device import autocast
from lib.metrics import (add_metrics, full_resolution_metrics, largest_region_iou, per_image_metrics, pooled_iou,
                         score)


@torch.no_grad()
def predict_logits(forward, inputs, batch_size, device, amp=True):
    """Logits [N,1,S,S] of forward() over the N rows of `inputs` (images [N,3,S,S], or anything that slices and
    moves with .to() like them), batch by batch, gathered on the CPU."""
    out = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size].to(device, non_blocking=True)
        with autocast(device, amp):
            out.append(forward(batch).float().cpu())
    return torch.cat(out)


def evaluate(forward, inputs, masks, loss, batch_size, device, amp=True):
    """score() of the predictions of `forward` on `inputs`; loss: a loss function, or None."""
    return score(predict_logits(forward, inputs, batch_size, device, amp), masks, loss)


@torch.no_grad()
def predict_probs(model, images, batch_size, device, amp=True, tta=False):
    """Lesion probabilities of uint8 images [N,3,S,S]. With tta: the mean over the image and its horizontal and
    vertical flips, each prediction flipped back first."""
    flips = [(), (-1,), (-2,)] if tta else [()]

    def forward(batch):
        return sum(model(batch.flip(f)).float().sigmoid().flip(f) for f in flips) / len(flips)
    return predict_logits(forward, images, batch_size, device, amp)


def tta_probabilities(model, config, images, device, batch_size=64):
    """Lesion probabilities [N,1,S,S] of uint8 images [N,3,S,S] with flip TTA, as make predict computes them, for
    a model of this config."""
    return predict_probs(model, images, batch_size, device, not config["no_amp"], tta=True)


def score_model(model, split, loss, batch_size, device, amp=True, tta=True, full_res=True, threshold=0.5,
                edge_move=0.0):
    """Every test number of a model on a load_split() result: per-image means at model resolution (plain keys),
    'tta_' keys with flip test-time augmentation, 'fullres_' keys at each mask's original size ('fullres_lcc_' with
    only the largest region kept; only these move the edge by edge_move, as make predict's masks), and 'pooled_iou'
    keys over all pixels together; loss: a loss function for the 'loss' key, or None. Returns (summary, per-image
    metrics)."""
    masks = split["masks"][:]  # read into memory if memory-mapped
    logits = predict_logits(model, split["images"], batch_size, device, amp)
    summary, per_image = score(logits, masks, loss, threshold)
    variants = {"": logits.sigmoid()}
    if tta:
        variants["tta_"] = predict_probs(model, split["images"], batch_size, device, amp, tta=True)
        add_metrics(summary, per_image, "tta_", per_image_metrics(variants["tta_"] > threshold, masks))
    for prefix, probs in variants.items():
        summary[f"{prefix}pooled_iou"] = pooled_iou(probs > threshold, masks)
    if full_res:
        for prefix, (metrics, pooled) in full_resolution_metrics(variants, split["mask_paths"], threshold,
                                                                   edge_move).items():
            add_metrics(summary, per_image, f"fullres_{prefix}", metrics)
            summary[f"fullres_{prefix}pooled_iou"] = pooled
    return summary, per_image


def onnx_split_iou(path, split):
    """Mean IoU of an .onnx file on ONNX Runtime over a split (load_split()) by the card's protocol: each mask's own
    size, flip TTA, largest region, as make predict runs it."""
    from lib.segmenter import Segmenter
    segmenter = Segmenter.load([path], "cpu")
    probs = segmenter.probabilities(split["images"].permute(0, 2, 3, 1).numpy(), tta=True)
    return float(largest_region_iou(torch.from_numpy(probs)[:, None], split["mask_paths"], segmenter.threshold,
                                    segmenter.edge_move).mean())

"""Segmentation metrics, defined once and used by training, evaluation and prediction: per-image IoU, Dice,
accuracy, sensitivity (recall), specificity and thresholded Jaccard, pooled IoU, scores at each mask's own
resolution. A metric added to per_image_metrics is reported everywhere: test_metrics.json, evaluate.py's line.
Masks and predictions are binary; shapes are given per function."""

import numpy as np
import torch

from lib import readers
from lib.masks import keep_largest_component, move_edge, resize_probabilities


def per_image_metrics(pred, masks):
    """Metrics of binary predictions against binary masks [N,1,H,W], one value per image ({name: [N] tensor}).
    An image whose prediction and mask are both empty scores 1 for IoU and Dice."""
    pred, masks = pred.flatten(1).bool(), masks.flatten(1).bool()
    tp = (pred & masks).sum(1).double()
    fp = (pred & ~masks).sum(1).double()
    fn = (~pred & masks).sum(1).double()
    tn = (~pred & ~masks).sum(1).double()

    def ratio(num, den):  # 0/0 means nothing to get wrong: a perfect score
        return torch.where(den > 0, num / den.clamp(min=1), torch.ones_like(num))

    iou = ratio(tp, tp + fp + fn)
    return {"iou": iou,
            "dice": ratio(2 * tp, 2 * tp + fp + fn),
            "accuracy": (tp + tn) / (tp + fp + fn + tn),
            "sensitivity": ratio(tp, tp + fn),  # recall
            "specificity": ratio(tn, tn + fp),
            "iou_thresholded": torch.where(iou >= 0.65, iou, torch.zeros_like(iou))}  # ISIC 2018 score


def score(logits, masks, loss, threshold=0.5):
    """({'loss', 'iou', 'dice', ..., 'n_images'}, per-image metrics) of logits [N,1,S,S] against masks; a pixel is
    lesion where its probability > threshold (at 0.5: where its logit > 0). loss: the run's loss function
    (losses.py's, looked up once by the script), or None for no 'loss' key."""
    masks = masks.to(logits.device)
    per_image = per_image_metrics(logits > torch.logit(torch.tensor(threshold)).item(), masks)
    summary = {**({"loss": loss(logits, masks).item()} if loss else {}), "n_images": len(masks)}
    summary.update({k: v.mean().item() for k, v in per_image.items()})
    return summary, per_image


def pooled_iou(pred, masks):
    """IoU of all pixels of all images together (not a per-image mean)."""
    pred, masks = pred.bool(), masks.bool()
    return (pred & masks).sum().item() / max((pred | masks).sum().item(), 1)


def full_resolution_metrics(variants, masks, threshold=0.5, edge_move=0.0):
    """{name: (per-image metrics, pooled IoU)} for each {name: probabilities [N,1,S,S]}, every prediction
    resized back to its ground-truth mask's own size and thresholded there (its edge moved by edge_move), as the
    ISIC challenges score and as make predict's masks are made (masks.py); and the same under 'lcc_' + name with
    only the largest region kept.
    masks: N mask files (each read once) or boolean arrays [H,W]."""
    names = [pre + name for name in variants for pre in ("", "lcc_")]
    per_image = {name: [] for name in names}
    counts = {name: [0, 0] for name in names}  # pooled intersection, union
    for i, mask in enumerate(masks):
        mask = np.array(mask, dtype=bool) if isinstance(mask, np.ndarray) else readers.read_binary_mask(mask)
        height, width = mask.shape
        mask = torch.from_numpy(mask)[None, None]
        for name, probs in variants.items():
            pred = resize_probabilities(probs[i, 0].float().numpy(), width, height) > threshold
            for key, p in ((name, pred), ("lcc_" + name, keep_largest_component(pred))):
                p = torch.from_numpy(move_edge(p, edge_move))[None, None]
                per_image[key].append(per_image_metrics(p, mask))
                counts[key][0] += (p & mask).sum().item()
                counts[key][1] += (p | mask).sum().item()
    return {name: ({k: torch.cat([m[k] for m in rows]) for k in rows[0]}, counts[name][0] / max(counts[name][1], 1))
            for name, rows in per_image.items()}


def largest_region_iou(probs, masks, threshold=0.5, edge_move=0.0):
    """Per-image IoU [N] (numpy) of probabilities [N,1,S,S] at each mask's own size, thresholded, only the largest
    region kept, its edge moved: make predict's masks scored. masks: N mask files or boolean arrays [H,W]."""
    return full_resolution_metrics({"": probs}, masks, threshold, edge_move)["lcc_"][0]["iou"].numpy()


def add_metrics(summary, per_image, prefix, metrics):
    """Put per-image `metrics` and their means under prefixed keys."""
    per_image.update({prefix + k: v for k, v in metrics.items()})
    summary.update({prefix + k: v.mean().item() for k, v in metrics.items()})

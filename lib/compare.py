"""Scores without torch, for the light install (make calibrate) and every tool: one boolean mask against another
(metrics.per_image_metrics's IoU, for one numpy pair at its own size; tests/test_losses_metrics.py holds the two
together) and two models' per-image scores against each other (paired_difference)."""
import math

import numpy as np


def iou(pred, target):
    """Intersection over union of two boolean masks [H,W]; 1 when both are empty (nothing to get wrong)."""
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    union = np.count_nonzero(pred | target)
    return np.count_nonzero(pred & target) / union if union else 1.0


def paired_difference(base, new):
    """Two models' scores on the same images (sequences, image k against image k): dict of n, each model's mean,
    the mean difference new - base, its standard error, and how often new wins. The standard error is the paired
    one: per-image differences vary far less than the scores themselves."""
    base, new = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    diff = new - base
    return {"n": len(diff), "base": float(base.mean()), "new": float(new.mean()), "difference": float(diff.mean()),
            "standard_error": float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan"),
            "new_better": int((diff > 0).sum()), "new_worse": int((diff < 0).sum())}

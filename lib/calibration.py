"""Calibration on a few labelled images of the user's own (adapt.py): how far to move the model's edge (in or out,
a share of each mask's equivalent radius) so that its masks match annotators who draw tighter or looser than
ISIC's; the best move is adopted only when the images' paired standard error says its gain is real. The decision
threshold's calibration, which moves the edge less, and the one-standard-error rule are kept for comparison
(docs/adapt.md). numpy only: make calibrate runs on the light install, and the page repeats edge_curves and
calibrate_edge in JavaScript (web/segment.js; tests/test_page.py holds the two together)."""
import math
from pathlib import Path

import numpy as np

from lib.compare import iou, paired_difference
from lib.errors import DataError
from lib.masks import has_edge, keep_largest_component, mask_at_size, moved_edges, resize_probabilities

# The candidates, 0.5 among them; finer near 0 and 1, where a sharp model's probabilities still move the edge
THRESHOLDS = np.round(np.concatenate([[0.01, 0.02, 0.03], np.arange(0.05, 0.951, 0.025), [0.97, 0.98, 0.99]]), 3)
FOLDS = 5  # cross-validation folds (fewer when there are fewer images)
# Signed moves of a mask's edge, as a share of its equivalent radius: + inward (a tighter annotator), - outward
EDGE_MOVES = np.round(np.arange(-0.16, 0.1601, 0.01), 2)
# The model's mean IoU on a user's masks below which they cannot be outlines of the lesions it sees: inverted masks
# (lesion black) score about 0.03; the released model scores 0.85 on another archive's annotators (HAM10000)
MIN_AGREEMENT = 0.2


def probability_map(probs, i):
    """Image i's probabilities [S,S] as float32 numpy, of probabilities [N,1,S,S] or [N,S,S] (torch or numpy)."""
    return np.asarray(probs[i], dtype=np.float32).reshape(probs.shape[-2:])


def iou_curves(probs, masks, thresholds=THRESHOLDS, largest_component=True):
    """IoU [N, T] of each image at each threshold: probabilities [N,1,S,S] resized back to each boolean mask's own
    size [H,W] (as make predict does), thresholded, with largest_component only the largest region kept."""
    curves = np.empty((len(masks), len(thresholds)))
    for i, mask in enumerate(masks):
        up = resize_probabilities(probability_map(probs, i), mask.shape[1], mask.shape[0])
        for j, t in enumerate(thresholds):
            curves[i, j] = iou(keep_largest_component(up > t) if largest_component else up > t, mask)
    return curves


def edge_curves(probs, masks, moves=EDGE_MOVES, threshold=0.5):
    """IoU [N, M] of each image with the edge of make predict's mask (resized back to the boolean mask's size,
    thresholded, the largest region) moved by each share of moves: what moving the model's edge by one amount for
    every image, as learning an annotator's mean edge would, scores (adapt_experiment.py --calibration-only)."""
    curves = np.empty((len(masks), len(moves)))
    for i, mask in enumerate(masks):
        pred = mask_at_size(probability_map(probs, i), mask.shape[1], mask.shape[0], threshold, True)
        for j, moved in enumerate(moved_edges(pred, moves) if has_edge(pred) else [pred] * len(moves)):
            curves[i, j] = iou(moved, mask)
    return curves


def refuse_one_value_masks(masks, paths, data_dir):
    """DataError when most masks (boolean arrays, their files' paths beside) are all lesion or all background: no
    edge to calibrate or learn from, and a change of the edge would be scored on masks that say nothing of it."""
    flat = [path for path, m in zip(paths, masks) if m.min() == m.max()]
    if 2 * len(flat) > len(masks):
        names = ", ".join(Path(f).name for f in flat[:5]) + (f" and {len(flat) - 5} more" if len(flat) > 5 else "")
        raise DataError(f"{len(flat)} of the {len(masks)} masks in {data_dir} are all lesion or all background "
                        f"({names}): calibration needs masks that outline each lesion, white on black (or a palette "
                        "index above 0 for the lesion)")


def refuse_disagreeing_masks(before, data_dir):
    """DataError when the model's own masks and the user's overlap by a mean IoU (`before`, one per image) under
    MIN_AGREEMENT: masks inverted or of something else, which a calibration would fit by ruining the model."""
    mean = float(np.mean(before))
    if mean < MIN_AGREEMENT:
        raise DataError(f"the model's masks and yours in {data_dir} overlap by a mean IoU of {mean:.2f} over "
                        f"{len(before)} images, where lesions it sees score far higher: are your masks inverted "
                        "(the lesion black on white)? A mask marks the lesion in white on black; fix them and run "
                        "again")


def fold_of(n, folds=FOLDS, seed=0):
    """The fold (0..k-1) of each of n images, k = min(folds, n): a seeded shuffle dealt out in turn (calibrate_cv's
    folds, and make adapt's)."""
    assignment = np.empty(n, dtype=int)
    assignment[np.random.default_rng(seed).permutation(n)] = np.arange(n) % min(folds, n)
    return assignment


def calibrate_cv(curves, thresholds=THRESHOLDS, folds=FOLDS, seed=0):
    """The threshold to use, from iou_curves() of the calibration images. Each fold's images are scored at the
    threshold that the other folds' images pick; the best threshold over all images is adopted only if that
    out-of-fold gain over 0.5 is above zero by more than its paired standard error, else 0.5 is kept.
    Returns {'choice' (the threshold), 'best', 'cv_gain', 'cv_standard_error', 'images', 'folds', 'rule'}."""
    n, base = len(curves), int(np.argmin(np.abs(thresholds - 0.5)))
    folds_of, k = fold_of(n, folds, seed), min(folds, n)
    gains = np.empty(n)
    for fold in range(k):
        held = folds_of == fold
        picked = curves[~held].mean(0).argmax()
        gains[held] = curves[held, picked] - curves[held, base]
    gain = float(gains.mean())
    error = float(gains.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    best = float(thresholds[curves.mean(0).argmax()])
    return {"choice": best if gain > error else 0.5, "best": best, "cv_gain": gain,
            "cv_standard_error": error, "images": n, "folds": k, "rule": "cv"}


def calibrate_one_se(curves, thresholds=THRESHOLDS, neutral=0.5):
    """The threshold (or edge move) to use, from iou_curves() (or edge_curves(), with EDGE_MOVES and neutral 0) of
    the calibration images: of the candidates whose mean IoU is within one paired standard error of the best one's,
    the closest to neutral. A real shift moves the choice toward the best one; noise, or a few images whose IoU
    falls steeply, widens the band and keeps it near neutral. Returns {'choice', 'best', 'band' (the lowest and
    highest candidate in it), 'images', 'rule'}."""
    n, mean = len(curves), curves.mean(0)
    best = int(mean.argmax())
    behind = curves[:, [best]] - curves  # each image's IoU at the best threshold minus at each other
    error = behind.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.full(len(thresholds), np.inf)
    band = np.flatnonzero(mean[best] - mean <= error)
    pick = band[np.argmin(np.abs(thresholds[band] - neutral))]
    return {"choice": float(thresholds[pick]), "best": float(thresholds[best]),
            "band": [float(thresholds[band].min()), float(thresholds[band].max())], "images": n, "rule": "one-se"}


def calibrate_clear_gain(curves, candidates, neutral):
    """Of candidates, the one with the best mean IoU over the calibration images' curves [N, len(candidates)],
    adopted only if its paired gain over neutral clears its standard error, else neutral: a real shift moves most
    images' best the same way, while noise, or a few images whose IoU changes steeply, leaves the gain within its
    error. Returns {'choice', 'best', 'gain', 'standard_error', 'images'}."""
    n, base, best = len(curves), int(np.argmin(np.abs(candidates - neutral))), int(curves.mean(0).argmax())
    gains = curves[:, best] - curves[:, base]
    gain, error = float(gains.mean()), float(gains.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return {"choice": float(candidates[best] if gain > error else candidates[base]), "best": float(candidates[best]),
            "gain": gain, "standard_error": error, "images": n}


def calibrate_edge(curves, moves=EDGE_MOVES, neutral=0.0):
    """The edge move to use, from edge_curves() of the calibration images: the best one if it clears its paired
    standard error over the model's own edge (neutral: the move the model already makes, one of moves), else
    neutral. Returns {'edge_move', 'best_edge_move', 'gain', 'standard_error', 'images', 'rule'}."""
    chosen = calibrate_clear_gain(curves, np.asarray(moves), neutral=neutral)
    return {"edge_move": chosen["choice"], "best_edge_move": chosen["best"], "gain": chosen["gain"],
            "standard_error": chosen["standard_error"], "images": chosen["images"], "rule": "edge clear-gain"}


RULES = {"cv": calibrate_cv, "one-se": calibrate_one_se}  # the threshold rules compared in docs/adapt.md
calibrate = calibrate_edge  # chosen on validation (make calibration-experiment): it wins back more of every
#                             annotator shift's cost than the threshold rules and the edge's one-SE rule


# make adapt's choice (tools/adapt.py), on the user's own labelled images: each candidate is scored out of fold
# (k-fold cross-validation: every image scored by a candidate fitted on the other folds), and the fine-tuned
# candidate is shipped unless it is clearly worse there than the edge move alone; then the edge move (when
# calibration adopts one) or the model before. A real clinic chose this (HAM10000, docs/adapt.md): on 20 of its
# photos cross-validation could rarely tell fine-tuning from the edge move, and fine-tuning won on the clinic's other
# photos in every draw. Until 2026-12-05 a fine-tuned model had to beat the edge move by its standard error.

# The candidates, in the order a tie keeps: the model before; its edge moved (make calibrate); fine-tuned on the
# labels as they are, an edge move calibrated on top if it clears; fine-tuned on the labels with the edge move
# undone, the move applied after (the recipe synthetic annotators chose on 2026-12-03)
CANDIDATES = {"before": "the model before", "edge": "the edge move alone",
              "tuned": "fine-tuned on your masks as they are", "tuned-moved": "fine-tuned on your masks with the "
              "edge move undone, the move applied after"}
FINE_TUNED = ("tuned", "tuned-moved")
CLEARLY_WORSE = 2.0  # paired standard errors behind the edge move alone, out of fold: a fine-tuned model not shipped


def choose(scores, edge_move):
    """(the candidate to ship by choice(), {candidate: paired_difference() against the edge move alone}) from
    out-of-fold per-image IoU {candidate: [N]}."""
    against = {name: paired_difference(scores["edge"], s) for name, s in scores.items()}
    return choice(against, edge_move), against


def choice(against, edge_move, clearly_worse=CLEARLY_WORSE):
    """make adapt's rule on each candidate's paired_difference() against the edge move alone: the fine-tuned
    candidate with the best mean among those not behind the edge move by more than clearly_worse standard errors,
    else "edge" when calibration on all images adopts a move (edge_move != 0), else "before"."""
    kept = [name for name in FINE_TUNED if name in against and against[name]["n"] > 1
            and against[name]["difference"] >= -clearly_worse * against[name]["standard_error"]]
    if kept:
        return max(kept, key=lambda name: against[name]["difference"])
    return "edge" if edge_move else "before"

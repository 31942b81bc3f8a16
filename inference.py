"""Inference and scoring, shared by training, evaluation, prediction, the robustness suite and the released model:
logits and probabilities batch by batch, masks at each image's own size, every test number of a model.

    from inference import LesionSegmenter
    segmenter = LesionSegmenter.load()              # the released model (models/lesion_segmenter.pt)
    mask = segmenter.segment("photo.jpg")           # boolean [H,W] at the photo's own size
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

import decoding
import layouts
import runfiles
import splits
from device import autocast
from errors import UsageError
from metrics import add_metrics, full_resolution_metrics, keep_largest_component, per_image_metrics, pooled_iou, \
    score, upsample
from model import decision_threshold, load_models

RELEASED = Path(__file__).resolve().parent / "models" / "lesion_segmenter.pt"  # the model shipped in the repository


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


def evaluate(forward, inputs, masks, loss_name, batch_size, device, amp=True):
    """score() of the predictions of `forward` on `inputs`."""
    return score(predict_logits(forward, inputs, batch_size, device, amp), masks, loss_name)


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


def mask_at_size(prob, width, height, threshold=0.5, largest_component=False):
    """Boolean mask [height, width] of one probability map [1,S,S]: upsampled (bilinear), thresholded, and with
    largest_component only its largest region kept. Every mask this project hands out is made here."""
    mask = (upsample(prob[None], (height, width))[0, 0] > threshold).numpy()
    return keep_largest_component(mask) if largest_component else mask


def outline(mask):
    """Pixels on the boundary of a boolean mask (inside the mask, next to a pixel outside it)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def mask_png(mask):
    """A boolean mask as a 0/255 greyscale PIL image: what predict.py writes."""
    return Image.fromarray(mask.astype(np.uint8) * 255)


class LesionSegmenter(nn.Module):
    """A trained model (or ensemble) with what prediction needs: its input size and decision threshold.
    forward(images uint8 or float 0..255 [N,3,S,S]) -> logits [N,1,S,S]; segment(image) -> a boolean mask."""

    def __init__(self, model, image_size, threshold=0.5, amp=True):
        super().__init__()
        self.model, self.image_size, self.threshold, self.amp = model, image_size, threshold, amp

    @classmethod
    def load(cls, checkpoints=None, device="cpu"):
        """From train.py checkpoints (several: their ensemble); none: the released model."""
        model, configs = load_models([str(c) for c in checkpoints or [RELEASED]], device)
        return cls(model, configs[0]["image_size"], decision_threshold(configs), not configs[0]["no_amp"]).eval()

    def forward(self, images):
        return self.model(images)

    def segment(self, image, tta=True, largest_component=True, threshold=None):
        """Boolean mask [H,W] at the image's own size (EXIF orientation applied) of an image file's path or a PIL
        image; with tta the mean over flips, with largest_component only the largest region (as make predict)."""
        pixels, (width, height) = (decoding.read_image(image, self.image_size) if isinstance(image, (str, Path))
                                   else decoding.prepare_image(image, self.image_size))
        device = next(self.parameters()).device
        images = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None]  # PIL's array is read-only
        prob = predict_probs(self.model, images, 1, device, self.amp, tta)
        threshold = self.threshold if threshold is None else threshold
        return mask_at_size(prob[0], width, height, threshold, largest_component)


def score_model(model, split, loss_name, batch_size, device, amp=True, tta=True, full_res=True, threshold=0.5):
    """Every test number of a model on a load_split() result: per-image means at model resolution (plain keys),
    'tta_' keys with flip test-time augmentation, 'fullres_' keys at each mask's original size ('fullres_lcc_' with
    only the largest region kept), and 'pooled_iou' keys over all pixels together. Returns (summary, per-image
    metrics)."""
    masks = split["masks"][:]  # read into memory if memory-mapped
    logits = predict_logits(model, split["images"], batch_size, device, amp)
    summary, per_image = score(logits, masks, loss_name, threshold)
    variants = {"": logits.sigmoid()}
    if tta:
        variants["tta_"] = predict_probs(model, split["images"], batch_size, device, amp, tta=True)
        add_metrics(summary, per_image, "tta_", per_image_metrics(variants["tta_"] > threshold, masks))
    for prefix, probs in variants.items():
        summary[f"{prefix}pooled_iou"] = pooled_iou(probs > threshold, masks)
    if full_res:
        for prefix, (metrics, pooled) in full_resolution_metrics(variants, split["mask_paths"], threshold).items():
            add_metrics(summary, per_image, f"fullres_{prefix}", metrics)
            summary[f"fullres_{prefix}pooled_iou"] = pooled
    return summary, per_image


def write_results(run_dir, name, summary, per_image, ids):
    """<name>_metrics.json and <name>_per_image.csv in the run folder; returns the JSON file's path."""
    runfiles.write_json(Path(run_dir) / f"{name}_metrics.json", summary)
    rows = [{"id": i, **{k: v[n].item() for k, v in per_image.items()}} for n, i in enumerate(ids)]
    runfiles.write_csv(Path(run_dir) / f"{name}_per_image.csv", rows)
    return Path(run_dir) / f"{name}_metrics.json"


def validation_seed(configs):
    """The --split-seed that all these runs held their validation images out with (one run, or an ensemble's)."""
    if any(c["val_fraction"] == 0 for c in configs):
        raise UsageError("--split val: trained with --val-fraction 0, on every training image; none was held out")
    splits = {(c["val_fraction"], split_seed(c)) for c in configs}
    if len(splits) > 1:
        raise UsageError("--split val: these runs held out different validation images (--val-fraction, --split-seed "
                         f"{sorted(splits)}), so some were trained on the others' validation images")
    return splits.pop()[1]


def split_seed(config):
    """A run's --split-seed; runs from before that flag split by --seed (and the oldest had no --seed either)."""
    return config.get("split_seed", config.get("seed", 0))


def split_to_score(data_dir, split, configs, cache_dir="cache", workers=2):
    """The split ("train", "val" or "test") of data_dir that these models are scored on, at their image size: the
    training images they held out for validation (the same seeded or official split as training), all training
    images, or the test split (splits.load_test). Returns (load_split() result, a line that says what it is)."""
    size = configs[0]["image_size"]
    if split == "train":
        return decoding.load_split(data_dir, "train", size, cache_dir, workers), "training split"
    if split == "val":
        return splits.load_splits(data_dir, size, configs[0]["val_fraction"], validation_seed(configs), cache_dir,
                                workers)["val"], "validation images held out by training"
    trained_on = any(Path(d).resolve() == Path(data_dir).resolve() for c in configs
                     for d in layouts.as_list(c.get("data_dir")))
    return splits.load_test(data_dir, size, split_seed(configs[0]), trained_on, cache_dir, workers)

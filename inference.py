"""Inference and scoring of PyTorch models, shared by training, evaluation, the robustness suite and the release:
logits and probabilities batch by batch, every test number of a model. Prediction for users is segmenter.py's."""
from pathlib import Path

import torch

import decoding
import layouts
import runfiles
import splits
from device import autocast
from errors import UsageError
from metrics import add_metrics, full_resolution_metrics, per_image_metrics, pooled_iou, score


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

"""Segmentation metrics (defined once, used by training, evaluation and prediction) and checkpoint evaluation.

    python evaluate.py --checkpoint runs/exp1-bce/best.pt --data-dir ../shared/isic2016
"""
import argparse
import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

import data
import runfiles
from losses import LOSSES
from model import USER_ERRORS, load_models


def per_image_metrics(pred, masks):
    """Metrics of binary predictions against binary masks, one value per image ([N] tensors).
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
            "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp),
            "iou_thresholded": torch.where(iou >= 0.65, iou, torch.zeros_like(iou))}  # ISIC 2018 score


def autocast(device, enabled):
    """Mixed precision on accelerators: bfloat16 where supported, else float16. CPU runs in float32."""
    if not enabled or device.type == "cpu":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict_logits(forward, inputs, batch_size, device, amp=True):
    """forward(list of batch tensors) -> logits over `inputs` (list of tensors with N rows), gathered on the CPU."""
    out = []
    for start in range(0, len(inputs[0]), batch_size):
        batch = data.take(inputs, slice(start, start + batch_size), device)
        with autocast(device, amp):
            out.append(forward(batch).float().cpu())
    return torch.cat(out)


def score(logits, masks, loss_name):
    """({'loss', 'iou', 'dice', ..., 'n_images'}, per-image metrics) of logits against masks; threshold logit > 0."""
    masks = masks.to(logits.device)
    per_image = per_image_metrics(logits > 0, masks)
    summary = {"loss": LOSSES[loss_name](logits, masks).item(), "n_images": len(masks)}
    summary.update({k: v.mean().item() for k, v in per_image.items()})
    return summary, per_image


def evaluate(forward, inputs, masks, loss_name, batch_size, device, amp=True):
    """score() of the predictions of `forward` on `inputs`."""
    return score(predict_logits(forward, inputs, batch_size, device, amp), masks, loss_name)


@torch.no_grad()
def predict_probs(model, images, batch_size, device, amp=True, tta=False):
    """Lesion probabilities of uint8 images [N,3,S,S]. With tta: the mean over the image and its horizontal and
    vertical flips, each prediction flipped back first."""
    flips = [(), (-1,), (-2,)] if tta else [()]

    def forward(batch):
        return sum(model(batch[0].flip(f)).float().sigmoid().flip(f) for f in flips) / len(flips)
    return predict_logits(forward, [images], batch_size, device, amp)


def keep_largest_component(mask):
    """A boolean [H,W] numpy mask with only its largest 8-connected region: the lesion, without stray specks."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    return labels == sizes.argmax()


def full_resolution_metrics(variants, mask_paths, threshold=0.5):
    """{name: (per-image metrics, pooled IoU)} for each {name: probabilities [N,1,S,S]}, every prediction
    upsampled (bilinear, on probabilities) to its ground-truth mask's own size and thresholded there, as the ISIC
    challenges score; and the same under 'lcc_' + name with only the largest region kept. Each mask is read once."""
    names = [pre + name for name in variants for pre in ("", "lcc_")]
    per_image = {name: [] for name in names}
    counts = {name: [0, 0] for name in names}  # pooled intersection, union
    for i, path in enumerate(mask_paths):
        mask = torch.from_numpy(data.read_binary_mask(path))[None, None]
        for name, probs in variants.items():
            up = F.interpolate(probs[i:i + 1].float(), size=mask.shape[-2:], mode="bilinear", align_corners=False)
            pred = up > threshold
            largest = torch.from_numpy(keep_largest_component(pred[0, 0].numpy()))[None, None]
            for key, p in ((name, pred), ("lcc_" + name, largest)):
                per_image[key].append(per_image_metrics(p, mask))
                counts[key][0] += (p & mask).sum().item()
                counts[key][1] += (p | mask).sum().item()
    return {name: ({k: torch.cat([m[k] for m in rows]) for k in rows[0]}, counts[name][0] / max(counts[name][1], 1))
            for name, rows in per_image.items()}


def pooled_iou(pred, masks):
    """IoU of all pixels of all images together (not a per-image mean)."""
    pred, masks = pred.bool(), masks.bool()
    return (pred & masks).sum().item() / max((pred | masks).sum().item(), 1)


def score_model(model, split, loss_name, batch_size, device, amp=True, tta=True, full_res=True):
    """Every test number of a model on a load_split() result: per-image means at model resolution (plain keys),
    'tta_' keys with flip test-time augmentation, 'fullres_' keys at each mask's original size ('fullres_lcc_' with
    only the largest region kept), and 'pooled_iou' keys over all pixels together. Returns (summary, per-image
    metrics)."""
    masks = split["masks"]
    logits = predict_logits(lambda b: model(b[0]), [split["images"]], batch_size, device, amp)
    summary, per_image = score(logits, masks, loss_name)
    variants = {"": logits.sigmoid()}
    if tta:
        variants["tta_"] = predict_probs(model, split["images"], batch_size, device, amp, tta=True)
        add_metrics(summary, per_image, "tta_", per_image_metrics(variants["tta_"] > 0.5, masks))
    for prefix, probs in variants.items():
        summary[f"{prefix}pooled_iou"] = pooled_iou(probs > 0.5, masks)
    if full_res:
        for prefix, (metrics, pooled) in full_resolution_metrics(variants, split["mask_paths"]).items():
            add_metrics(summary, per_image, f"fullres_{prefix}", metrics)
            summary[f"fullres_{prefix}pooled_iou"] = pooled
    return summary, per_image


def add_metrics(summary, per_image, prefix, metrics):
    """Put per-image `metrics` and their means under prefixed keys."""
    per_image.update({prefix + k: v for k, v in metrics.items()})
    summary.update({prefix + k: v.mean().item() for k, v in metrics.items()})


def write_results(run_dir, split, summary, per_image, ids):
    """<split>_metrics.json and <split>_per_image.csv in the run folder."""
    runfiles.write_json(Path(run_dir) / f"{split}_metrics.json", summary)
    rows = [{"id": i, **{k: v[n].item() for k, v in per_image.items()}} for n, i in enumerate(ids)]
    runfiles.write_csv(Path(run_dir) / f"{split}_per_image.csv", rows)


def pick_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to PyTorch; use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise SystemExit("--device mps: MPS is not available on this machine; use --device cpu or auto")
    return torch.device(name)


def validation_seed(configs):
    """The --split-seed that all these runs held their validation images out with (one run, or an ensemble's)."""
    if any(c["val_fraction"] == 0 for c in configs):
        raise SystemExit("--split val: trained with --val-fraction 0, on every training image; none was held out")
    # runs from before --split-seed split by --seed
    splits = {(c["val_fraction"], c.get("split_seed", c["seed"])) for c in configs}
    if len(splits) > 1:
        raise SystemExit("--split val: these runs held out different validation images (--val-fraction, --split-seed "
                         f"{sorted(splits)}), so some were trained on the others' validation images")
    return splits.pop()[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, nargs="+", action="extend",
                        help="a best.pt or last.pt written by train.py; several: score their ensemble (mean of the "
                        "probabilities)")
    parser.add_argument("--data-dir", default="data", help="ISIC 2016 Part 1 folder (default: data)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="which split to score; val: the training images the run held out (default: test)")
    parser.add_argument("--out", help="folder for the metrics files (default: the checkpoint's folder; with several, "
                        "the folder that holds them all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--cache-dir", default="cache", help="where decoded images are cached (default: cache)")
    parser.add_argument("--workers", type=int, default=2, help="processes that decode JPEGs into the cache")
    parser.add_argument("--full-res", action="store_true",
                        help="also score at each mask's original size, as the ISIC challenge does (fullres_* keys)")
    parser.add_argument("--tta", action="store_true", help="also score flip test-time augmentation (tta_* keys)")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    model, configs = load_models(args.checkpoint, device)
    config = configs[0]
    split = data.load_split(args.data_dir, "test" if args.split == "test" else "train", config["image_size"],
                            args.cache_dir, args.workers)
    if args.split == "val":  # the same seeded split as training
        _, val_idx = data.split_indices(len(split["ids"]), config["val_fraction"], validation_seed(configs))
        split = {"images": split["images"][val_idx], "masks": split["masks"][val_idx],
                 "ids": [split["ids"][i] for i in val_idx], "mask_paths": [split["mask_paths"][i] for i in val_idx]}
    summary, per_image = score_model(model, split, config["loss"], args.batch_size, device,
                                      not config["no_amp"], args.tta, args.full_res)
    out = Path(args.out or os.path.commonpath([Path(c).parent for c in args.checkpoint]))
    out.mkdir(parents=True, exist_ok=True)
    summary["checkpoints"] = [os.path.relpath(c, out) for c in args.checkpoint]  # from `out`: the folder can move
    write_results(out, args.split, summary, per_image, split["ids"])
    print(f"{args.split} ({summary['n_images']} images): " + ", ".join(
        f"{k} {summary[k]:.4f}" for k in ("loss", "iou", "dice", "tta_iou", "fullres_iou", "fullres_tta_iou")
        if k in summary) + f" -> {out}/{args.split}_metrics.json")


if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")

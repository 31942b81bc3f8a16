"""Score trained checkpoints (one, or several as an ensemble) on a split: per-image metrics at model and at
full resolution, with flip TTA and the largest region (metrics.py), written beside the checkpoints.

    python evaluate.py --checkpoint runs/exp1-bce/best.pt --data-dir ../shared/isic2016
    python evaluate.py --checkpoint runs/best/seed*/best.pt --data-dir ../shared/isic2016 --tta --full-res
"""
import argparse
import os
import sys
from pathlib import Path

import torch

import data
import runfiles
from device import add_device_flag, autocast, pick_device
from errors import USER_ERRORS, UsageError
from metrics import add_metrics, full_resolution_metrics, per_image_metrics, pooled_iou, score
from model import load_models


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


def score_model(model, split, loss_name, batch_size, device, amp=True, tta=True, full_res=True):
    """Every test number of a model on a load_split() result: per-image means at model resolution (plain keys),
    'tta_' keys with flip test-time augmentation, 'fullres_' keys at each mask's original size ('fullres_lcc_' with
    only the largest region kept), and 'pooled_iou' keys over all pixels together. Returns (summary, per-image
    metrics)."""
    masks = split["masks"]
    logits = predict_logits(model, split["images"], batch_size, device, amp)
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


def write_results(run_dir, name, summary, per_image, ids):
    """<name>_metrics.json and <name>_per_image.csv in the run folder; returns the JSON file's path."""
    runfiles.write_json(Path(run_dir) / f"{name}_metrics.json", summary)
    rows = [{"id": i, **{k: v[n].item() for k, v in per_image.items()}} for n, i in enumerate(ids)]
    runfiles.write_csv(Path(run_dir) / f"{name}_per_image.csv", rows)
    return Path(run_dir) / f"{name}_metrics.json"


def results_name(out, split):
    """The name evaluate.py writes its results under: <split>, unless that would replace what train.py wrote
    for its own run (train.py's test_metrics.json has no 'checkpoints' key); then <split>_eval."""
    existing = Path(out) / f"{split}_metrics.json"
    if existing.exists() and "checkpoints" not in runfiles.read_json(existing):
        return f"{split}_eval"
    return split


def validation_seed(configs):
    """The --split-seed that all these runs held their validation images out with (one run, or an ensemble's)."""
    if any(c["val_fraction"] == 0 for c in configs):
        raise UsageError("--split val: trained with --val-fraction 0, on every training image; none was held out")
    # runs from before --split-seed split by --seed
    splits = {(c["val_fraction"], c.get("split_seed", c["seed"])) for c in configs}
    if len(splits) > 1:
        raise UsageError("--split val: these runs held out different validation images (--val-fraction, --split-seed "
                         f"{sorted(splits)}), so some were trained on the others' validation images")
    return splits.pop()[1]


def load_split(args, configs):
    """The --split of --data-dir at the models' image size: the training images they held out for validation
    (the same seeded or official split as training), all training images, or the test split (data.load_test)."""
    size, seed = configs[0]["image_size"], configs[0].get("split_seed", configs[0].get("seed", 0))
    if args.split == "train":
        return data.load_split(args.data_dir, "train", size, args.cache_dir, args.workers)
    if args.split == "val":
        return data.load_splits(args.data_dir, size, configs[0]["val_fraction"], validation_seed(configs),
                                args.cache_dir, args.workers)["val"]
    trained_on = any(Path(d).resolve() == Path(args.data_dir).resolve() for c in configs
                     for d in data.as_list(c.get("data_dir")))
    split, what = data.load_test(args.data_dir, size, seed, trained_on, args.cache_dir, args.workers)
    print(f"{data.detect_layout(args.data_dir)} in {args.data_dir}, {what}")
    return split


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, nargs="+", action="extend",
                        help="a best.pt or last.pt written by train.py; several: score their ensemble (mean of the "
                        "probabilities)")
    parser.add_argument("--data-dir", default="data",
                        help="a data folder in any accepted layout (README: Data), also one the models never saw; "
                        "without a test split, all of its images are scored (default: data)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="which split to score; val: the training images the run held out (default: test)")
    parser.add_argument("--out", help="folder for the metrics files (default: the checkpoint's folder; with several, "
                        "the folder that holds them all). A training run's own test_metrics.json is never replaced: "
                        "the scores then go to test_eval_metrics.json")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    add_device_flag(parser)
    parser.add_argument("--cache-dir", default="cache", help="where decoded images are cached (default: cache)")
    parser.add_argument("--workers", type=int, default=2, help="processes that decode JPEGs into the cache")
    parser.add_argument("--full-res", action="store_true",
                        help="also score at each mask's original size, as the ISIC challenge does (fullres_* keys)")
    parser.add_argument("--tta", action="store_true", help="also score flip test-time augmentation (tta_* keys)")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    model, configs = load_models(args.checkpoint, device)
    config = configs[0]
    split = load_split(args, configs)
    summary, per_image = score_model(model, split, config["loss"], args.batch_size, device,
                                      not config["no_amp"], args.tta, args.full_res)
    out = Path(args.out or os.path.commonpath([Path(c).parent for c in args.checkpoint]))
    out.mkdir(parents=True, exist_ok=True)
    summary["checkpoints"] = [os.path.relpath(c, out) for c in args.checkpoint]  # from `out`: the folder can move
    path = write_results(out, results_name(out, args.split), summary, per_image, split["ids"])
    print(f"{args.split} ({summary['n_images']} images): " + ", ".join(
        f"{k} {summary[k]:.4f}" for k in ("loss", "iou", "dice", "tta_iou", "fullres_iou", "fullres_tta_iou")
        if k in summary) + f" -> {path}")


if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")

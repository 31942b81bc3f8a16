"""Segment your own images with a trained checkpoint: one binary mask (0/255 PNG) per image, at the image's
original width and height.

    python predict.py --checkpoint runs/exp2-finetune/best.pt photos/ "more/*.jpg" --out masks --overlay
    python predict.py photos/ --tta --largest-component --checkpoint runs/best/seed0/best.pt \\
        --checkpoint runs/best/seed1/best.pt --checkpoint runs/best/seed2/best.pt    # make best's ensemble
"""
import argparse
import sys
import glob
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import data
from device import add_device_flag, pick_device
from errors import USER_ERRORS, UsageError
from evaluate import predict_probs
from metrics import keep_largest_component, upsample
from model import load_models


def expand_inputs(inputs):
    """Image files from files, folders (searched recursively) and glob patterns, expanded here so that quoted
    patterns work on every OS. Raises UsageError naming any input that matched nothing."""
    found, unmatched = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.suffix.lower() in data.IMAGE_EXTS)
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True)
                             if Path(p).suffix.lower() in data.IMAGE_EXTS)
        found += matches
        if not matches:
            unmatched.append(item)
    if unmatched:
        raise UsageError("no images found for: " + ", ".join(unmatched))
    return list(dict.fromkeys(found))  # drop duplicates, keep order


def outline(mask):
    """Pixels on the boundary of a boolean mask (inside the mask, next to a pixel outside it)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def save_overlay(image_path, mask, path):
    """The image with the predicted lesion's contour drawn in red, thicker on large images so it stays visible."""
    with Image.open(image_path) as im:
        image = np.array(im.convert("RGB"))
    edge = outline(mask)
    for _ in range(min(image.shape[:2]) // 300):  # grow the contour by one pixel each way
        p = np.pad(edge, 1)
        edge = edge | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    image[edge] = (255, 0, 0)
    Image.fromarray(image).save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("--input", nargs="+", action="extend", default=[], dest="more_inputs", metavar="INPUT",
                        help="more inputs, e.g. after --checkpoint's files")
    parser.add_argument("--checkpoint", required=True, nargs="+", action="extend",
                        help="best.pt or last.pt written by train.py; several: average their probabilities (ensemble)")
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument("--threshold", type=float, default=0.5, help="lesion where probability > this")
    parser.add_argument("--tta", action="store_true", help="average with horizontal and vertical flips")
    parser.add_argument("--largest-component", action="store_true",
                        help="keep only the largest connected region of each mask (one lesion per image)")
    parser.add_argument("--overlay", action="store_true", help="also write <id>_overlay.png with the contour")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    add_device_flag(parser)
    args = parser.parse_args(argv)
    if not args.inputs + args.more_inputs:
        parser.error("no INPUT given: name images, folders or patterns before --checkpoint, or after --input")

    device = pick_device(args.device)
    model, configs = load_models(args.checkpoint, device)
    paths = expand_inputs(args.inputs + args.more_inputs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size, amp = configs[0]["image_size"], not configs[0]["no_amp"]
    for start in tqdm(range(0, len(paths), args.batch_size), desc=f"predicting {len(paths)} images"):
        batch = paths[start:start + args.batch_size]
        try:
            decoded = [data.read_image(p, size) for p in batch]
        except Exception as e:
            raise UsageError(f"cannot read an image in {[str(p) for p in batch]}: {e}") from None
        images = torch.from_numpy(np.stack([d[0] for d in decoded])).permute(0, 3, 1, 2)
        probs = predict_probs(model, images, args.batch_size, device, amp, args.tta)
        for path, prob, (_, (width, height)) in zip(batch, probs, decoded):
            full = upsample(prob[None], (height, width))[0, 0]
            mask = (full > args.threshold).numpy()
            if args.largest_component:
                mask = keep_largest_component(mask)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{path.stem}_segmentation.png")
            if args.overlay:
                save_overlay(path, mask, out / f"{path.stem}_overlay.png")
    print(f"wrote {len(paths)} masks to {out}/")


if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")

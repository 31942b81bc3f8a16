"""Segment your own images with a trained checkpoint: one binary mask (0/255 PNG) per image, at the image's
original width and height.

    python predict.py --checkpoint runs/exp2-finetune/best.pt photos/ "more/*.jpg" --out masks --overlay
    python predict.py photos/ --tta --largest-component --checkpoint runs/best/seed0/best.pt \\
        --checkpoint runs/best/seed1/best.pt --checkpoint runs/best/seed2/best.pt    # make best's ensemble
"""
import argparse
import glob
import os
import sys
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
    patterns work on every OS; hidden files in folders (macOS's ._name.jpg) are skipped. Raises UsageError naming
    any input that matched nothing."""
    found, unmatched = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*")
                             if p.suffix.lower() in data.IMAGE_EXTS and not data.is_hidden(p))
        elif path.is_file():
            matches = [path]
        else:  # glob skips dot files (._name.jpg) itself
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True)
                             if Path(p).suffix.lower() in data.IMAGE_EXTS)
        found += matches
        if not matches:
            unmatched.append(item)
    if unmatched:
        raise UsageError("no images found for: " + ", ".join(unmatched))
    return list(dict.fromkeys(found))  # drop duplicates, keep order


def output_names(paths):
    """One output name per input path: its stem, or where stems clash (x.jpg, x.png, sub/x.jpg), its path below
    the inputs' common folder with the extension kept (x_jpg, x_png, sub/x_jpg), so no mask overwrites another."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    return [str(p.relative_to(root).with_suffix("")) + "_" + p.suffix[1:].lower() for p in resolved]


def open_output_folder(out):
    """Create --out; a sentence instead of a traceback when it is a file or cannot be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to --out {out} ({e.strerror}); choose a folder you can write to") from None
    return out


def outline(mask):
    """Pixels on the boundary of a boolean mask (inside the mask, next to a pixel outside it)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def save_overlay(image_path, mask, path):
    """The image with the predicted lesion's contour drawn in red, thicker on large images so it stays visible."""
    image = data.read_full_image(image_path)
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
    out = open_output_folder(args.out)
    names, failures, written = dict(zip(paths, output_names(paths))), [], 0
    for start in tqdm(range(0, len(paths), args.batch_size), desc=f"predicting {len(paths)} images", disable=None):
        batch, decoded = [], []
        for path in paths[start:start + args.batch_size]:
            try:
                decoded.append(data.read_image(path, configs[0]["image_size"]))
                batch.append(path)
            except Exception as e:  # PIL raises many types for corrupt or non-image files
                failures.append(f"{path}: {e}")
        if batch:
            written += write_masks(model, batch, decoded, names, out, args, device, not configs[0]["no_amp"])
    print(f"wrote {written} masks to {out}/")
    if failures:
        raise UsageError(f"{len(failures)} of {len(paths)} images could not be read (the other masks were "
                         "written):\n  " + "\n  ".join(failures))


def write_masks(model, paths, decoded, names, out, args, device, amp):
    """Predict a batch of decoded images and write each one's mask (and overlay) at the image's own size;
    returns how many masks are on disk."""
    images = torch.from_numpy(np.stack([d[0] for d in decoded])).permute(0, 3, 1, 2)
    probs = predict_probs(model, images, args.batch_size, device, amp, args.tta)
    for path, prob, (_, (width, height)) in zip(paths, probs, decoded):
        mask = (upsample(prob[None], (height, width))[0, 0] > args.threshold).numpy()
        if args.largest_component:
            mask = keep_largest_component(mask)
        target = out / f"{names[path]}_segmentation.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(target)
        if args.overlay:
            save_overlay(path, mask, out / f"{names[path]}_overlay.png")
    return sum((out / f"{names[path]}_segmentation.png").exists() for path in paths)

if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")

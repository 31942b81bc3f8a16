"""Segment your own images: one binary mask (0/255 PNG) per image, at the image's original width and height.
Without --checkpoint the released model (models/lesion_segmenter.pt, models/README.md) does it: no training.

    python predict.py photos/ "more/*.jpg" --out masks --overlay
    python predict.py photos/ --out masks --tta --largest-component --checkpoint runs/best/seed*/best.pt
    python predict.py photos/ --out masks --skip-existing          # continue a job that was interrupted

Every file is written under a temporary name and renamed, so an interrupted job leaves no half-written mask; the
input folders are never written to.
"""
import glob
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import cli
import decoding
import distributed
import layouts
import runfiles
from device import add_device_flag, pick_device
from errors import Interrupted, StorageError, UsageError
from inference import RELEASED, mask_at_size, mask_png, outline, predict_probs
from model import decision_threshold, load_models


def expand_inputs(inputs):
    """Image files from files, folders (searched recursively) and glob patterns, expanded here so that quoted
    patterns work on every OS; hidden files in folders (macOS's ._name.jpg) are skipped. Raises UsageError naming
    any input that matched nothing."""
    found, unmatched = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*")
                             if p.suffix.lower() in layouts.IMAGE_EXTS and not layouts.is_hidden(p))
        elif path.is_file():
            matches = [path]
        else:  # glob skips dot files (._name.jpg) itself
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True)
                             if Path(p).suffix.lower() in layouts.IMAGE_EXTS)
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


def open_output_folder(out, inputs, paths):
    """Create --out; a sentence instead of a traceback when it is a file, cannot be written, or lies in an input
    folder (where its masks would be read as inputs by the next run, and could replace the user's own files)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    target = out.resolve()
    searched = [Path(i).resolve() for i in inputs if Path(i).is_dir()]  # searched recursively
    inside = next((f for f in searched if target.is_relative_to(f)), None) or (
        target if target in {p.parent.resolve() for p in paths} else None)
    if inside is not None:
        raise UsageError(f"--out {out} is inside the input folder {inside}: the masks would be read as images by "
                         "the next run and could replace your own files; choose an --out outside it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"  # one per process: under torchrun several probe at once
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to --out {out} ({e.strerror}); choose a folder you can write to") from None
    return out


def overlay(image_path, mask):
    """The image with the predicted lesion's contour drawn in red, thicker on large images so it stays visible."""
    image = decoding.read_full_image(image_path)
    edge = outline(mask)
    for _ in range(min(image.shape[:2]) // 300):  # grow the contour by one pixel each way
        p = np.pad(edge, 1)
        edge = edge | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    image[edge] = (255, 0, 0)
    return Image.fromarray(image)


def save_png(image, path):
    """A PIL image as PNG, written whole or not at all (runfiles.atomic_write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    runfiles.atomic_write(path, lambda f: image.save(f, format="PNG"))


def predicted_masks(model, paths, size, args, device, amp):
    """(path, boolean mask [H,W] at the image's own size or None, why it could not be read or None) for each path,
    predicted --batch-size images at a time."""
    for start in range(0, len(paths), args.batch_size):
        decoded = []
        for path in paths[start:start + args.batch_size]:
            try:
                decoded.append((path, *decoding.read_image(path, size)))
            except Exception as e:  # PIL raises many types for corrupt or non-image files
                yield path, None, str(e)
        if decoded:
            images = torch.from_numpy(np.stack([pixels for _, pixels, _ in decoded])).permute(0, 3, 1, 2)
            probs = predict_probs(model, images, args.batch_size, device, amp, args.tta)
            for (path, _, (width, height)), prob in zip(decoded, probs):
                yield path, mask_at_size(prob, width, height, args.threshold, args.largest_component), None


def parse_args(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("--input", nargs="+", action="extend", default=[], dest="more_inputs", metavar="INPUT",
                        help="more inputs, e.g. after --checkpoint's files")
    parser.add_argument("--checkpoint", nargs="+", action="extend", metavar="FILE",
                        help="best.pt or last.pt written by train.py; several: average their probabilities (ensemble)"
                        f" (default: the released model, {os.path.relpath(RELEASED)})")
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument("--threshold", type=float,
                        help="lesion where probability > this (default: the threshold adapt.py stored in the "
                        "checkpoint, else 0.5)")
    parser.add_argument("--tta", action="store_true", help="average with horizontal and vertical flips")
    parser.add_argument("--largest-component", action="store_true",
                        help="keep only the largest connected region of each mask (one lesion per image)")
    parser.add_argument("--overlay", action="store_true", help="also write <id>_overlay.png with the contour")
    parser.add_argument("--skip-existing", action="store_true",
                        help="leave out images whose outputs --out already holds: an interrupted job continues")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    add_device_flag(parser)
    args = parser.parse_args(argv)
    args.inputs += args.more_inputs
    if not args.inputs:
        parser.error("no INPUT given: name images, folders or patterns (make predict INPUT=...), or add --input")
    args.checkpoint = args.checkpoint or [str(RELEASED)]
    return args


def main(argv=None):
    args = parse_args(argv)
    device = distributed.start(pick_device(args.device))  # under torchrun: each process takes its share
    model, configs = load_models(args.checkpoint, device)
    args.threshold = decision_threshold(configs) if args.threshold is None else args.threshold
    paths = expand_inputs(args.inputs)
    out = open_output_folder(args.out, args.inputs, paths)
    names = {path: out / name for path, name in zip(paths, output_names(paths))}
    kinds = ("_segmentation.png", "_overlay.png") if args.overlay else ("_segmentation.png",)
    mine = paths[distributed.rank()::distributed.world_size()]  # every image in exactly one process
    todo = [p for p in mine if not (args.skip_existing and all(Path(f"{names[p]}{k}").exists() for k in kinds))]
    masks = predicted_masks(model, todo, configs[0]["image_size"], args, device, not configs[0]["no_amp"])
    written, failures = write_masks(masks, names, todo, out, args)
    counts = distributed.total(torch.tensor([written, len(mine) - len(todo), len(failures)], dtype=torch.float64))
    distributed.stop()
    written, skipped, unreadable = (int(c) for c in counts)
    if distributed.is_main():
        print(f"wrote {written} masks to {out}/" + (f" ({skipped} skipped: already in {out}/)" if skipped else "")
              + (f"; {unreadable} images could not be read" if unreadable else ""))
    if failures:
        raise UsageError(f"{len(failures)} of {len(mine)} images could not be read (the other masks were "
                         "written):\n  " + "\n  ".join(failures))


def write_masks(masks, names, todo, out, args):
    """Write each predicted mask (and overlay) under its name; returns (masks written, [unreadable: why]).
    Ctrl-C and a full disk end with one sentence: how many were written, and how to continue."""
    failures, written = [], 0
    try:
        for path, mask, problem in tqdm(masks, total=len(todo), desc="predicting", unit="img", disable=None):
            if problem:
                failures.append(f"{path}: {problem}")
                continue
            save_png(mask_png(mask), Path(f"{names[path]}_segmentation.png"))
            if args.overlay:
                save_png(overlay(path, mask), Path(f"{names[path]}_overlay.png"))
            written += 1
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: wrote {written} of {len(todo)} masks to {out}/; run the same command with "
                          "--skip-existing to continue") from None
    except StorageError:
        raise StorageError(f"no space left in {out}/: wrote {written} of {len(todo)} masks, and no partial file; free "
                           "some space and run the same command with --skip-existing to continue") from None
    return written, failures


if __name__ == "__main__":
    cli.run(main)

"""Segment your own images: one binary mask (0/255 PNG) per image, at the image's original width and height.
Without --checkpoint the released model (models/lesion_segmenter.onnx, card: models/README.md) does it on ONNX
Runtime, with no PyTorch installed; train.py's checkpoints (.pt) run on PyTorch.

    python predict.py photos/ "more/*.jpg" -o masks --overlay
    python predict.py photos/ -o masks --tta --largest-component --checkpoint runs/best/seed*/best.pt
    python predict.py photos/ -o masks --skip-existing          # continue a job that was interrupted

Every file is written under a temporary name and renamed, so an interrupted job leaves no half-written mask; the
input folders are never written to. Under torchrun each process takes its share of the images.
"""
import glob
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from lib import cli, distributed, files, images, layouts, model_files
from lib.errors import Interrupted, StorageError, UsageError
from lib.masks import encoded, mask_png, overlay
from lib.segmenter import Segmenter

PHOTO_EXTS = layouts.IMAGE_EXTS + (".gif", ".webp")  # what folders and patterns yield: named, any file is tried


def expand_inputs(inputs):
    """{image file: the folder its outputs go to, relative to --out} of files, folders (searched recursively,
    linked folders too; an entry named x.jpg that is a folder is searched) and glob patterns, expanded here so that
    quoted patterns work on every OS; hidden files in folders (macOS's ._name.jpg) are skipped. An image keeps its
    subfolder below the folder (or the pattern's fixed part) it was found in. UsageError naming any input that
    matched nothing."""
    def photo(p):
        return p.suffix.lower() in PHOTO_EXTS and p.is_file()
    found, unmatched = {}, []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            base, matches = path, sorted(p for p in files_below(path) if photo(p) and not layouts.is_hidden(p))
        elif path.is_file():
            base, matches = path.parent, [path]
        else:  # glob skips dot files (._name.jpg) itself
            base = Path(*itertools.takewhile(lambda part: not glob.has_magic(part), path.parts))
            matches = sorted(p for p in map(Path, glob.glob(item, recursive=True)) if photo(p))
        for match in matches:
            found.setdefault(match, match.parent.relative_to(base))
        if not matches:
            unmatched.append(item)
    if unmatched:
        raise UsageError("no images found for: " + ", ".join(unmatched))
    return found


def files_below(folder):
    """Every file below folder, through linked folders too (each real folder once, so a link loop ends)."""
    seen = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        yield from (Path(root) / name for name in names)


def output_names(found, out):
    """{image: out/<its subfolder>/<files.output_stem>}, the prefix of its outputs: the same whatever else the
    folder holds. UsageError when two inputs would share one (x.jpg and x.JPG; a/x.jpg and b/x.jpg as files)."""
    names = {path: out / folder / files.output_stem(path.name) for path, folder in found.items()}
    taken = {}
    for path, name in names.items():
        taken.setdefault(name, []).append(path)
    clash = next((paths for paths in taken.values() if len(paths) > 1), None)
    if clash:
        raise UsageError(f"{' and '.join(map(str, clash))} would write the same mask "
                         f"({names[clash[0]].name}_segmentation.png): rename one, or segment them into separate "
                         "--out folders")
    return names


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


def decode(path):
    """(the photo as RGB uint8 [H,W,3], None) or (None, why it cannot be read): decoded once, for the model and
    for the overlay."""
    try:
        return images.read_full_image(path), None
    except Exception as e:  # PIL raises many types for corrupt or non-image files
        return None, str(e)


def decoded_batches(paths, batch_size, pool):
    """[(path, photo or None, why)] batch by batch, the next batch decoding in the pool while the caller works on
    this one (PIL releases the GIL): at most two batches of photos in memory."""
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    pending = [pool.submit(decode, p) for p in batches[0]] if batches else []
    for k, batch in enumerate(batches):
        done = [f.result() for f in pending]
        pending = [pool.submit(decode, p) for p in batches[k + 1]] if k + 1 < len(batches) else []
        yield [(path, *result) for path, result in zip(batch, done)]


def predicted_masks(segmenter, paths, batch_size, pool, tta=False, largest_component=False, threshold=None):
    """(path, photo, boolean mask [H,W] at the photo's own size) or (path, None, why it could not be read) for each
    path, batch_size photos per forward pass."""
    for batch in decoded_batches(paths, batch_size, pool):
        readable = [(path, photo) for path, photo, _ in batch if photo is not None]
        yield from ((path, None, why) for path, photo, why in batch if photo is None)
        if readable:
            masks = segmenter.masks([photo for _, photo in readable], tta, largest_component, threshold)
            yield from ((path, photo, mask) for (path, photo), mask in zip(readable, masks))


def outputs_done(path, name, kinds):
    """--skip-existing: whether every output of this image exists and decodes whole at the image's size. One that
    exists but does not (cut short, emptied, another image's) is said, and redone."""
    found = [Path(f"{name}{kind}") for kind in kinds if Path(f"{name}{kind}").exists()]
    if not found:
        return False
    try:
        size = images.displayed_size(path)
    except Exception:  # an unreadable image: predicting it says why
        return False
    broken = [f.name for f in found if not images.decodes_whole(f, size)]
    if broken:
        print(f"{', '.join(broken)}: does not decode whole at {size[0]}x{size[1]}; writing it again")
    return not broken and len(found) == len(kinds)


def write_outputs(photo, mask, name, with_overlay):
    """<name>_segmentation.png and, with_overlay, <name>_overlay.jpg, each written whole or not at all."""
    Path(name).parent.mkdir(parents=True, exist_ok=True)
    files.write_bytes(Path(f"{name}_segmentation.png"), encoded(mask_png(mask), "PNG"))
    if with_overlay:
        files.write_bytes(Path(f"{name}_overlay.jpg"), encoded(overlay(photo, mask), "JPEG"))


def parse_args(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("-i", "--input", nargs="+", action="extend", default=[], dest="more_inputs",
                        metavar="INPUT", help="more inputs, e.g. after --checkpoint's files")
    cli.add_checkpoint_flag(parser, "the model", default=model_files.ONNX, several=True, onnx=True)
    parser.add_argument("-o", "--out", default="predictions", help="output folder")
    cli.add_threshold_flag(parser)
    parser.add_argument("--tta", action="store_true", help="average with horizontal and vertical flips")
    parser.add_argument("--largest-component", action="store_true",
                        help="keep only the largest connected region of each mask (one lesion per image)")
    parser.add_argument("--overlay", action="store_true",
                        help="also write <id>_overlay.jpg, the photo with the contour: a JPEG (quality 90, full "
                        "chroma), since a lossless PNG of a whole photo costs several times the mask itself")
    parser.add_argument("--skip-existing", action="store_true",
                        help="leave out images whose outputs --out already holds: an interrupted job continues")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=2,
                        help="threads that decode the next batch and write files while the model runs")
    cli.add_device_flag(parser)
    args = parser.parse_args(argv)
    args.inputs += args.more_inputs
    if not args.inputs:
        parser.error("no INPUT given: name images, folders or patterns (make predict INPUT=...), or add --input")
    return args


def write_masks(segmenter, todo, names, out, args):
    """Predict and write each image's mask (and overlay) under its name, the writing in the pool's threads;
    returns (masks written, [unreadable: why]). Ctrl-C and a full disk end with one sentence: how many were
    written, and how to continue."""
    failures, writes = [], []
    pool = ThreadPoolExecutor(max(1, args.workers))
    try:
        masks = predicted_masks(segmenter, todo, args.batch_size, pool, args.tta, args.largest_component,
                                args.threshold)
        for path, photo, mask in tqdm(masks, total=len(todo), desc="predicting", unit="img", disable=None):
            if photo is None:
                failures.append(f"{path}: {mask}")
                continue
            writes.append(pool.submit(write_outputs, photo, mask, names[path], args.overlay))
            if len(writes) > 2 * args.batch_size:  # a bounded queue: its errors seen early, its photos freed
                writes[-2 * args.batch_size].result()
        for w in writes:
            w.result()
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: wrote {finished(pool, writes)} of {len(todo)} masks to {out}/; run the same "
                          "command with --skip-existing to continue") from None
    except StorageError:
        raise StorageError(f"no space left in {out}/: wrote {finished(pool, writes)} of {len(todo)} masks, and no "
                           "partial file; free some space and run the same command with --skip-existing to "
                           "continue") from None
    finally:
        pool.shutdown(cancel_futures=True)
    return len(writes), failures


def finished(pool, writes):
    """How many of the submitted writes completed, once those under way have ended (each whole or absent)."""
    pool.shutdown(wait=True, cancel_futures=True)
    return sum(w.done() and not w.cancelled() and w.exception() is None for w in writes)


def main(argv=None):
    args = parse_args(argv)
    distributed.start()  # under torchrun (which brings torch): one summary of the counts for the whole job
    segmenter = Segmenter.load(args.checkpoint, args.device)
    found = expand_inputs(args.inputs)
    paths = list(found)
    out = open_output_folder(args.out, args.inputs, paths)
    names = output_names(found, out)
    kinds = ("_segmentation.png", "_overlay.jpg") if args.overlay else ("_segmentation.png",)
    mine = paths[distributed.rank()::distributed.world_size()]  # every image in exactly one process
    stale = files.remove_dead_temporaries(out)
    if stale:
        print(f"removed {len(stale)} temporary files of a run that was killed: {', '.join(stale[:3])}"
              + (" ..." if len(stale) > 3 else ""))
    todo = [p for p in mine if not (args.skip_existing and outputs_done(p, names[p], kinds))]
    written, failures = write_masks(segmenter, todo, names, out, args)
    counts = distributed.total_counts([written, len(mine) - len(todo), len(failures)])
    distributed.stop()
    written, skipped, unreadable = counts
    if distributed.is_main():
        print(f"wrote {written} masks to {out}/" + (f" ({skipped} skipped: already in {out}/)" if skipped else "")
              + (f"; {unreadable} images could not be read" if unreadable else ""))
    if failures:
        raise UsageError(f"{len(failures)} of {len(mine)} images could not be read (the other masks were "
                         "written):\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    cli.run(main)

"""Segment your own images: one binary mask (0/255 PNG) per image, at the image's original width and height.
Without --checkpoint the released model (models/lesion_segmenter.onnx, card: models/README.md) does it on ONNX
Runtime, with no PyTorch installed; train.py's checkpoints (.pt) run on PyTorch.

    python predict.py photos/ "more/*.jpg" -o masks --overlay
    python predict.py photos/ -o masks --tta --largest-component --checkpoint runs/best/seed*/best.pt
    python predict.py photos/ -o masks --skip-existing          # continue a job that was interrupted
    python predict.py clinic/ -o clinic/ --watch                # then each photo that lands in clinic/, until Ctrl-C
    python predict.py /shared/archive/ -o /shared/masks --cluster auto   # a Ray cluster's actors (docs/scale.md)

Every file is written under a temporary name and renamed, so an interrupted job leaves no half-written mask; the
input folders are never written to. unsure.csv in --out lists every mask, the most unsure first (lib/masks.py
unsure): the ones a person should look at first. Under torchrun each process takes its share of the images; with
--cluster Ray Data hands batches to actors and retries the batch of one that dies (lib/cluster.py).
"""
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lib import cli, distributed, model_files, photos, saving, watching
from lib.errors import Interrupted, StorageError, UsageError
from lib.segmenter import Segmenter

SAVE_SECONDS = 30  # unsure.csv is rewritten whole at most this often while masks are written


def decoded_batches(paths, size, batch_size, pool):
    """[(path, photo or None, its model input or why it cannot be read)] batch by batch, the next batch decoding in
    the pool while the caller works on this one (PIL releases the GIL): at most two batches of photos in memory."""
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    pending = [pool.submit(photos.decode, p, size) for p in batches[0]] if batches else []
    for k, batch in enumerate(batches):
        done = [f.result() for f in pending]
        pending = [pool.submit(photos.decode, p, size) for p in batches[k + 1]] if k + 1 < len(batches) else []
        yield [(path, *result) for path, result in zip(batch, done)]


def write_options(args):
    """Segmenter.write()'s options from the flags: --largest-component, --threshold, --overlay."""
    return args.largest_component, args.threshold, args.overlay


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
                        help="also write <id>_overlay.jpg, the photo with the contour in red at the photo's own "
                        "width and height: a JPEG of quality 90 with full chroma (up to about 0.5 MB at 1024x768, less "
                        "for a smooth photo), since a lossless PNG of a photo costs several times the mask")
    parser.add_argument("--watch", action="store_true",
                        help="after the inputs' images, keep segmenting each new photo that lands in them (once it "
                        "is copied whole) until Ctrl-C; --out may then be the input folder itself")
    parser.add_argument("--skip-existing", action="store_true",
                        help="leave out images whose outputs --out already holds: an interrupted job continues")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="images per forward pass (8 kept two CPU cores busier than 16: docs/speed.md)")
    parser.add_argument("--workers", type=int, default=2,
                        help="threads that decode the next batch, make the masks and write files while the model runs "
                        "on the cores they leave")
    parser.add_argument("--cluster", metavar="ADDRESS",
                        help="run as a Ray Data pipeline (make cluster-setup; docs/scale.md): local (this machine's "
                        "cores), auto (the cluster `ray start` joined here) or a head's host:port")
    parser.add_argument("--actor-cpus", type=int, default=1,
                        help="with --cluster: CPUs, and ONNX Runtime threads, per actor (one model each)")
    cli.add_device_flag(parser)
    args = parser.parse_args(argv)
    args.inputs += args.more_inputs
    if not args.inputs:
        parser.error("no INPUT given: name images, folders or patterns (make predict INPUT=...), or add --input")
    return args


class UnsureScores:
    """A run's {output prefix: unsure score}, saved to unsure.csv as masks are written (at most SAVE_SECONDS apart)
    and at the end, so that a run killed mid-way keeps the scores of nearly all the masks it wrote; --skip-existing
    redoes the few without one."""

    def __init__(self, out):
        self.out, self.scores, self.saved = out, {}, time.monotonic()

    def add(self, name, score):
        self.scores[name] = score
        if time.monotonic() - self.saved > SAVE_SECONDS:
            self.save()

    def save(self, quietly=False):
        """quietly: a full disk is left to the message of the run it interrupted."""
        try:
            write_unsure(self.out, self.scores)
        except StorageError:
            if not quietly:
                raise
        self.saved = time.monotonic()


def write_masks(segmenter, todo, names, out, args, scores):
    """Predict and write each image's mask (and overlay) under its name: the model in this thread, decoding, the
    masks at each photo's size and the writing in the pool's, so that both run at once; each mask's unsure score
    added to `scores`. Returns (masks written, [unreadable: why]). Ctrl-C and a full disk end with one sentence: how
    many were written, and how to continue."""
    failures, writes = [], []
    pool = ThreadPoolExecutor(max(1, args.workers))
    bar = cli.progress(len(todo), "predicting")
    try:
        for batch in decoded_batches(todo, segmenter.image_size, args.batch_size, pool):
            failures += [f"{path}: {why}" for path, photo, why in batch if photo is None]
            readable = [(path, photo, small) for path, photo, small in batch if photo is not None]
            probs = segmenter.probabilities(np.stack([small for *_, small in readable]), args.tta) if readable else []
            for (path, photo, _), prob in zip(readable, probs):
                scores.add(names[path], segmenter.unsure(prob, args.threshold))
                writes.append(pool.submit(segmenter.write, prob, photo, names[path], *write_options(args)))
                if len(writes) > 2 * args.batch_size:  # a bounded queue: its errors seen early, its photos freed
                    writes[-2 * args.batch_size].result()
            bar.update(len(batch))
        for w in writes:
            w.result()
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: wrote {finished(pool, writes)} of {cli.plural(len(todo), 'mask')} to {out}/; "
                          "run the same command with --skip-existing to continue") from None
    except StorageError:
        raise StorageError(f"no space left in {out}/: wrote {finished(pool, writes)} of "
                           f"{cli.plural(len(todo), 'mask')}, and no partial file; free some space and run the same "
                           "command with --skip-existing to continue") from None
    finally:
        pool.shutdown(cancel_futures=True)
        bar.close()
    return len(writes), failures


def write_unsure(out, scores):
    """out/unsure.csv (under torchrun one per process, unsure-<rank>.csv): each mask of {output prefix: unsure
    score} with the rows an earlier run wrote for others, the most unsure first."""
    path = out / ("unsure.csv" if distributed.world_size() == 1 else f"unsure-{distributed.rank()}.csv")
    rows = {r["mask"]: r for r in saving.read_csv(path)} if path.exists() else {}
    for name, score in scores.items():
        rows[mask_name(name, out)] = {"mask": mask_name(name, out), "unsure": score}
    if rows:
        saving.write_csv(path, sorted(rows.values(), key=lambda r: -float(r["unsure"])))


def mask_name(name, out):
    """A mask's row in unsure.csv: its path below --out."""
    return os.path.relpath(f"{name}_segmentation.png", out)


def scored_masks(out):
    """The masks that out/unsure*.csv already scores (--skip-existing leaves out only those)."""
    return {row["mask"] for path in out.glob("unsure*.csv") for row in saving.read_csv(path)}


def finished(pool, writes):
    """How many of the submitted writes completed, once those under way have ended (each whole or absent)."""
    pool.shutdown(wait=True, cancel_futures=True)
    return sum(w.done() and not w.cancelled() and w.exception() is None for w in writes)


def inputs_now(args):
    """{image: its output subfolder} of the inputs as they are; with --watch, input folders may still be empty."""
    try:
        return photos.expand_inputs(args.inputs)
    except UsageError:
        if args.watch and all(Path(i).is_dir() for i in args.inputs):
            return {}
        raise


def watch(segmenter, out, handled, args, scores):
    """--watch: each new or changed photo of the inputs segmented and written as the first pass wrote them, its
    unsure score saved at once, until Ctrl-C or SIGTERM; handled: {photo: its output prefix or None} of the first
    pass."""
    print(f"watching {', '.join(args.inputs)} for new photos; their masks go to {out}/ (Ctrl-C stops)", flush=True)

    def segment_and_write(photo, small, name):
        prob = segmenter.probabilities(small[None], args.tta)[0]
        segmenter.write(prob, photo, name, *write_options(args))
        scores.add(name, segmenter.unsure(prob, args.threshold))
        scores.save()  # photos come one by one: unsure.csv ranks each as it comes
    more = watching.watch(args.inputs, out, handled, segmenter.image_size, segment_and_write)
    print(f"stopped watching: wrote {cli.plural(more, 'more mask')} to {out}/")


def main(argv=None):
    args = parse_args(argv)
    warnings.showwarning = photos.show_warning  # a photo's warning names it, each time
    warnings.filterwarnings("always", message="Corrupt EXIF")
    distributed.start()  # under torchrun (which brings torch): one summary of the counts for the whole job
    # the model gets the cores the pool's threads leave it: on two cores one thread, which ran faster than two
    segmenter = Segmenter.load(args.checkpoint, args.device, threads=max(1, (os.cpu_count() or 1) - args.workers))
    if args.watch and (distributed.world_size() > 1 or args.cluster):
        raise UsageError("--watch runs in one process: start it without torchrun or --cluster")
    if args.cluster and distributed.world_size() > 1:
        raise UsageError("--cluster schedules its own processes: start it without torchrun")
    found = inputs_now(args)
    out = photos.open_output_folder(args.out, args.inputs, list(found), inside_inputs=args.watch)
    if args.watch:
        own = photos.outputs(found, out, args.inputs)
        found = {p: f for p, f in found.items() if p not in own}
    names, unnamed = photos.output_names(found, out)
    paths = [p for p in found if p in names]
    formats = [f"{p.name} -> {names[p].name}" for p in paths if names[p].name != p.stem]
    if formats and distributed.is_main():
        print(f"photos that share a name in one folder are named with their format: {', '.join(formats[:6])}"
              + (" ..." if len(formats) > 6 else ""))
    kinds = photos.OUTPUTS if args.overlay else photos.OUTPUTS[:1]
    mine = paths[distributed.rank()::distributed.world_size()]  # every image in exactly one process
    stale = saving.remove_dead_temporaries(out)
    if stale:
        print(f"removed {len(stale)} temporary files of a run that was killed: {', '.join(stale[:3])}"
              + (" ..." if len(stale) > 3 else ""))
    scored = scored_masks(out) if args.skip_existing else set()
    todo = [p for p in mine if not (args.skip_existing and photos.outputs_done(p, names[p], kinds)
                                    and mask_name(names[p], out) in scored)]
    scores = UnsureScores(out)
    try:
        if args.cluster:
            from lib import cluster  # here: ray is an extra (requirements-cluster.txt)
            written, failures = cluster.write_masks(args.checkpoint, todo, names, out, args, scores,
                                                    write_options(args))
        else:
            written, failures = write_masks(segmenter, todo, names, out, args, scores)
    except (Interrupted, StorageError):
        scores.save(quietly=True)  # the written masks' scores: --skip-existing then skips just those
        raise
    scores.save()
    failures += unnamed if distributed.is_main() else []
    counts = distributed.total_counts([written, len(mine) - len(todo), len(failures)])
    distributed.stop()
    written, skipped, unreadable = counts
    if distributed.is_main():
        print(f"wrote {cli.plural(written, 'mask')} to {out}/"
              + (f" ({skipped} skipped: already in {out}/)" if skipped else "")
              + (f"; {cli.plural(unreadable, 'image')} not segmented" if unreadable else ""))
    if args.watch:
        watch(segmenter, out, {p: names.get(p) for p in found}, args, scores)
    if failures:
        raise UsageError(f"{len(failures)} of {cli.plural(len(mine) + len(unnamed), 'image')} not segmented (the "
                         "other masks were written):\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    cli.run(main)

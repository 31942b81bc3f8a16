"""Adapt a trained model to your own annotators: calibrate how far its masks' edge moves in or out on your labelled
images, with --train-flags also fine-tune it on them (train.py), compare it before and after on held-out ones, and
write the model you use from then on with its card.

    make adapt DATA_DIR=my_labelled/        # the edge move, then fine-tuning on what the move leaves
    make calibrate DATA_DIR=my_labelled/    # the edge move alone: no training
    python tools/adapt.py --data-dir my_labelled/ --train-flags "--freeze-encoder --epochs 10 ..." --out runs/adapt

DATA_DIR may be in any layout that --data-dir reads (README: Data). Its training images (a plain images/ + masks/
folder: all but the 20% held out) calibrate the edge move (calibration.py); fine-tuning then trains on them with
their masks' edge moved back by that move (OUT/targets), so that it learns what the move does not, and the move is
applied to the fine-tuned model's masks too. Its test images (test/, or that 20%) are held out and scored before
and after. --out receives model.pt (float16, the edge move stored inside: predict.py, evaluate.py, serve.py and
export.py use it), README.md (its card), adapt.json and, with --train-flags, train.py's run.
"""
import datetime
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as tools/x.py: lib/ and the top-level modules import from the root

from data import load_splits
from lib import cli, files, images, model_files, run_folder
from lib.calibration import calibrate, edge_curves
from lib.checkpoints import half_precision, load_checkpoint
from lib.device import pick_device
from lib.errors import DataError, TrainingError, UsageError
from lib.masks import encoded, mask_png, move_edge
from lib.metrics import largest_region_iou, paired_difference
from lib.scoring import tta_probabilities

RECIPE = ("epochs", "lr", "batch_size", "freeze_encoder", "shift_aug", "ema", "seed")  # the card names these flags
MARGIN = 2  # standard errors a paired change must clear before the card calls it better or worse
FEW_HELD_OUT = 10  # below this many held-out images the card warns that its scores say little


def load_user_data(data_dir, size, split_seed, cache_dir):
    """(calibration images, held-out images or None when there are none): the training and test splits train.py
    used with --val-fraction 0. DataError for fewer than 2 calibration images."""
    splits = load_splits(data_dir, size, 0, split_seed, cache_dir, draft=False)  # as make predict decodes them
    print(splits["note"])
    if len(splits["train"]["ids"]) < 2:
        raise DataError(f"{len(splits['train']['ids'])} labelled training image(s) in {data_dir}: adaptation needs "
                        "at least 2, and 10 or more to be worth it")
    held_out = splits["test"] if splits["test"] and len(splits["test"]["ids"]) else None
    refuse_one_value_masks([s for s in (splits["train"], held_out) if s], data_dir)
    return splits["train"], held_out


def refuse_one_value_masks(splits, data_dir):
    """DataError when most masks are all lesion or all background: no edge to calibrate or learn from, and a
    change of the edge would be scored on masks that say nothing about it."""
    flat = [path for s in splits for path, m in zip(s["mask_paths"], s["masks"]) if m.min() == m.max()]
    total = sum(len(s["ids"]) for s in splits)
    if 2 * len(flat) > total:
        names = ", ".join(Path(f).name for f in flat[:5]) + (f" and {len(flat) - 5} more" if len(flat) > 5 else "")
        raise DataError(f"{len(flat)} of the {total} masks in {data_dir} are all lesion or all background ({names}): "
                        "calibration needs masks that outline each lesion, white on black (or a palette index above "
                        "0 for the lesion)")


def write_targets(split, move, folder):
    """The calibration images as FOLDER/train, each mask's edge moved back by the calibrated move (out for a move
    in): what make adapt fine-tunes on, so that training learns what the move, applied after it, does not. Written
    through runfiles: a full disk is one sentence (StorageError), not a traceback."""
    shutil.rmtree(folder, ignore_errors=True)  # ours: written anew from the user's masks on every run
    for sub in ("images", "masks"):
        (folder / "train" / sub).mkdir(parents=True)
    for i, image_path, mask_path in zip(split["ids"], split["image_paths"], split["mask_paths"]):
        image = Path(image_path)
        files.write_bytes(folder / "train" / "images" / f"{i}{image.suffix}", image.read_bytes())
        mask = move_edge(images.read_binary_mask(mask_path), -move)
        files.write_bytes(folder / "train" / "masks" / f"{i}.png", encoded(mask_png(mask), "PNG"))


def fine_tune(checkpoint, targets, args):
    """train.py from checkpoint on the targets folder with --train-flags, its run in --out; returns its best.pt."""
    command = [sys.executable, str(ROOT / "train.py"), "--data-dir", str(targets), "--init-from",
               checkpoint, *shlex.split(args.train_flags), "--out", args.out, "--cache-dir", args.cache_dir,
               "--device", args.device]
    if subprocess.run(command).returncode:
        raise TrainingError("train.py stopped (its message is above); nothing was adapted")
    return Path(args.out) / "best.pt"


def compare(base, adapted, move, held_out, device):
    """{row name: paired_difference() against the model before} on the held-out images, the edge moved by move
    for the calibrated and the adapted model."""
    masks = held_out["mask_paths"]
    probs = tta_probabilities(*base, held_out["images"], device)  # once: scored as it is and with the edge moved
    before = largest_region_iou(probs, masks)
    rows = {"before": paired_difference(before, before),
            f"calibrated (edge {move:+g})": paired_difference(before, largest_region_iou(probs, masks, 0.5, move))}
    if adapted:
        rows[f"adapted (edge {move:+g})"] = paired_difference(
            before, largest_region_iou(tta_probabilities(*adapted, held_out["images"], device), masks, 0.5, move))
    return rows


def verdict(rows, adapted):
    """Sentences on the last row against the first: better or worse only when the paired change clears MARGIN
    standard errors, else no clear difference; a warning below FEW_HELD_OUT held-out images."""
    last = rows[list(rows)[-1]]
    what, n, change, error = ("adaptation" if adapted else "calibration"), last["n"], \
        last["difference"], last["standard_error"]
    if n < 2:
        text = (f"On 1 held-out image {what} changed IoU by {change:+.4f}: one image gives no standard error, so "
                "this says nothing either way.")
    elif change > MARGIN * error:
        text = f"On {n} held-out images {what} helped: IoU {change:+.4f} ± {error:.4f} (more than {MARGIN} SE)."
    elif change < -MARGIN * error:
        text = (f"On {n} held-out images {what} did worse: IoU {change:+.4f} ± {error:.4f} (more than {MARGIN} SE); "
                "keep the model before, or label more images.")
    else:
        text = (f"On {n} held-out images {what} made no clear difference (IoU {change:+.4f} ± {error:.4f}, within "
                f"{MARGIN} SE).")
    if n < FEW_HELD_OUT:
        text += (f" Only {n} held-out image{'s' if n > 1 else ''}: too few to tell a change of a few hundredths; hold "
                 f"out {FEW_HELD_OUT} or more: label {FEW_HELD_OUT - n} more and put them in test/images + "
                 f"test/masks (a plain images/ + masks/ folder holds a fifth out: label {5 * (FEW_HELD_OUT - n)} "
                 "more there).")
    return text


def standard_error(row):
    return "n/a (1 image)" if row["n"] < 2 else f"{row['standard_error']:.4f}"


def edge_words(move):
    """An edge move in words: 'the model's own edge', or 'the edge moved in by 7% of each lesion's radius'."""
    if not move:
        return "the model's own edge"
    return f"the edge moved {'in' if move > 0 else 'out'} by {abs(move):.0%} of each lesion's radius"


def calibration_sentence(c, adapted):
    """What calibration (calibration.calibrate: the best move if its gain clears its standard error) found, and the
    edge move it uses."""
    found = f"Calibration {'of the model before ' if adapted else ''}on those {c['images']} images found"
    if c["best_edge_move"] == 0:
        return f"{found} the model's own edge best, so it is kept."
    found += (f" a move of {c['best_edge_move']:+g} x the radius best (+ inward, - outward), {c['gain']:+.4f} IoU "
              f"over the model's own edge on them (paired SE {c['standard_error']:.4f}); ")
    if c["edge_move"] == 0:
        return found + "that is within its standard error, so the model's own edge is kept."
    return found + "that clears its standard error, so it is used."


def predict_command(model):
    """The make command that segments photos with this model (the released one needs no CHECKPOINT)."""
    given = "" if Path(model).resolve() == model_files.PT.resolve() else f" CHECKPOINT={model}"
    return f"`make predict INPUT=photos/{given}`"


def recommendation(report, rows):
    """The card's first sentence: which model to use next, the command for it, and why in plain words."""
    what, new, before = ("adapted" if report["adapted"] else "calibrated"), report["model"], report["checkpoint"]
    keep = f"**Keep the model before, `{before}`:** {predict_command(before)}."
    if not report["adapted"] and report["edge_move"] == 0:
        return f"{keep} Calibration kept the model's own edge, so `{new}` draws the same masks."
    if not rows:
        return (f"{keep} No labelled image was held out, so nothing here shows that the {what} model `{new}` is "
                f"better; put {FEW_HELD_OUT} or more labelled images in test/images + test/masks and run again.")
    last = rows[list(rows)[-1]]
    if last["n"] >= 2 and last["difference"] > MARGIN * last["standard_error"]:
        return (f"**Use the {what} model, `{new}`:** {predict_command(new)} (in the browser: `make serve "
                f"CHECKPOINT={new}`). On {last['n']} held-out images its masks matched yours better than the "
                f"model before's (IoU {last['difference']:+.4f}).")
    return (f"{keep} On {last['n']} held-out image{'s' if last['n'] > 1 else ''} the {what} model `{new}` was not "
            f"clearly better (IoU {last['difference']:+.4f}), so it is not worth the change.")


def card(report, rows):
    """The adapted model's card (Markdown): which model to use next, where it came from, its edge move, and how
    it scores."""
    c = report["calibration"]
    lines = [f"# {'Adapted' if report['adapted'] else 'Calibrated'} lesion segmenter", "",
             recommendation(report, rows), "",
             f"`model.pt`, written by adapt.py on {report['date']} (commit {report['commit']}) from "
             f"`{report['adapted'] or report['checkpoint']}`"
             + (f", fine-tuned from `{report['checkpoint']}`" if report['adapted'] else "")
             + f" on {c['images']} labelled images of `{report['data_dir']}`.", "",
             f"**Masks: {edge_words(report['edge_move'])}.** "
             + calibration_sentence(c, report["adapted"])
             + (" The model was then fine-tuned on these images with their masks' edge moved back by that move, so"
                " that it learns what the move does not." if report["adapted"] and report["edge_move"] else ""), ""]
    if rows:
        lines += [f"IoU on {report['held_out']} held-out images (each mask's own size, flip TTA, largest region):", "",
                  "| model | mean IoU | change | paired SE | better / worse images |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {r['new']:.4f} | {r['difference']:+.4f} | {standard_error(r)} | "
                  f"{r['new_better']} / {r['new_worse']} |" for name, r in rows.items()]
        lines += ["", verdict(rows, report["adapted"]) + " (± is the standard error of the mean change over "
                  "these images: a change smaller than about twice it may be chance.)"]
    else:
        lines += ["No held-out images (the folder has a training split only, or too few images to hold a fifth "
                  "out): put some in test/images + test/masks to see whether this model is better than the one "
                  "before."]
    if report["recipe"]:
        flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in report["recipe"].items()
                 if v is not False]
        lines += ["", f"Fine-tuned with train.py {' '.join(flags)} (all flags: its config.json)."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = cli.parser(__doc__)
    cli.add_data_dir_flag(parser, "your labelled images", required=True)
    cli.add_checkpoint_flag(parser, "the model before adaptation", default=model_files.PT)
    parser.add_argument("--train-flags", metavar="FLAGS",
                        help="fine-tune after calibrating: train.py's flags in one string (make adapt passes its "
                        "recipe); without it, the edge move is calibrated alone")
    parser.add_argument("--out", default="runs/adapt", help="folder for model.pt, README.md, adapt.json "
                        "(default: runs/adapt)")
    parser.add_argument("--overwrite", action="store_true", help="replace the model an earlier run left in --out")
    cli.add_cache_dir_flag(parser)
    cli.add_device_flag(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device, out = pick_device(args.device), Path(args.out)
    if (out / "model.pt").exists() and not args.overwrite:
        raise UsageError(f"{out} already holds a model (model.pt) from an earlier run: add --overwrite (make ... "
                         "OVERWRITE=1) to replace it, or choose another --out")
    base = load_checkpoint(args.checkpoint, device)
    calibration_images, held_out = load_user_data(args.data_dir, base[1]["image_size"], base[1]["split_seed"],
                                                  args.cache_dir)
    calib = calibrate(edge_curves(tta_probabilities(*base, calibration_images["images"], device), [
        images.read_binary_mask(p) for p in calibration_images["mask_paths"]]))
    move, adapted_file, adapted = calib["edge_move"], None, None
    if args.train_flags:
        write_targets(calibration_images, move, out / "targets")
        adapted_file = fine_tune(args.checkpoint, out / "targets", args)
        adapted = load_checkpoint(adapted_file, device)
    rows = compare(base, adapted, move, held_out, device) if held_out else {}
    model_file = half_precision(adapted_file or args.checkpoint)
    model_file["config"].update(threshold=0.5, edge_move=move)  # the edge was calibrated at 0.5
    out.mkdir(parents=True, exist_ok=True)
    files.atomic_save(model_file, out / "model.pt")
    report = {"data_dir": args.data_dir, "checkpoint": args.checkpoint,
              "adapted": str(adapted_file) if adapted_file else None, "model": str(out / "model.pt"),
              "threshold": 0.5, "edge_move": move, "calibration": calib,
              "held_out": len(held_out["ids"]) if held_out else 0, "comparisons": rows,
              "recipe": {k: adapted[1][k] for k in RECIPE} if adapted else None,
              "date": datetime.date.today().isoformat(), "commit": run_folder.code_revision()}
    files.write_json(out / "adapt.json", report)
    files.write_text(out / "README.md", card(report, rows))
    print(card(report, rows).split("\n", 2)[2].rstrip())
    print(f"wrote {out}/model.pt, {out}/README.md, {out}/adapt.json")


if __name__ == "__main__":
    cli.run(main)

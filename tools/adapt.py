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
from lib import cards, cli, files, images, model_files, revision
from lib.calibration import calibrate, edge_curves, refuse_one_value_masks
from lib.checkpoints import half_precision, load_checkpoint
from lib.device import pick_device
from lib.errors import DataError, TrainingError, UsageError
from lib.masks import encoded, mask_png, move_edge
from lib.compare import paired_difference
from lib.metrics import largest_region_iou
from lib.scoring import tta_probabilities

RECIPE = ("epochs", "lr", "batch_size", "freeze_encoder", "shift_aug", "ema", "seed")  # the card names these flags


def load_user_data(data_dir, size, split_seed, cache_dir):
    """(calibration images, held-out images or None when there are none): the training and test splits train.py
    used with --val-fraction 0. DataError for fewer than 2 calibration images."""
    splits = load_splits(data_dir, size, 0, split_seed, cache_dir, draft=False)  # as make predict decodes them
    print(splits["note"])
    if len(splits["train"]["ids"]) < 2:
        raise DataError(f"{len(splits['train']['ids'])} labelled training image(s) in {data_dir}: adaptation needs "
                        "at least 2, and 10 or more to be worth it")
    held_out = splits["test"] if splits["test"] and len(splits["test"]["ids"]) else None
    both = [s for s in (splits["train"], held_out) if s]
    refuse_one_value_masks([m for s in both for m in s["masks"].numpy()], [p for s in both for p in s["mask_paths"]],
                           data_dir)
    return splits["train"], held_out


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
              "date": datetime.date.today().isoformat(), "commit": revision.code_revision(), "tool": "tools/adapt.py"}
    files.write_json(out / "adapt.json", report)
    text = cards.card(report, rows)
    files.write_text(out / "README.md", text)
    print(text.split("\n", 2)[2].rstrip())
    print(f"wrote {out}/model.pt, {out}/README.md, {out}/adapt.json")


if __name__ == "__main__":
    cli.run(main)

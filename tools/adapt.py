"""Adapt a trained model to your own annotators: calibrate how far its masks' edge moves in or out on your labelled
images and, with --train-flags, choose by cross-validation on them between the model before, that edge move alone
and two ways of fine-tuning it (train.py); compare the choice with the model before on held-out images, and write
the model you use from then on with its card.

    make adapt DATA_DIR=my_labelled/        # cross-validated choice: before, edge move, or fine-tuned
    python tools/adapt.py --data-dir my_labelled/ --train-flags "--freeze-encoder --epochs 10 ..." --out runs/adapt
    make calibrate DATA_DIR=my_labelled/    # the edge move alone, without PyTorch (tools/calibrate.py)

DATA_DIR may be in any layout that --data-dir reads (README: Data). Its training images (a plain images/ + masks/
folder: all but the 20% held out) calibrate the edge move (calibration.py) and, in --folds folds, score each
candidate fitted on the other folds: the model before, the edge move alone, fine-tuning on the masks as they are
(with an edge move on top if calibration adopts one), and fine-tuning on the masks with their edge moved back, the
move applied after. The better fine-tuned candidate out of fold is shipped unless it trails the edge move alone
there by more than twice its paired standard error (lib/calibration.py choose); the winner is then fitted on all
training images. Its test images
(test/, or that 20%) are held out and scored before and after. --out receives model.pt (float16, the edge move
stored inside: predict.py, evaluate.py, serve.py and export.py use it), README.md (its card), adapt.json, the
fine-tuning run (train.py's files) and folds/ (each fold's runs).
"""
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from project_root import ROOT  # first: lib/ and the top-level modules import from the project's root

import numpy as np

from data import load_splits, subset
from lib import cards, cli, model_files, readers, saving
from lib.calibration import (CANDIDATES, EDGE_MOVES, FINE_TUNED, FOLDS, calibrate, choose, edge_curves, fold_of,
                             refuse_disagreeing_masks, refuse_one_value_masks)
from lib.checkpoints import half_precision, load_checkpoint, sealed
from lib.device import pick_device
from lib.errors import DataError, TrainingError, UsageError
from lib.masks import mask_png, move_edge
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
        saving.write_bytes(folder / "train" / "images" / f"{i}{image.suffix}", image.read_bytes())
        mask = move_edge(readers.read_binary_mask(mask_path), -move)
        saving.write_bytes(folder / "train" / "masks" / f"{i}.png", mask_png(mask))


def fine_tune(checkpoint, targets, run, flags, quiet=False):
    """train.py from checkpoint on the targets folder with flags (train.py's, a list), its run in run; returns its
    best.pt. quiet: its progress to its own train.log only (a cross-validation fold)."""
    command = [sys.executable, str(ROOT / "train.py"), "--data-dir", str(targets), "--init-from", checkpoint,
               *flags, "--out", str(run)]
    result = subprocess.run(command, stdout=subprocess.DEVNULL if quiet else None,
                            stderr=subprocess.PIPE if quiet else None, text=True)
    if result.returncode:
        said = (result.stderr or "").strip().splitlines()[-1:] if quiet else []
        raise TrainingError(f"train.py stopped ({said[0] if said else 'its message is above'}); nothing was adapted")
    return Path(run) / "best.pt"


def train_flags(args, apart=False):
    """train.py's flags for a fine-tuning run: --train-flags, the cache and device. A run apart (a fold's) is made
    anew each time (its folder is ours), without the user's --resume or --overwrite, and lean: no decoding processes
    and one prediction panel (the same training, 3 s sooner)."""
    flags = shlex.split(args.train_flags) + ["--cache-dir", args.cache_dir, "--device", args.device]
    lean = ["--overwrite", "--workers", "0", "--viz-every", "1000"]
    return [f for f in flags if f not in ("--resume", "--overwrite")] + lean if apart else flags


def fit(candidate, split, masks, move, folder, args, device, apart=False):
    """(best.pt, (model, config), the edge move its masks take) of one fine-tuned candidate on split (its boolean
    masks beside): trained on the masks as they are ("tuned", then the edge move that calibration on these images
    adopts on top of it) or with the edge move undone ("tuned-moved", then move). The run goes to --out, or apart
    (quietly) to folder/run."""
    undo = move if candidate == "tuned-moved" else 0.0
    write_targets(split, undo, folder / "targets")
    run = folder / "run" if apart else Path(args.out)
    best = fine_tune(args.checkpoint, folder / "targets", run, train_flags(args, apart), quiet=apart)
    tuned = load_checkpoint(best, device)
    if candidate == "tuned-moved":
        return best, tuned, move
    return best, tuned, calibrate(edge_curves(tta_probabilities(*tuned, split["images"], device), masks))["edge_move"]


def cross_validate(split, masks, curves, args, device):
    """Out-of-fold IoU [N] of every candidate on the training images: each fold's images scored by candidates
    fitted on the other folds (the edge move calibrated there, fine-tuning run there), as make predict masks them."""
    fold, zero = fold_of(len(masks), args.folds), int(np.argmin(np.abs(EDGE_MOVES)))
    scores = {name: np.empty(len(masks)) for name in CANDIDATES}
    for k in range(fold.max() + 1):
        held, kept = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        move = calibrate(curves[kept])["edge_move"]
        scores["before"][held] = curves[held, zero]
        scores["edge"][held] = curves[held, int(np.argmin(np.abs(EDGE_MOVES - move)))]
        print(f"cross-validation, fold {k + 1} of {fold.max() + 1}: fine-tuning on {len(kept)} images")
        fitted = fit_both(subset(split, kept), [masks[i] for i in kept], move, Path(args.out) / "folds" / str(k),
                          args, device)
        for name, (_, tuned, tuned_move) in fitted.items():
            probs = tta_probabilities(*tuned, split["images"][held], device)
            scores[name][held] = edge_curves(probs, [masks[i] for i in held], moves=[tuned_move])[:, 0]
    return scores


def fit_both(split, masks, move, folder, args, device):
    """{candidate: fit()} of both fine-tuned candidates, each run apart under folder. With no edge move to undo
    they train alike, so "tuned-moved" then takes "tuned"'s network (and no move after): one training, not two."""
    tuned = fit("tuned", split, masks, move, folder / "tuned", args, device, apart=True)
    return {"tuned": tuned, "tuned-moved": (tuned[0], tuned[1], 0.0) if move == 0 else
            fit("tuned-moved", split, masks, move, folder / "tuned-moved", args, device, apart=True)}


def compare(base, adapted, move, adapted_move, held_out, device):
    """{row name: paired_difference() against the model before} on the held-out images: the model before, its edge
    moved by move, and the adapted model (if any) with its edge moved by adapted_move."""
    masks = held_out["mask_paths"]
    probs = tta_probabilities(*base, held_out["images"], device)  # once: scored as it is and with the edge moved
    before = largest_region_iou(probs, masks)
    rows = {"before": paired_difference(before, before),
            f"calibrated (edge {move:+g})": paired_difference(before, largest_region_iou(probs, masks, 0.5, move))}
    if adapted:
        rows[f"adapted (edge {adapted_move:+g})"] = paired_difference(before, largest_region_iou(
            tta_probabilities(*adapted, held_out["images"], device), masks, 0.5, adapted_move))
    return rows


def parse_args(argv=None):
    parser = cli.parser(__doc__)
    cli.add_data_dir_flag(parser, "your labelled images", required=True)
    cli.add_checkpoint_flag(parser, "the model before adaptation", default=model_files.PT)
    parser.add_argument("--train-flags", metavar="FLAGS",
                        help="fine-tune after calibrating: train.py's flags in one string (make adapt passes its "
                        "recipe); without it, the edge move is calibrated alone")
    parser.add_argument("--folds", type=int, default=FOLDS, help="cross-validation folds (fewer when there are "
                        "fewer images)")
    parser.add_argument("--all-candidates", action="store_true", help="fit every fine-tuned candidate on all training "
                        "images (in OUT/candidates/), not only a winner: for make adapt-experiment")
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
    train, held_out = load_user_data(args.data_dir, base[1]["image_size"], base[1]["split_seed"], args.cache_dir)
    masks = [readers.read_binary_mask(p) for p in train["mask_paths"]]
    curves = edge_curves(tta_probabilities(*base, train["images"], device), masks)
    refuse_disagreeing_masks(curves[:, np.flatnonzero(EDGE_MOVES == 0)[0]], args.data_dir)
    calib = calibrate(curves)
    move, choice, validation = calib["edge_move"], "edge" if calib["edge_move"] else "before", None
    if args.train_flags:
        scores = cross_validate(train, masks, curves, args, device)
        choice, against = choose(scores, move)
        validation = {"images": len(masks), "folds": min(args.folds, len(masks)), "choice": choice,
                      "against_before": {n: paired_difference(scores["before"], s) for n, s in scores.items()},
                      "against_edge": against, "out_of_fold": {n: [float(v) for v in s] for n, s in scores.items()}}
    fitted = fit_both(train, masks, move, out / "candidates", args, device) if args.train_flags and \
        args.all_candidates else {}
    adapted_file, adapted, edge = None, None, move
    if choice in FINE_TUNED:
        adapted_file, adapted, edge = fitted.get(choice) or fit(choice, train, masks, move, out, args, device)
    rows = compare(base, adapted, move, edge, held_out, device) if held_out else {}
    model_file = half_precision(adapted_file or args.checkpoint)
    model_file["config"].update(threshold=0.5, edge_move=edge)  # the edge was calibrated at 0.5
    out.mkdir(parents=True, exist_ok=True)
    saving.atomic_save(sealed(model_file), out / "model.pt")
    report = {"data_dir": args.data_dir, "checkpoint": args.checkpoint, "choice": choice,
              "adapted": str(adapted_file) if adapted_file else None, "model": str(out / "model.pt"),
              "threshold": 0.5, "edge_move": edge, "calibration": calib, "cross_validation": validation,
              "held_out": len(held_out["ids"]) if held_out else 0, "comparisons": rows,
              "recipe": {k: adapted[1][k] for k in RECIPE} if adapted else None,
              "candidates": {name: {"model": str(f[0]), "edge_move": f[2]} for name, f in fitted.items()},
              "tool": "tools/adapt.py"}
    cards.write(out, report, rows, "adapt.json")
    print(f"wrote {out}/model.pt, {out}/README.md, {out}/adapt.json")


if __name__ == "__main__":
    cli.run(main)

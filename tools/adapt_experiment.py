"""The annotator-shift experiment of docs/adapt.md: how much of what another clinic's annotators (or camera) cost
does make calibrate (an edge move, no training) win back, and how much make adapt's fine-tuning on 10, 20 or 50
labelled images?

Each shift (annotators.py: tighter, looser, coarse; a camera: one of perturbations.py's shifts, masks unchanged;
none) is applied alike to the adaptation images, drawn from the training split, and to the scored images. Each
(shift, images, seed) adapts with train.py and the flags of make adapt, as a user would.

    make adapt-experiment DATA_DIR=../shared/isic2016 SPLIT=val    # choices: 150 training images outside every draw
    make adapt-experiment DATA_DIR=../shared/isic2016              # docs/adapt.md's table: the test split, once
    make adapt-clinic CLINIC=../shared/ham10000                    # a real clinic: draws from its train/ images

With --clinic, the clinic's own masks are the shift: each draw of its training images is adapted as a user would
(make adapt, whose calibration is make calibrate's move), and every candidate is scored on the clinic's val/ (for
choices) and test/ images (clinic.csv, clinic.md).

Each row's adaptation is make adapt's cross-validated choice (adapt.py --all-candidates also fits the candidates it
did not choose, so that each is scored). Writes results.csv (one row per shift, images and seed; an interrupted run
continues where it stopped), table.md (the chosen model as "adapted"), choice.md (every candidate, the choice and
what it cost against the best one) and adapt_experiment.png to --out.
"""
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import project_root  # noqa: F401 (first: lib/ and the top-level modules import from the project's root)

from lib import cli, layouts, model_files, readers, saving
from lib.annotators import ANNOTATORS
from lib.calibration import (CLEARLY_WORSE, EDGE_MOVES, FINE_TUNED, RULES, THRESHOLDS, calibrate, calibrate_one_se,
                             choice, edge_curves, iou_curves)
from lib.checkpoints import load_checkpoint
from lib.device import pick_device
from lib.errors import UsageError
from lib.metrics import largest_region_iou
from lib.perturbations import shift as shift_image
from lib.plots import plot_adaptation
from lib.scoring import tta_probabilities

VAL_IMAGES = 150  # training images kept out of every draw: the scored images of --split val
CAMERA = "jpeg 20"  # the camera shift: the photometric shift of the robustness suite that costs the most
SHIFTS = ("none", "tighter", "looser", "coarse", "camera", "tighter-varying", "looser-varying", "clinic")
# --calibration-only's rules: {name: (curves it reads, candidates, the neutral one, its choice of them)}: the
# threshold rules, and two that move the model's edge by one share of each mask's radius: make calibrate's and the
# one-standard-error rule it replaced
CALIBRATIONS = {**{rule: ("threshold", THRESHOLDS, 0.5, lambda c, pick=pick: pick(c)["choice"])
                   for rule, pick in RULES.items()},
                "edge one-se": ("edge", EDGE_MOVES, 0.0, lambda c: calibrate_one_se(c, EDGE_MOVES, 0.0)["choice"]),
                "edge clear-gain": ("edge", EDGE_MOVES, 0.0, lambda c: calibrate(c)["edge_move"])}


def shifted_pair(image_path, mask_path, shift, n):
    """(RGB uint8 [H,W,3], boolean mask [H,W]) of image n of a set under one shift, at its own size."""
    image, mask = shift_image(image_path, mask_path, CAMERA if shift == "camera" else "clean", 0, n)
    rng = np.random.default_rng(list(Path(image_path).stem.encode()))  # from its name: the same in every set it is in
    return image, ANNOTATORS[shift](mask, rng) if shift in ANNOTATORS else mask


def shifted(pairs, shift, size):
    """(uint8 images [N,3,size,size] as predict.py reads them, boolean masks [H,W] at their own size) of pairs
    [(id, image, mask)] under one shift."""
    inputs, masks = [], []
    for n, (_, image_path, mask_path) in enumerate(pairs):
        image, mask = shifted_pair(image_path, mask_path, shift, n)
        inputs.append(np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)) if shift == "camera"
                      else readers.read_image(image_path, size, draft=False)[0])
        masks.append(mask)
    return torch.from_numpy(np.stack(inputs)).permute(0, 3, 1, 2), masks


def write_adaptation_set(pairs, shift, folder):
    """The pairs under `shift` as a plain train/ folder, as a user's labelled images would be: the image files
    themselves (PNG under the camera shift), PNG masks."""
    for sub in ("images", "masks"):
        (folder / "train" / sub).mkdir(parents=True, exist_ok=True)
    for n, (i, image_path, mask_path) in enumerate(pairs):
        image, mask = shifted_pair(image_path, mask_path, shift, n)
        if shift == "camera":
            Image.fromarray(image).save(folder / "train" / "images" / f"{i}.png")
        else:
            shutil.copy(image_path, folder / "train" / "images" / Path(image_path).name)
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "train" / "masks" / f"{i}.png")


def adapt(folder, run, seed, args):
    """make adapt on a folder, every fine-tuned candidate fitted too (--all-candidates): adapt.py with its train.py
    flags; returns (its adapt.json, seconds)."""
    command = [sys.executable, str(Path(__file__).with_name("adapt.py")), "--data-dir", str(folder), "--checkpoint",
               args.checkpoint, "--train-flags", f"{args.train_flags} --seed {seed} --overwrite", "--out", str(run),
               "--cache-dir", str(args.out / "cache"), "--device", args.device, "--overwrite", "--all-candidates"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return saving.read_json(run / "adapt.json"), time.perf_counter() - started


def adapted_draws(pools, label, shift, done, args):
    """(images, seed, make adapt's adapt.json, its seconds) of each draw of --images photos from the draw pool per
    --seeds that `done` lacks ((label, images, seed)), under `shift`, written as a user's folder and adapted."""
    for seed in args.seeds:
        order = np.random.default_rng(seed).permutation(len(pools["draw"]))
        for n in args.images:
            if (label, n, seed) in done:
                continue
            folder = args.out / "data" / f"{label}-seed{seed}-n{n}"
            write_adaptation_set([pools["draw"][k] for k in order[:n]], shift, folder)
            yield (n, seed, *adapt(folder, args.out / "runs" / f"{label}-seed{seed}-n{n}", seed, args))


def candidate_scores(report, base_probs, inputs, masks, device):
    """{candidate: mean IoU on the scored images, as make predict masks them}: the model before, its edge moved by
    the calibrated move, and each fine-tuned candidate of the report (with its own edge move)."""
    move = report["calibration"]["edge_move"]
    scores = {"before": largest_region_iou(base_probs, masks, 0.5).mean(),
              "edge": largest_region_iou(base_probs, masks, 0.5, move).mean()}
    for name, fitted in report["candidates"].items():
        tuned = tta_probabilities(*load_checkpoint(fitted["model"], device), inputs, device)
        scores[name] = largest_region_iou(tuned, masks, 0.5, fitted["edge_move"]).mean()
    return scores


def run_shift(shift, pools, base, done, args, device):
    """The rows of one shift: the scored images' IoU under each of make adapt's candidates fitted on a draw (the
    model before, the edge move alone, both fine-tuned ones) and under the one its cross-validation chose, for every
    --images and --seeds."""
    if all((shift, n, seed) in done for seed in args.seeds for n in args.images):
        return
    inputs, masks = shifted(pools["scored"], shift, base[1]["image_size"])
    base_probs = tta_probabilities(*base, inputs, device)
    for n, seed, report, seconds in adapted_draws(pools, shift, shift, done, args):
        scores = candidate_scores(report, base_probs, inputs, masks, device)
        best = max(scores, key=scores.get)
        yield {"shift": shift, "images": n, "seed": seed, **scores, "calibrated": scores["edge"],
               "chosen": report["choice"], "adapted": scores[report["choice"]], "best": best,
               "regret": scores[best] - scores[report["choice"]], "edge_move": report["calibration"]["edge_move"],
               "adapt_seconds": seconds}


def run_calibration(shift, pools, base, args, device):
    """The rows of one shift for --calibration-only: each rule of CALIBRATIONS on each seed's draw of --images[0]
    images, scored on the scored images through their IoU curves (no training)."""
    n, size = args.images[0], base[1]["image_size"]
    draws = {seed: np.random.default_rng(seed).permutation(len(pools["draw"]))[:n] for seed in args.seeds}
    used = sorted({int(k) for draw in draws.values() for k in draw})
    curves = {}
    for name, pairs in (("scored", pools["scored"]), ("draw", [pools["draw"][k] for k in used])):
        inputs, masks = shifted(pairs, shift, size)
        probs = tta_probabilities(*base, inputs, device)
        curves[name] = {"threshold": iou_curves(probs, masks), "edge": edge_curves(probs, masks)}
    row_of = {k: i for i, k in enumerate(used)}
    for seed, draw in draws.items():
        for rule, (kind, candidates, neutral, calibrate_with) in CALIBRATIONS.items():
            choice = calibrate_with(curves["draw"][kind][[row_of[int(k)] for k in draw]])
            scored = curves["scored"][kind].mean(0)
            yield {"shift": shift, "images": n, "seed": seed, "rule": rule, "choice": choice,
                   "adopted": choice != neutral, "before": scored[np.argmin(np.abs(candidates - neutral))],
                   "calibrated": scored[np.argmin(np.abs(candidates - choice))], "best_possible": scored.max()}


def calibration_table(rows, clean):
    """Markdown: per shift and rule the IoU before and calibrated (mean over the draws), the share of the shift's
    cost won back, that share at the best threshold (or edge move) for the scored images themselves (what no rule
    of its kind can beat), and in how many draws a threshold other than 0.5 (a move other than 0) was adopted."""
    lines = ["| shift | cost | rule | before | calibrated | change | share of the cost won back (best possible) | "
             "adopted | thresholds (edge: moves) |", "|" + "---|" * 9]
    for shift in dict.fromkeys(r["shift"] for r in rows):
        for rule in CALIBRATIONS:
            mine = [r for r in rows if r["shift"] == shift and r["rule"] == rule]
            before, after = mine[0]["before"], float(np.mean([r["calibrated"] for r in mine]))
            cost = clean - before
            best = mine[0]["best_possible"]
            share = f"{(after - before) / cost:.0%} ({(best - before) / cost:.0%})" if cost > 0.005 else "-"
            adopted = sum(r["adopted"] for r in mine)
            choices = ", ".join(f"{r['choice']:g}" for r in mine)
            lines.append(f"| {shift} | {cost:+.4f} | {rule} | {before:.4f} | {after:.4f} | {after - before:+.4f} | "
                         f"{share} | {adopted} of {len(mine)} | {choices} |")
    return "\n".join(lines)


def table(rows, clean):
    """Markdown: per shift the IoU before, calibrated (20 images), adapted, and adapted with its best edge move for
    the scored images (mean ± sd over the seeds); the cost of a shift is the unshifted IoU before minus its IoU
    before, and the share won back is adaptation's gain on 20 images over that cost."""
    sizes = sorted({int(r["images"]) for r in rows})
    head = ["shift", "cost", "before", "calibrated (20)"] + [f"adapted ({n})" for n in sizes] + [
        "adapted, best edge (20)", "share of the cost won back (20)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for shift in dict.fromkeys(r["shift"] for r in rows):
        mine = [r for r in rows if r["shift"] == shift]

        def cell(key, n=20):
            values = [r[key] for r in mine if r["images"] == n and r.get(key, "") != ""]
            return f"{np.mean(values):.4f} ± {np.std(values):.4f}" if values else "-"
        before = mine[0]["before"]
        cost = clean - before
        won = [r["adapted"] - before for r in mine if r["images"] == 20]
        share = f"{np.mean(won) / cost:.0%}" if won and cost > 0.005 else "-"
        lines.append(f"| {shift} | {cost:+.4f} | {before:.4f} | {cell('calibrated')} | "
                     + " | ".join(cell("adapted", n) for n in sizes) + f" | {cell('adapted_best_edge')} | {share} |")
    return "\n".join(lines)


def choice_table(rows, clean):
    """Markdown: per shift the scored images' IoU under each candidate (mean over the draws), under the one make
    adapt's cross-validation chose, in how many draws that was the best one (or within 0.002 of it), and what the
    choice cost against the best one (mean, most)."""
    names = ["before", "edge", "tuned", "tuned-moved"]
    head = ["shift", "cost", "before", "edge move alone", "fine-tuned", "fine-tuned, moved labels + move", "chosen",
            "chosen in the draws", "best or within 0.002", "cost of the choice (mean, most)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for shift in dict.fromkeys(r["shift"] for r in rows):
        mine = [r for r in rows if r["shift"] == shift]
        means = [np.mean([float(r[k]) for r in mine]) for k in names + ["adapted"]]
        regret = [float(r["regret"]) for r in mine]
        lines.append(f"| {shift} | {clean - means[0]:+.4f} | " + " | ".join(f"{m:.4f}" for m in means) + " | "
                     + ", ".join(r["chosen"] for r in mine) + f" | {sum(g <= 0.002 for g in regret)} of {len(mine)} | "
                     f"{np.mean(regret):.4f}, {max(regret):.4f} |")
    return "\n".join(lines)


def run_clinic(pools, base, done, args, device):
    """The rows of --clinic: for each seed and --images, a draw of the clinic's training images adapted by make
    adapt (every candidate fitted), each candidate's IoU on the clinic's val and test images (as make predict masks
    them), adapt's choice and its cross-validation, and the best candidate in hindsight on each split."""
    size, name = base[1]["image_size"], Path(args.clinic).name
    scored = {split: shifted(pairs, "none", size) for split, pairs in pools["scored"].items()}
    before = {split: tta_probabilities(*base, inputs, device) for split, (inputs, _) in scored.items()}
    for n, seed, report, seconds in adapted_draws(pools, name, "none", done, args):
        cv = report["cross_validation"]["against_edge"]
        row = {"shift": name, "images": n, "seed": seed, "edge_move": report["calibration"]["edge_move"],
               "chosen": report["choice"], **{f"cv_{k}": v["difference"] for k, v in cv.items()},
               **{f"cv_se_{k}": v["standard_error"] for k, v in cv.items()}, "adapt_seconds": seconds}
        for split, (inputs, masks) in scored.items():
            scores = candidate_scores(report, before[split], inputs, masks, device)
            row.update({f"{split}_{k}": v for k, v in scores.items()})
            row[f"{split}_adapted"], row[f"{split}_best"] = scores[report["choice"]], max(scores, key=scores.get)
        yield row


def clinic_table(rows, split):
    """Markdown: per draw the clinic's IoU on `split` before, calibrated (make calibrate's move), each fine-tuned
    candidate, adapted (what make adapt's rule of today ships: every candidate was fitted on all the draw's photos,
    so a draw run under an older rule reads it from its row), the choice and the best candidate in hindsight; then
    their means."""
    head = ["images", "seed", "before", "calibrate", "fine-tuned", "fine-tuned, moved labels", "adapt",
            "adapt - calibrate", "chosen", "best in hindsight"]
    keys = ["before", "edge", "tuned", "tuned-moved"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        scores = [float(r[f"{split}_{k}"]) for k in keys] + [float(r[f"{split}_{MAKE_ADAPTS_RULE(r)}"])]
        lines.append(f"| {int(float(r['images']))} | {int(float(r['seed']))} | "
                     + " | ".join(f"{s:.4f}" for s in scores) + f" | {scores[-1] - scores[1]:+.4f} | "
                     f"{MAKE_ADAPTS_RULE(r)} | {r[f'{split}_best']} |")
    for n in sorted({int(float(r["images"])) for r in rows}):
        mine = [r for r in rows if int(float(r["images"])) == n]
        means = [np.mean([float(r[f"{split}_{k}"]) for r in mine]) for k in keys]
        means.append(np.mean([float(r[f"{split}_{MAKE_ADAPTS_RULE(r)}"]) for r in mine]))
        lines.append(f"| {n}, mean of {len(mine)} | | " + " | ".join(f"**{m:.4f}**" for m in means)
                     + f" | **{means[-1] - means[1]:+.4f}** | | |")
    return "\n".join(lines)


def clinic_rule(clearly_worse):
    """lib/calibration.choice with this clearly_worse, on a draw's row (its cross-validation columns)."""
    def rule(row):
        against = {k: {"n": int(float(row["images"])), "difference": float(row[f"cv_{k}"]),
                       "standard_error": float(row[f"cv_se_{k}"])} for k in FINE_TUNED}
        return choice(against, float(row["edge_move"]), clearly_worse)
    return rule


# The rules compared on the clinic's draws (--clinic): make adapt's (lib/calibration.choice), the one it replaced
# (clearly_worse -1: ahead by more than one standard error) and their alternatives
CLINIC_RULES = {"fine-tuned when it beats the edge move by more than its standard error (until 2026-12-05)":
                clinic_rule(-1.0),
                "fine-tuned unless it trails the edge move by more than its standard error": clinic_rule(1.0),
                "fine-tuned unless it trails the edge move by more than twice its standard error (make adapt's)":
                clinic_rule(CLEARLY_WORSE),
                "always the edge move (make calibrate)": clinic_rule(-math.inf),
                "always fine-tuned (the better one by cross-validation)": clinic_rule(math.inf)}
MAKE_ADAPTS_RULE = CLINIC_RULES["fine-tuned unless it trails the edge move by more than twice its standard error "
                                "(make adapt's)"]


def rule_table(rows):
    """Markdown: per rule, the mean IoU of what it chooses on the val and test photos, and against make calibrate
    on the test photos its mean gain, its worst draw and in how many draws it stays within 0.002."""
    lines = ["| rule | val | test | test - calibrate, mean | worst draw | draws within 0.002 of calibrate or above |",
             "|---|---|---|---|---|---|"]
    for name, rule in CLINIC_RULES.items():
        picks = [rule(r) for r in rows]
        val, test = (np.mean([float(r[f"{s}_{p}"]) for r, p in zip(rows, picks)]) for s in ("val", "test"))
        gains = [float(r[f"test_{p}"]) - float(r["test_edge"]) for r, p in zip(rows, picks)]
        lines.append(f"| {name} | {val:.4f} | {test:.4f} | {np.mean(gains):+.4f} | {min(gains):+.4f} | "
                     f"{sum(g >= -0.002 for g in gains)} of {len(rows)} |")
    return "\n".join(lines)


def resumed_rows(results, more_rows):
    """The rows of a results CSV: those an earlier run wrote, then each of more_rows(done: their (shift, images,
    seed)), written and printed as it comes, so that an interrupted run continues where it stopped."""
    rows = saving.read_csv(results) if results.exists() else []
    for row in more_rows({(r["shift"], r["images"], r["seed"]) for r in rows}):
        rows.append(row)
        saving.write_csv(results, rows)
        print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    return rows


def compare_clinic(pools, base, args, device, out):
    """--clinic: every draw's row (clinic.csv; an interrupted run continues where it stopped), then clinic.md."""
    results = out / "clinic.csv"
    rows = resumed_rows(results, lambda done: run_clinic(pools, base, done, args, device))
    text = "\n\n".join(f"{split} split:\n\n{clinic_table(rows, split)}" for split in pools["scored"])
    text += "\n\nThe rules (chosen on val; test scored once):\n\n" + rule_table(rows)
    saving.write_text(out / "clinic.md", text + "\n")
    print(text + f"\nwrote {results} and {out}/clinic.md")


def compare_calibration(pools, base, args, device, out):
    """--calibration-only: every shift's rows, then calibration.csv and calibration.md in out."""
    rows = [row for shift in args.shifts for row in run_calibration(shift, pools, base, args, device)]
    saving.write_csv(out / "calibration.csv", rows)
    clean = next(r["before"] for r in rows if r["shift"] == "none")
    saving.write_text(out / "calibration.md", calibration_table(rows, clean) + "\n")
    print(calibration_table(rows, clean))
    print(f"wrote {out}/calibration.csv and {out}/calibration.md")


def parse_args(argv=None):
    parser = cli.parser(__doc__)
    cli.add_data_dir_flag(parser, "ISIC 2016")
    cli.add_checkpoint_flag(parser, "the model to adapt", default=model_files.PT)
    parser.add_argument("--split", default="test", choices=["val", "test"],
                        help="the scored images: the test split, or VAL_IMAGES training images outside every draw "
                        "(default: test)")
    parser.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=SHIFTS, help="default: all")
    parser.add_argument("--clinic", metavar="DIR", help="a real clinic's labelled photos in plain folders (train/, "
                        "val/, test/) instead of the shifts: draws from train/, scored on val/ and test/")
    parser.add_argument("--images", type=int, nargs="+", default=[10, 20, 50], help="adaptation set sizes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the draws")
    parser.add_argument("--train-flags", help="make adapt's train.py flags, in one string (needed unless "
                        "--calibration-only)")
    parser.add_argument("--calibration-only", action="store_true",
                        help="no training: compare the calibration rules (CALIBRATIONS) on --images[0] images "
                        "per draw -> OUT/SPLIT/calibration.csv and calibration.md")
    parser.add_argument("--out", type=Path, default=Path("runs/adapt-experiment"),
                        help="results go to OUT/SPLIT (default: runs/adapt-experiment)")
    cli.add_device_flag(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device, out = pick_device(args.device), args.out / (Path(args.clinic).name if args.clinic else args.split)
    base = load_checkpoint(args.checkpoint, device)
    if args.clinic:
        if not args.train_flags:
            raise UsageError("--clinic adapts: give make adapt's train.py flags with --train-flags")
        out.mkdir(parents=True, exist_ok=True)
        args.out = out
        pools = {"draw": layouts.find_pairs(args.clinic, "train"),
                 "scored": {s: layouts.find_pairs(args.clinic, s) for s in ("val", "test")}}
        return compare_clinic(pools, base, args, device, out)
    train = layouts.find_pairs(args.data_dir, "train")
    order = np.random.default_rng(1234).permutation(len(train))
    pools = {"draw": [train[k] for k in sorted(order[VAL_IMAGES:])],
             "scored": [train[k] for k in sorted(order[:VAL_IMAGES])] if args.split == "val"
             else layouts.find_pairs(args.data_dir, "test")}
    out.mkdir(parents=True, exist_ok=True)
    if args.calibration_only:
        return compare_calibration(pools, base, args, device, out)
    if not args.train_flags:
        raise UsageError("--train-flags: make adapt's train.py flags are needed to adapt (make adapt-experiment "
                         "passes them), or give --calibration-only")
    results, args.out = out / "results.csv", out
    rows = resumed_rows(results, lambda done: (row for shift in args.shifts
                                               for row in run_shift(shift, pools, base, done, args, device)))
    clean = next((r["before"] for r in rows if r["shift"] == "none"), None)
    if clean is None:
        inputs, masks = shifted(pools["scored"], "none", base[1]["image_size"])
        clean = largest_region_iou(tta_probabilities(*base, inputs, device), masks, 0.5).mean()
    saving.write_text(out / "table.md", table(rows, clean) + "\n")
    saving.write_text(out / "choice.md", choice_table(rows, clean) + "\n")
    plot_adaptation(rows, clean, out / "adapt_experiment.png")
    print(table(rows, clean) + "\n\n" + choice_table(rows, clean))
    print(f"wrote {results}, {out}/table.md, {out}/choice.md, {out}/adapt_experiment.png")


if __name__ == "__main__":
    cli.run(main)

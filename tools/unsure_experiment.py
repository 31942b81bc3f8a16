"""Does the unsure score (lib/masks.py unsure) find the photos whose masks need a person? On a clinic's labelled
photos standing in for a batch, their true masks standing in for a person's corrections (docs/page.md):

- the rank correlation (Spearman) between each photo's score and its error, 1 - IoU of make predict's mask;
- on batches of --batch photos (seeded draws): the batch's mean IoU after "correcting" (IoU 1) the k most unsure,
  k at random (the expectation) and the k truly worst (the ceiling);
- the edge move calibrated on the 20 most unsure against 20 at random, scored on the rest of the batch.

    make unsure-experiment DATA_DIR=../shared/ham10000 SPLIT=val     # choices
    make unsure-experiment DATA_DIR=../shared/ham10000               # docs/page.md's table: the test split, once
"""
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

import project_root  # noqa: F401 (first: lib/ and the top-level modules import from the project's root)

from lib import cli, layouts, model_files, readers, saving
from lib.calibration import EDGE_MOVES, calibrate, edge_curves
from lib.compare import iou
from lib.masks import mask_at_size, unsure
from lib.segmenter import Segmenter

# Scores compared on the validation split: the one chosen (unsure) and the plainer ones it was chosen over
SCORES = {"1 - soft self-IoU (chosen)": unsure,
          "share of the lesion near the threshold": lambda p, t: float((np.abs(p - t) < 0.3).sum()
                                                                       / max((p > t).sum(), 1)),
          "mean distance from certainty": lambda p, t: float(np.minimum(p, 1 - p).mean())}


def scored(segmenter, pairs):
    """(probabilities [N,S,S], boolean true masks, IoU of make predict's masks [N]) of [(id, image, mask)]."""
    inputs = np.stack([readers.read_image(image, segmenter.image_size, draft=False)[0] for _, image, _ in pairs])
    probs = segmenter.probabilities(inputs, tta=True)
    masks = [readers.read_binary_mask(mask) for _, _, mask in pairs]
    ious = np.array([iou(mask_at_size(p, m.shape[1], m.shape[0], segmenter.threshold, True, segmenter.edge_move), m)
                     for p, m in zip(probs, masks)])
    return probs, masks, ious


def corrections(score, ious, batch, ks, seeds):
    """{k: (mean IoU before, after the k most unsure, after k at random, after the k worst)}, means over the seeded
    batches of `batch` photos; a corrected photo scores 1."""
    rows = {k: [] for k in ks}
    for seed in seeds:
        pick = np.random.default_rng(seed).choice(len(ious), batch, replace=False)
        s, v = score[pick], ious[pick]
        for k in ks:
            def fixed(idx):
                return (v.sum() - v[idx].sum() + len(idx)) / batch
            rows[k].append((v.mean(), fixed(np.argsort(-s)[:k]), v.mean() + k * (1 - v.mean()) / batch,
                            fixed(np.argsort(v)[:k])))
    return {k: np.mean(r, axis=0) for k, r in rows.items()}


def calibration_choice(probs, masks, score, batch, seeds, n=20):
    """[(seed, then for the n most unsure and for n at random: the move calibrated on them, the rest's IoU before
    and with that move)] over seeded batches: which n to correct for make calibrate."""
    curves = edge_curves(probs, masks)
    rows, zero = [], int(np.argmin(np.abs(EDGE_MOVES)))
    for seed in seeds:
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(masks), batch, replace=False)
        ranked, drawn = pick[np.argsort(-score[pick])][:n], rng.choice(pick, n, replace=False)
        row = [seed]
        for chosen in (ranked, drawn):
            move = calibrate(curves[chosen])["edge_move"]
            rest = np.setdiff1d(pick, chosen)
            row += [move, curves[rest, zero].mean(), curves[rest, int(np.argmin(np.abs(EDGE_MOVES - move)))].mean()]
        rows.append(row)
    return rows


def report(probs, masks, ious, segmenter, args):
    """The experiment's tables in Markdown."""
    t = segmenter.threshold
    scores = {name: np.array([f(p, t) for p in probs]) for name, f in SCORES.items()}
    lines = [f"{args.split} split of {args.data_dir}: {len(ious)} photos, make predict's mean IoU {ious.mean():.4f}",
             "", "| score | Spearman with 1 - IoU |", "|---|---|"]
    lines += [f"| {name} | {spearmanr(s, 1 - ious)[0]:.3f} |" for name, s in scores.items()]
    score = scores[next(iter(SCORES))]
    table = corrections(score, ious, args.batch, args.k, args.seeds)
    lines += ["", f"Batches of {args.batch} photos ({len(args.seeds)} seeded draws): mean IoU after correcting k",
              "", "| k | before | k most unsure | k at random | k truly worst (ceiling) | unsure / random gain | "
              "share of the ceiling |", "|---|---|---|---|---|---|---|"]
    for k, (before, ranked, drawn, worst) in table.items():
        lines.append(f"| {k} | {before:.4f} | {ranked:.4f} | {drawn:.4f} | {worst:.4f} | "
                     f"{(ranked - before) / (drawn - before):.1f}x | {(ranked - before) / (worst - before):.0%} |")
    rows = calibration_choice(probs, masks, score, args.batch, args.seeds)
    mean = np.mean([r[1:] for r in rows], axis=0)
    lines += ["", f"make calibrate on 20 of each batch, scored on its other {args.batch - 20} photos (mean over the "
              f"draws): on the 20 most unsure the edge moved by {mean[0]:+.3f} on average and the others' IoU went "
              f"from {mean[1]:.4f} to {mean[2]:.4f} ({mean[2] - mean[1]:+.4f}); on 20 at random by {mean[3]:+.3f}, "
              f"from {mean[4]:.4f} to {mean[5]:.4f} ({mean[5] - mean[4]:+.4f})."]
    return "\n".join(lines), scores


def main(argv=None):
    parser = cli.parser(__doc__)
    cli.add_data_dir_flag(parser, "a clinic's labelled photos (any layout)", required=True)
    cli.add_checkpoint_flag(parser, "the model", default=model_files.ONNX, onnx=True)
    parser.add_argument("--split", default="test", choices=["val", "test"], help="the photos (default: test)")
    parser.add_argument("--batch", type=int, default=200, help="photos in a clinic's batch")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20, 40], help="photos a person corrects")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(20)), help="seeds of the batches")
    parser.add_argument("--out", type=Path, default=Path("runs/unsure"), help="results go to OUT/SPLIT")
    cli.add_device_flag(parser)
    args = parser.parse_args(argv)
    segmenter = Segmenter.load([args.checkpoint], args.device)
    pairs = layouts.find_pairs(args.data_dir, args.split)
    probs, masks, ious = scored(segmenter, pairs)
    text, scores = report(probs, masks, ious, segmenter, args)
    out = args.out / args.split
    out.mkdir(parents=True, exist_ok=True)
    saving.write_csv(out / "per_image.csv", [{"id": i, "iou": v, **{name: s[n] for name, s in scores.items()}}
                                            for n, ((i, _, _), v) in enumerate(zip(pairs, ious))])
    saving.write_text(out / "table.md", text + "\n")
    print(text + f"\nwrote {out}/table.md and {out}/per_image.csv")


if __name__ == "__main__":
    cli.run(main)

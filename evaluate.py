"""Score trained checkpoints (one, or several as an ensemble) on a split: per-image metrics at model and at
full resolution, with flip TTA and the largest region (lib/metrics.py), written beside the checkpoints. With
--paired, compare two models scored on the same images: their mean difference and its paired standard error.

    python evaluate.py --checkpoint runs/exp1-bce/best.pt --data-dir ../shared/isic2016
    python evaluate.py --checkpoint runs/best/seed*/best.pt --data-dir ../shared/isic2016 --tta --full-res
    python evaluate.py --paired runs/val/a/val_per_image.csv --vs runs/val/b/val_per_image.csv
"""
import os
from pathlib import Path

from data import split_to_score
from lib import cli, compare, layouts, run_folder, saving
from lib.checkpoints import decision_edge_move, decision_threshold, load_models
from lib.device import pick_device
from lib.errors import UsageError
from lib.scoring import score_model
from losses import LOSSES


def results_name(out, split):
    """The name evaluate.py writes its results under: <split>, unless that would replace what train.py wrote
    for its own run (train.py's test_metrics.json has no 'checkpoints' key); then <split>_eval."""
    existing = Path(out) / f"{split}_metrics.json"
    if existing.exists() and "checkpoints" not in saving.read_json(existing):
        return f"{split}_eval"
    return split


def paired_comparison(base_files, new_files, metric):
    """compare.paired_difference() of two models scored per image on the same images (evaluate.py's
    *_per_image.csv, file k of `new_files` against file k of `base_files`, matched by id; several pairs pool, e.g.
    validation splits of several --split-seeds)."""
    if len(base_files) != len(new_files):
        raise UsageError(f"{len(base_files)} base files but {len(new_files)} --vs files: give them in pairs")
    base, new = [], []
    for b, n in zip(base_files, new_files):
        rows_b, rows_n = ({r["id"]: r for r in saving.read_csv(f)} for f in (b, n))
        if rows_b.keys() != rows_n.keys():
            raise UsageError(f"{b} and {n} score different images; score both models on the same split")
        if metric not in next(iter(rows_b.values())):
            raise UsageError(f"{b} has no column {metric!r} (evaluate.py --tta --full-res writes fullres_lcc_tta_iou)")
        base += [rows_b[i][metric] for i in rows_b]
        new += [rows_n[i][metric] for i in rows_b]
    return compare.paired_difference(base, new)


def print_paired(args):
    d = paired_comparison(args.paired, args.vs, args.metric)
    print(f"{args.metric} over {cli.plural(d['n'], 'image')}: {d['base']:.4f} -> {d['new']:.4f}, difference "
          f"{d['difference']:+.4f} ± {d['standard_error']:.4f} (paired standard error); second model better on "
          f"{d['new_better']}, worse on {d['new_worse']}")


def main(argv=None):
    parser = cli.parser(__doc__)
    cli.add_checkpoint_flag(parser, "the model scored", several=True, required=False)
    cli.add_data_dir_flag(parser, "also one the models never saw; without a test split, all of its images are scored")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="which split to score; val: the training images the run held out (default: test)")
    parser.add_argument("--out", help="folder for the metrics files (default: the checkpoint's folder; with several, "
                        "the folder that holds them all). A training run's own test_metrics.json is never replaced: "
                        "the scores then go to test_eval_metrics.json")
    cli.add_threshold_flag(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    cli.add_device_flag(parser)
    cli.add_cache_dir_flag(parser)
    parser.add_argument("--workers", type=int, default=2, help="processes that decode JPEGs into the cache")
    parser.add_argument("--full-res", action="store_true",
                        help="also score at each mask's original size, as the ISIC challenge does (fullres_* keys)")
    parser.add_argument("--tta", action="store_true", help="also score flip test-time augmentation (tta_* keys)")
    parser.add_argument("--paired", nargs="+", metavar="CSV",
                        help="instead of scoring: the *_per_image.csv of a first model (several: pooled)")
    parser.add_argument("--vs", nargs="+", metavar="CSV", help="with --paired: the same files of the second model")
    parser.add_argument("--metric", default="fullres_lcc_tta_iou", help="with --paired: a column of those files")
    args = parser.parse_args(argv)
    if args.paired:
        if not args.vs:
            parser.error("--paired compares two models: give the second one's files with --vs")
        return print_paired(args)
    if not args.checkpoint:
        parser.error("give --checkpoint FILE (the model to score), or --paired CSV --vs CSV")

    device = pick_device(args.device)
    model, configs = load_models(args.checkpoint, device)
    config = configs[0]
    threshold = decision_threshold(configs) if args.threshold is None else args.threshold
    edge_move = decision_edge_move(configs)  # adapt.py's calibration; it applies at each mask's own size
    split, what = split_to_score(args.data_dir, args.split, configs, args.cache_dir, args.workers)
    print(f"{layouts.detect_layout(args.data_dir)} in {args.data_dir}, {what}")
    summary, per_image = score_model(model, split, LOSSES[config["loss"]], args.batch_size, device,
                                      not config["no_amp"], args.tta, args.full_res, threshold, edge_move)
    out = Path(args.out or os.path.commonpath([Path(c).parent for c in args.checkpoint]))
    out.mkdir(parents=True, exist_ok=True)
    summary["threshold"], summary["edge_move"] = threshold, edge_move
    summary["checkpoints"] = [os.path.relpath(c, out) for c in args.checkpoint]  # from `out`: the folder can move
    name = results_name(out, args.split)
    summary["code"] = run_folder.record_code(out, f"{name}_code.diff")  # the commit, and any edit beside it
    path = saving.write_results(out, name, summary, per_image, split["ids"])
    at_model_size = [k for k in per_image if not k.startswith(("tta_", "fullres_", "pooled_"))]  # lib/metrics.py's
    print(f"{args.split} ({cli.plural(summary['n_images'], 'image')}): " + ", ".join(
        f"{k} {summary[k]:.4f}" for k in ("loss", *at_model_size, "tta_iou", "fullres_iou", "fullres_tta_iou")
        if k in summary) + f" -> {path}")


if __name__ == "__main__":
    cli.run(main)

"""Robustness suite: score checkpoints on a split with every image shifted as another camera or clinic would
shift it (perturbations.py: aspect, zoom, rotation, colour, blur, noise, JPEG, hair), each shift applied at the
image's own size before it is resized for the model, the mask moved alike; one seeded strength per shift, so the
table repeats exactly.

    python tools/robustness.py --checkpoint runs/best/seed*/best.pt --data-dir ../shared/isic2016 --tta --largest-component
    python tools/robustness.py --checkpoint runs/exp2-finetune/best.pt --split val --out runs/robustness/exp2-val

Writes robustness.csv and robustness.json (IoU and Dice per shift, per-image means at each mask's own size, and
the drop from the clean score), robustness.png and examples.png (every shift on one image) to --out.
"""
from pathlib import Path

import project_root  # noqa: F401 (first: lib/ and the top-level modules import from the project's root)

from data import split_to_score
from lib import cli, saving
from lib.checkpoints import load_models
from lib.device import pick_device
from lib.perturbations import PERTURBATIONS, score_perturbations, shift, summarize
from lib.plots import plot_examples, plot_robustness


def main(argv=None):
    parser = cli.parser(__doc__)
    cli.add_checkpoint_flag(parser, "the model tested", several=True)
    cli.add_data_dir_flag(parser)
    parser.add_argument("--split", default="test", choices=["val", "test"],
                        help="test (default), or val: the images the run held out, for choices")
    parser.add_argument("--out", default="runs/robustness", help="output folder (default: runs/robustness)")
    parser.add_argument("--tta", action="store_true", help="average with horizontal and vertical flips")
    parser.add_argument("--largest-component", action="store_true",
                        help="keep only the largest connected region of each mask (one lesion per image)")
    parser.add_argument("--perturbations", nargs="+", default=list(PERTURBATIONS), choices=list(PERTURBATIONS),
                        metavar="NAME", help="which shifts, quoted ('clean' is always scored first); default: all: "
                        + ", ".join(f"'{p}'" for p in PERTURBATIONS).replace("%", "%%"))
    parser.add_argument("--seed", type=int, default=0, help="seeds the random shifts (noise, hair)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    cli.add_cache_dir_flag(parser)
    parser.add_argument("--workers", type=int, default=2, help="processes that decode JPEGs into the cache")
    cli.add_device_flag(parser)
    args = parser.parse_args(argv)
    args.perturbations = ["clean"] + [p for p in args.perturbations if p != "clean"]

    device = pick_device(args.device)
    model, configs = load_models(args.checkpoint, device)
    split = split_to_score(args.data_dir, args.split, configs, args.cache_dir, args.workers)[0]
    rows = score_perturbations(model, split, configs[0]["image_size"], args.perturbations, args.seed, device,
                               not configs[0]["no_amp"], args.batch_size, args.tta, args.largest_component)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {**summarize(rows), "split": args.split, "n_images": len(split["ids"]), "tta": args.tta,
               "largest_component": args.largest_component, "seed": args.seed,
               "checkpoints": [str(c) for c in args.checkpoint], "rows": rows}
    saving.write_json(out / "robustness.json", summary)
    saving.write_csv(out / "robustness.csv", rows)
    models = args.checkpoint[0] + (f" and {len(args.checkpoint) - 1} more" if len(args.checkpoint) > 1 else "")
    plot_robustness(rows, out / "robustness.png", f"{models}: {args.split} split, {len(split['ids'])} images")
    examples = [shift(split["image_paths"][0], split["mask_paths"][0], name, args.seed, 0)
                for name in args.perturbations]
    plot_examples(args.perturbations, examples, out / "examples.png")
    for row in rows:
        print(f"{row['perturbation']:>16}  IoU {row['iou']:.4f} ({-row['iou_drop']:+.4f})  "
              f"Dice {row['dice']:.4f} ({-row['dice_drop']:+.4f})")
    print(f"mean IoU drop {summary['mean_iou_drop']:.4f}, worst {summary['worst']} ({summary['worst_iou_drop']:.4f})"
          f" -> {out}/robustness.csv, robustness.png, examples.png")


if __name__ == "__main__":
    cli.run(main)

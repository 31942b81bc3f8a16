"""Models against data sets, as make predict masks photos (flip TTA, the largest region, each model's threshold and
edge move, at each photo's own size): one table of mean IoU per model and test split, HAM10000's split by
diagnosis (metadata.csv's dx: melanoma, nevus, the rest), per-image CSVs, and a panel of the first model's worst
photos of the last data set (docs/clinics.md).

    python tools/cross_dataset.py --model released=models/lesion_segmenter.onnx two-source=runs/two-source/best.pt \
        --data-dir ../shared/isic2016 ../shared/ham10000
"""
from pathlib import Path

import numpy as np

import project_root  # noqa: F401 (first: lib/ and the top-level modules import from the project's root)

from lib import cli, layouts, readers, saving
from lib.compare import iou, paired_difference
from lib.errors import UsageError
from lib.plots import plot_contours
from lib.segmenter import Segmenter

GROUPS = {"melanoma": ("mel",), "nevus": ("nv",)}  # every other diagnosis is "the rest"
WORST = 12  # photos in the panel


def diagnoses(data_dir):
    """{image id: diagnosis group} from data_dir/metadata.csv (HAM10000's), {} without one."""
    path = Path(data_dir) / "metadata.csv"
    if not path.is_file():
        return {}
    return {r["image_id"]: next((g for g, codes in GROUPS.items() if r["dx"] in codes), "the rest")
            for r in saving.read_csv(path)}


def scores(segmenter, pairs):
    """(IoU [N] of make predict's masks, [predicted mask]) of [(id, image, mask)], 64 photos a batch."""
    ious, predicted = [], []
    for start in range(0, len(pairs), 64):
        batch = pairs[start:start + 64]
        inputs = np.stack([readers.read_image(image, segmenter.image_size, draft=False)[0] for _, image, _ in batch])
        for prob, (_, _, mask_path) in zip(segmenter.probabilities(inputs, tta=True), batch):
            truth = readers.read_binary_mask(mask_path)
            pred = segmenter.mask(prob, truth.shape[1], truth.shape[0], largest_component=True)
            ious.append(iou(pred, truth))
            predicted.append(pred)
    return np.array(ious), predicted


def table(results, groups):
    """Markdown: one row per model, a column per data set and per diagnosis group of the last one."""
    names = list(next(iter(results.values())))
    last, kinds = names[-1], sorted(set(groups.values()), key=lambda g: (g == "the rest", g))
    head = [f"{n} test ({len(next(iter(results.values()))[n][0])})" for n in names]
    ids = [i for i, _, _ in next(iter(results.values()))[last][2]]
    head += [f"{last}: {k} ({sum(groups.get(i) == k for i in ids)})" for k in kinds]
    lines = ["| model | " + " | ".join(head) + " |", "|" + "---|" * (len(head) + 1)]
    for model, per_set in results.items():
        cells = [f"{per_set[n][0].mean():.4f}" for n in names]
        ious = per_set[last][0]
        cells += [f"{ious[[groups.get(i) == k for i in ids]].mean():.4f}" for k in kinds]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(results):
    """Markdown: each model after the first against the first, photo by photo on each data set: the mean
    difference, its paired standard error, and on how many photos it is better and worse."""
    names, first = list(next(iter(results.values()))), next(iter(results))
    lines = ["| model | " + " | ".join(f"{n}: vs {first}" for n in names) + " |", "|" + "---|" * (len(names) + 1)]
    for model, per_set in list(results.items())[1:]:
        cells = []
        for n in names:
            d = paired_difference(results[first][n][0], per_set[n][0])
            cells.append(f"{d['difference']:+.4f} ± {d['standard_error']:.4f} ({d['new_better']} better, "
                         f"{d['new_worse']} worse)")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def worst_panel(ious, predicted, pairs, groups, path):
    """The WORST photos of one model on one data set, truth and prediction drawn on each."""
    worst = np.argsort(ious)[:WORST]
    examples = [(readers.read_full_image(pairs[k][1]), readers.read_binary_mask(pairs[k][2]), predicted[k])
                for k in worst]
    plot_contours(examples, [f"{pairs[k][0]} ({groups.get(pairs[k][0], '?')}): IoU {ious[k]:.2f}" for k in worst],
                  path)


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("--model", nargs="+", required=True, metavar="NAME=FILE",
                        help="models to score (.onnx or .pt), each named")
    cli.add_data_dir_flag(parser, "each one's test split is scored; HAM10000's last (its metadata.csv splits it by "
                          "diagnosis)", several=True, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/cross-dataset-table"), help="output folder")
    cli.add_device_flag(parser)
    args = parser.parse_args(argv)
    if not all("=" in m for m in args.model):
        raise UsageError("--model takes NAME=FILE pairs, e.g. released=models/lesion_segmenter.onnx")
    sets = {Path(d).name: layouts.find_pairs(d, "test") for d in args.data_dir}
    groups = diagnoses(args.data_dir[-1])
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, path in (m.split("=", 1) for m in args.model):
        segmenter = Segmenter.load([path], args.device)
        results[name] = {n: (*scores(segmenter, pairs), pairs) for n, pairs in sets.items()}
        for n, (ious, _, pairs) in results[name].items():
            saving.write_csv(args.out / f"{name}_{n}.csv", [{"id": i, "iou": v, "group": groups.get(i, "")}
                                                          for (i, _, _), v in zip(pairs, ious)])
        print(f"{name}: " + ", ".join(f"{n} {r[0].mean():.4f}" for n, r in results[name].items()), flush=True)
    first, last = next(iter(results.values())), list(sets)[-1]
    worst_panel(first[last][0], first[last][1], first[last][2], groups, args.out / "worst.png")
    text = table(results, groups) + ("\n\n" + paired_table(results) if len(results) > 1 else "")
    saving.write_text(args.out / "table.md", text + "\n")
    print(text + f"\nwrote {args.out}/table.md, per-image CSVs and worst.png")


if __name__ == "__main__":
    cli.run(main)

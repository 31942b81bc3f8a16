"""Pictures and the experiment report.

    python visualize.py report --runs runs --data-dir data   # runs/report.md, comparison.png, test_panel.png
    python visualize.py eda --data-dir data --out runs/eda     # data statistics: JSON + plots
    python visualize.py curves runs/exp1-bce                   # redraw one run's curves
    python visualize.py worst-best --checkpoint models/lesion_segmenter.pt --data-dir data   # where it fails
    python visualize.py robustness runs/robustness/before runs/robustness/best --out runs/robustness/compare.png
                                                               # robustness suites side by side: plot + table

The plots that training and the robustness suite draw as they run are lib/plots.py's.
"""
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data import split_to_score  # noqa: E402
from lib import cli, saving, readers, layouts, metrics  # noqa: E402
from lib.checkpoints import load_models  # noqa: E402
from lib.errors import UsageError  # noqa: E402
from lib.plots import plot_curves, save_figure, save_panel  # noqa: E402
from lib.scoring import predict_logits  # noqa: E402

# Test IoU / Dice of the reference report, by experiment.
REFERENCE = {"exp1-bce": (0.7585, 0.8025), "exp1-iou": (0.7724, 0.8154), "exp2-finetune": (0.7659, 0.8094)}


def compare_robustness(folders, out):
    """Suite results (robustness.py's --out folders) side by side: a grouped bar plot of IoU per shift to `out`,
    and a Markdown table, 'IoU (drop)' per folder and shift, returned."""
    results = {Path(f).name: saving.read_json(Path(f) / "robustness.json") for f in folders}
    names = [r["perturbation"] for r in next(iter(results.values()))["rows"]]
    if any([r["perturbation"] for r in res["rows"]] != names for res in results.values()):
        raise UsageError("these suite results score different shifts; run robustness.py with the same --perturbations")
    y, height = np.arange(len(names))[::-1], 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1.2))
    for k, (label, res) in enumerate(results.items()):
        bars = ax.barh(y + 0.4 - height * (k + 0.5), [r["iou"] for r in res["rows"]], height, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, padding=2)
    low = min(min(r["iou"] for r in res["rows"]) for res in results.values()) - 0.05
    ax.set(yticks=y, yticklabels=names, xlim=(min(low, 0.6), 1.0), xlabel="IoU, per-image mean at mask size",
           title="robustness suite, " + " / ".join(sorted({f"{v['split']} split" for v in results.values()})))
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, out)
    lines = ["| shift | " + " | ".join(f"{k}: IoU (drop)" for k in results) + " |", "|---" * (len(results) + 1) + "|"]
    for i, name in enumerate(names):
        cells = [f"{res['rows'][i]['iou']:.4f}" + (f" ({-res['rows'][i]['iou_drop']:+.4f})" if i else "")
                 for res in results.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"| mean drop over the {len(names) - 1} shifts | "
                 + " | ".join(f"{res['mean_iou_drop']:.4f}" for res in results.values()) + " |")
    return "\n".join(lines)


def read_run(run_dir):
    """Config, histories, checkpoints and test metrics of a finished run folder, or None if it has no test metrics
    yet. An ensemble's folder (evaluate.py with several checkpoints) has its members' histories and the first
    member's config."""
    run_dir = Path(run_dir)
    if not (run_dir / "test_metrics.json").exists():
        return None
    test = saving.read_json(run_dir / "test_metrics.json")
    checkpoints = [run_dir / c for c in test.get("checkpoints", ["best.pt"])]
    return {"name": run_dir.name, "dir": run_dir, "test": test, "checkpoints": checkpoints,
            "config": saving.read_json(checkpoints[0].parent / "config.json"),
            "histories": [saving.read_csv(c.parent / "history.csv") for c in checkpoints]}


def report_table(runs):
    """Markdown table comparing finished runs (ordered by name), with the reference report beside ours."""
    def number(value):
        return "-" if value is None else f"{value:.4f}"
    lines = ["| experiment | loss | optimizer | encoder | models | epochs | test loss | test IoU | test Dice | "
             "IoU, TTA | IoU, full res | Dice, full res | IoU / Dice, full res, TTA, largest region | reference IoU | "
             "reference Dice | training time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in sorted(runs, key=lambda r: r["name"]):
        c, t = run["config"], run["test"]
        ref = REFERENCE.get(run["name"], (None, None))
        encoder = ("frozen" if c["freeze_encoder"] else "fine-tuned") + (" + skips" if c.get("skips") else "")
        minutes = sum(h["seconds"] for history in run["histories"] for h in history) / 60
        best = f"{number(t.get('fullres_lcc_tta_iou'))} / {number(t.get('fullres_lcc_tta_dice'))}"
        cells = [run["name"], c["loss"], c["optimizer"], encoder, str(len(run["histories"])),
                 str(len(run["histories"][0])), number(t["loss"]), number(t["iou"]), number(t["dice"]),
                 number(t.get("tta_iou")), number(t.get("fullres_iou")), number(t.get("fullres_dice")), best,
                 number(ref[0]), number(ref[1]), f"{minutes:.1f} min"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(runs, path):
    """Validation IoU of every run that held images out (an ensemble's first member) against epochs, and test
    IoU/Dice of every run side by side."""
    runs = sorted(runs, key=lambda r: r["name"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        history = run["histories"][0]
        if all(math.isnan(h["val_iou"]) for h in history):  # --val-fraction 0: trained on every image
            continue
        left.plot([h["epoch"] for h in history], [h["val_iou"] for h in history], "o-", label=run["name"])
    left.set(xlabel="epoch", ylabel="validation IoU", title="validation IoU per epoch")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, fontsize=8, frameon=False)  # off the curves
    left.grid(alpha=0.3)
    x = np.arange(len(runs))
    for offset, key in ((-0.2, "iou"), (0.2, "dice")):
        label = f"test {'IoU' if key == 'iou' else 'Dice'}"
        bars = right.bar(x + offset, [r["test"][key] for r in runs], 0.4, label=label)
        right.bar_label(bars, fmt="%.4f", fontsize=9)
    refs = [REFERENCE.get(r["name"], (np.nan, np.nan))[0] for r in runs]
    if not all(np.isnan(refs)):
        right.scatter(x - 0.2, refs, marker="_", s=600, color="black", label="reference report IoU", zorder=3)
    right.set_xticks(x, [r["name"] for r in runs], rotation=15)
    right.set(ylim=(0, 1.18), yticks=np.arange(0, 1.01, 0.2), title="test set (best checkpoint)")
    right.legend(loc="upper center", ncol=3, fontsize=8, frameon=False)
    save_figure(fig, path)


def find_data_dir(data_dir, runs_dir):
    """data_dir if it exists, else the data folder that the runs in runs_dir were trained on (their config.json
    says), so that `make report` and `make eda` need no DATA_DIR after a training run."""
    if Path(data_dir).is_dir():
        return data_dir
    for config in sorted(Path(runs_dir).glob("**/config.json")):
        trained_on = (saving.read_json(config).get("data_dir") or [None])[0]  # the first of several
        if trained_on and Path(trained_on).is_dir():
            print(f"data folder {data_dir} does not exist; using {trained_on}, from {config}")
            return trained_on
    return data_dir


def report(runs_dir, data_dir, cache_dir, n_images=6):
    """runs/report.md, runs/comparison.png and runs/test_panel.png from every finished run in runs_dir."""
    runs_dir = Path(runs_dir)
    data_dir = find_data_dir(data_dir, runs_dir)
    runs = [r for r in map(read_run, sorted(runs_dir.glob("*/"))) if r]
    if not runs:
        raise UsageError(f"no finished runs (with test_metrics.json) in {runs_dir}; run an experiment first")
    table = report_table(runs)
    saving.write_text(runs_dir / "report.md", "# Experiments\n\nTest metrics of each run's best checkpoint "
                        "(by validation IoU; the last epoch for runs trained on every training image, "
                        "--val-fraction 0); per-image means, threshold 0.5.\n\n" + table
                        + "\n![comparison](comparison.png)\n\n![test panel](test_panel.png)\n\n"
                        "![worst and best](worst_best_panel.png)\n")
    plot_comparison(runs, runs_dir / "comparison.png")
    predictions, test = {}, None
    for run in sorted(runs, key=lambda r: r["name"]):
        model, configs = load_models(run["checkpoints"])
        test = split_to_score(data_dir, "test", configs, cache_dir)[0]
        pick = torch.randperm(len(test["images"]), generator=torch.Generator().manual_seed(0))[:n_images]
        logits = predict_logits(model, test["images"][pick], 32, torch.device("cpu"))
        if logits.shape[-1] != 128:  # runs at other sizes are shown at a common size
            logits = torch.nn.functional.interpolate(logits.float(), size=(128, 128), mode="bilinear")
        predictions[run["name"]] = logits
    test128 = split_to_score(data_dir, "test", [{**configs[0], "image_size": 128}], cache_dir)[0]
    title = (f"test images: the prediction of each of the {len(predictions)} runs" if len(predictions) > 1
             else f"test images: the prediction of {next(iter(predictions))}")
    save_panel(test128["images"][pick], test128["masks"][pick], predictions, runs_dir / "test_panel.png", title)
    best = max(runs, key=lambda r: r["test"]["iou"])
    plot_worst_and_best(best["checkpoints"], best["name"], data_dir, cache_dir, runs_dir / "worst_best_panel.png")
    print(table + f"\nwrote {runs_dir}/report.md, comparison.png, test_panel.png, worst_best_panel.png")


def plot_worst_and_best(checkpoints, name, data_dir, cache_dir, path, n=6):
    """The model's n worst and n best test images by IoU (at its input size, as test_per_image.csv's "iou"),
    with its predictions: where does the model fail?"""
    model, configs = load_models(checkpoints)
    test = split_to_score(data_dir, "test", configs, cache_dir)[0]
    logits = predict_logits(model, test["images"], 32, torch.device("cpu"))
    order = metrics.per_image_metrics(logits > 0, test["masks"])["iou"].argsort()
    pick = torch.cat([order[:n], order[-n:]])
    save_panel(test["images"][pick], test["masks"][pick], {name: logits[pick]}, path,
               f"{name}: {n} worst, then {n} best test images", cell=1.6)


def lesion_stats(data_dir, split):
    """Per-image statistics read from the full-size masks and image headers."""
    stats = {"width": [], "height": [], "area_fraction": [], "touches_border": []}
    for _, image_path, mask_path in tqdm(layouts.find_pairs(data_dir, split), desc=f"reading {split} masks",
                                         disable=None):
        with readers.open_image(image_path) as im:
            stats["width"].append(im.size[0])
            stats["height"].append(im.size[1])
        mask = readers.read_binary_mask(mask_path)
        stats["area_fraction"].append(float(mask.mean()))
        edges = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        stats["touches_border"].append(bool(edges.any()))
    return stats


def summarize_stats(stats):
    area = np.array(stats["area_fraction"])
    pixels = np.array(stats["width"], dtype=float) * np.array(stats["height"])
    return {"n_images": len(area),
            "image_sizes": sorted({f"{w}x{h}" for w, h in zip(stats["width"], stats["height"])}),
            "lesion_area_fraction": {"mean": area.mean(), "median": float(np.median(area)),
                                     "min": area.min(), "max": area.max()},
            "foreground_pixel_fraction": float((area * pixels).sum() / pixels.sum()),
            "lesions_touching_border": int(sum(stats["touches_border"])),
            "lesions_touching_border_fraction": float(np.mean(stats["touches_border"]))}


def eda(data_dir, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats = {split: lesion_stats(data_dir, split) for split in layouts.present_groups(data_dir)}
    summary = {split: summarize_stats(s) for split, s in stats.items()}
    saving.write_json(out / "eda.json", summary)
    distinct = {(w, h) for st in stats.values() for w, h in zip(st["width"], st["height"])}
    fig, axes = plt.subplots(1, 3 if len(distinct) > 1 else 2, figsize=(15 if len(distinct) > 1 else 10, 4))
    sizes, balance = axes[:2]
    for split, st in stats.items():  # densities: the splits differ in size, their shapes are what compares
        sizes.hist(st["area_fraction"], bins=25, range=(0, 1), alpha=0.6, density=True,
                   label=f"{split} ({len(st['width'])} images)")
    sizes.set(xlabel="lesion area / image area", ylabel="density", title="lesion size")
    names = list(summary)
    for offset, (key, label) in zip((-0.2, 0.2), (("foreground_pixel_fraction", "lesion pixels"),
                                                  ("lesions_touching_border_fraction", "lesions touching the border"))):
        bars = balance.bar(np.arange(len(names)) + offset, [summary[n][key] for n in names], 0.4, label=label)
        balance.bar_label(bars, fmt="%.2f", fontsize=9)
    balance.set_xticks(np.arange(len(names)), names)
    balance.set(ylim=(0, 1), ylabel="fraction", title="class balance and border")
    if len(distinct) == 1:  # a scatter of one dot says nothing: the title says it
        fig.suptitle("every image is {}x{} px".format(*distinct.pop()))
    else:
        for split, st in stats.items():
            axes[2].scatter(st["width"], st["height"], s=8, alpha=0.5, label=split)
        axes[2].set(xlabel="width (px)", ylabel="height (px)", title="image sizes")
        axes[2].legend()
    for ax in (sizes, balance):
        ax.legend(fontsize=8)
    save_figure(fig, out / "eda.png")
    for split, st in summary.items():
        print(f"{split}: {st['n_images']} images, mean lesion area {st['lesion_area_fraction']['mean']:.3f} of an "
              f"image, {st['lesions_touching_border']} lesions touch the border")
    print(f"wrote {out}/eda.json and eda.png")
    return summary


def main():
    parser = cli.parser(__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, text):
        return sub.add_parser(name, help=text, description=text, formatter_class=cli.HelpFormatter)
    r = command("report", "compare every finished run in --runs")
    r.add_argument("--runs", default="runs", help="the folder of run folders")
    cli.add_data_dir_flag(r, "the data the runs were scored on (for the panels)")
    cli.add_cache_dir_flag(r)
    e = command("eda", "statistics of the data set")
    cli.add_data_dir_flag(e)
    e.add_argument("--runs", default="runs", help="where to look for a run's data folder if --data-dir is missing")
    e.add_argument("--out", default="runs/eda", help="folder for eda.json and eda.png")
    w = command("worst-best", "a model's six worst and six best test images, with its predictions")
    cli.add_checkpoint_flag(w, "the model shown", several=True)
    cli.add_data_dir_flag(w)
    cli.add_cache_dir_flag(w)
    w.add_argument("--name", default="released model", help="the model's name in the titles")
    w.add_argument("--out", default="runs/worst_best_panel.png", help="where the picture goes")
    c = command("curves", "redraw curves.png of one run folder")
    c.add_argument("run_dir")
    b = command("robustness", "robustness.py results side by side: a bar plot and a Markdown table")
    b.add_argument("folders", nargs="+", help="robustness.py --out folders (each holds robustness.json)")
    b.add_argument("--out", default="runs/robustness/compare.png", help="where the plot goes")
    args = parser.parse_args()
    if args.command == "report":
        report(args.runs, args.data_dir, args.cache_dir)
    elif args.command == "eda":
        eda(find_data_dir(args.data_dir, args.runs), args.out)
    elif args.command == "worst-best":
        plot_worst_and_best(args.checkpoint, args.name, args.data_dir, args.cache_dir, Path(args.out))
        print(f"wrote {args.out}")
    elif args.command == "robustness":
        print(compare_robustness(args.folders, Path(args.out)))
        print(f"wrote {args.out}")
    else:
        plot_curves(saving.read_csv(Path(args.run_dir) / "history.csv"), Path(args.run_dir) / "curves.png",
                    Path(args.run_dir).name)


if __name__ == "__main__":
    cli.run(main)

"""Plots that training and the robustness suite draw as they run, and the pictures built on them: loss curves,
prediction panels, robustness bars, adaptation curves. visualize.py draws the report's pictures from finished runs."""
import math

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends import backend_agg  # noqa: E402,F401  loaded now: a Ctrl-C mid-epoch never lands in its import
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lib import saving  # noqa: E402
from lib.metrics import per_image_metrics  # noqa: E402


def plot_curves(history, path, title):
    """Train/validation loss and validation IoU/Dice per epoch, side by side."""
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    left.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    left.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    right.plot(epochs, [h["val_iou"] for h in history], "o-", label="validation IoU")
    right.plot(epochs, [h["val_dice"] for h in history], "o-", label="validation Dice")
    right.set(xlabel="epoch", ylabel="score", title=f"{title}: validation metrics")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    save_figure(fig, path)


def save_figure(fig, path):
    top = 1 - 0.5 / fig.get_figheight()  # half an inch for the suptitle, above the top row's titles
    fig.tight_layout(rect=(0, 0, 1, top) if fig._suptitle else None)
    saving.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


TRUTH_COLOUR, PREDICTION_COLOUR = "#0072B2", "#E69F00"  # blue and orange (Okabe-Ito): told apart by colour-blind eyes


def save_panel(images, masks, predictions, path, title, cell=2.2, row_names=None):
    """One row per image: image, ground truth, each prediction with its IoU, and with one prediction the image
    with both contours (truth blue, prediction orange). images uint8 [N,3,H,W], masks [N,1,H,W], predictions:
    logits [N,1,H,W] or a dict name -> logits; cell: inches per picture; row_names: a title per image."""
    predictions = predictions if isinstance(predictions, dict) else {"prediction": predictions}
    n, k = len(images), len(predictions)
    ncols = 2 + k + (1 if k == 1 else 0)
    fig, axes = plt.subplots(n, ncols, figsize=(cell * ncols, cell * n + 0.4), squeeze=False)
    ious = {name: per_image_metrics(logits > 0, masks)["iou"] for name, logits in predictions.items()}
    for row in range(n):
        image, mask = images[row].permute(1, 2, 0).numpy(), masks[row, 0].numpy()
        cells = [(row_names[row] if row_names else "image", image, None), ("ground truth", mask, "gray")]
        cells += [(f"{name}: IoU {ious[name][row]:.2f}", (logits[row, 0] > 0).numpy(), "gray")
                  for name, logits in predictions.items()]
        for col, (name, picture, cmap) in enumerate(cells):
            axes[row, col].imshow(picture, cmap=cmap, vmin=0, vmax=1 if cmap else None)
            axes[row, col].set_title(name if row == 0 or col >= 2 or row_names and col == 0 else "", fontsize=8)
        if k == 1:
            ax = axes[row, -1]
            ax.imshow(image)
            ax.contour(mask, levels=[0.5], colors=TRUTH_COLOUR, linewidths=1.5)
            ax.contour((next(iter(predictions.values()))[row, 0] > 0).numpy().astype(float), levels=[0.5],
                       colors=PREDICTION_COLOUR, linewidths=1.5)
            axes[0, -1].set_title("truth: blue\nprediction: orange", fontsize=8)
    for ax in axes.flat:  # a thin frame, no ticks: a mask that fills its picture still shows where it ends
        ax.set(xticks=[], yticks=[])
        for spine in ax.spines.values():
            spine.set(color="0.6", linewidth=0.8)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_robustness(rows, path, title):
    """IoU and Dice per perturbation (robustness.py's rows), the clean scores as lines."""
    names = [r["perturbation"] for r in rows][::-1]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) + 1.2))
    for offset, key, label, colour in ((0.2, "iou", "IoU", TRUTH_COLOUR), (-0.2, "dice", "Dice", PREDICTION_COLOUR)):
        values = [r[key] for r in rows][::-1]
        bars = ax.barh(y + offset, values, 0.4, color=colour, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
        ax.axvline(rows[0][key], color=colour, linestyle=":", linewidth=1)
    low = min(min(r["iou"] for r in rows) - 0.05, 0.6)
    ax.set(yticks=y, yticklabels=names, xlim=(low, 1.0), xlabel="per-image mean at each mask's own size",
           title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the bars, never over one
    save_figure(fig, path)


def plot_examples(names, examples, path, cols=5):
    """One picture per perturbation of the same image (examples: [(RGB uint8 [H,W,3], boolean mask [H,W])] at
    their own sizes), with the mask's contour where the shift moved it."""
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.2 * rows), squeeze=False)
    for ax, name, (image, mask) in zip(axes.flat, names, examples):
        ax.imshow(image)
        ax.contour(mask.astype(float), levels=[0.5], colors=TRUTH_COLOUR, linewidths=1)
        ax.set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    save_figure(fig, path)


def plot_adaptation(rows, clean, path):
    """IoU against the number of adaptation images, one line per shift (mean over seeds; 0 images: the model
    before), the calibrated model (make calibrate) at 20 images as a hollow marker, and the unshifted IoU dashed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for shift in dict.fromkeys(r["shift"] for r in rows):
        mine = [r for r in rows if r["shift"] == shift]
        sizes = sorted({r["images"] for r in mine})
        means = [np.mean([r["adapted"] for r in mine if r["images"] == n]) for n in sizes]
        line, = ax.plot([0] + sizes, [mine[0]["before"]] + means, "o-", label=shift)
        calibrated = [r["calibrated"] for r in mine if r["images"] == 20]
        if calibrated:
            ax.plot(20, np.mean(calibrated), "o", mfc="none", ms=10, color=line.get_color())
    ax.axhline(clean, ls="--", color="grey", label="no shift, before adapting")
    ax.plot([], [], "o", mfc="none", color="grey", ms=10, label="calibrated only (20 images)")
    ax.set(xlabel="adaptation images (0: before)", ylabel="IoU on the shifted images",
           title="Adapting to another clinic's annotators")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_contours(examples, titles, path, cols=4):
    """Photos at their own sizes with the true contour (blue) and the prediction's (orange): examples
    [(RGB uint8 [H,W,3], true mask [H,W], predicted mask [H,W])], one title each."""
    rows = math.ceil(len(examples) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.3 * rows + 0.4), squeeze=False)
    for ax, title, (image, truth, pred) in zip(axes.flat, titles, examples):
        ax.imshow(image)
        for mask, colour in ((truth, TRUTH_COLOUR), (pred, PREDICTION_COLOUR)):
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.2)
        ax.set_title(title, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("truth: blue, prediction: orange", fontsize=9)
    save_figure(fig, path)

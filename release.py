"""Release a trained checkpoint as the model shipped in the repository: the weights alone in half precision
(models/lesion_segmenter.pt), scored once on the test split, and the numbers of its card (models/README.md,
models/card.json: test scores, robustness suite, size, sha256) and its worst test images.

    python release.py --checkpoint runs/best/seed0/best.pt --data-dir ../shared/isic2016     # make release

Refuses to release when half precision moves the test IoU by MAX_HALF_PRECISION_LOSS or more.
"""
import hashlib
from pathlib import Path

import torch

import cli
import runfiles
from device import add_device_flag, pick_device
from errors import ModelFileError
from inference import predict_probs, score_model, split_to_score
from model import half_precision, load_checkpoint
from perturbations import PERTURBATIONS, score_perturbations, summarize
from plots import save_panel

MAX_HALF_PRECISION_LOSS = 0.001  # test IoU (full resolution, flip TTA, largest region) that float16 may cost
KEY = "fullres_lcc_tta_"  # the card's protocol: each mask's own size, flip TTA, largest region
NUMBERS_START, NUMBERS_END = "<!-- numbers: written by release.py -->", "<!-- end of numbers -->"


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_scores(path, split, device):
    """(summary, per-image metrics) of one checkpoint on the test split, every variant."""
    model, config = load_checkpoint(path, device)
    return score_model(model, split, config["loss"], 64, device, not config["no_amp"])


def worst_images(path, split, per_image, device, out, n=6):
    """A panel of the n test images the model segments worst (IoU at full resolution, TTA, largest region)."""
    model, config = load_checkpoint(path, device)
    pick = per_image[KEY + "iou"].argsort()[:n]
    probs = predict_probs(model, split["images"][pick], 64, device, not config["no_amp"], tta=True)
    save_panel(split["images"][pick], split["masks"][pick], torch.logit(probs, eps=1e-6), out,
               f"The {n} worst test images", cell=1.8, row_names=[split["ids"][i] for i in pick])


def card_numbers(card):
    """The Markdown block of the card's numbers."""
    t, r, ref = card["test"], card["robustness"], card["test_float32"]
    return "\n".join([
        NUMBERS_START,
        "| | |", "|---|---|",
        f"| test IoU / Dice ({card['test_images']} images, full resolution, flip TTA, largest region) | "
        f"{t['iou']:.4f} / {t['dice']:.4f} |",
        f"| the same in float32, before release | {ref['iou']:.4f} / {ref['dice']:.4f} |",
        f"| test IoU / Dice at {card['image_size']}x{card['image_size']}, no TTA | {t['iou_model_size']:.4f} / "
        f"{t['dice_model_size']:.4f} |",
        f"| sensitivity / specificity (full resolution, TTA, largest region) | {t['sensitivity']:.4f} / "
        f"{t['specificity']:.4f} |",
        f"| robustness suite ({r['shifts']} shifts): mean IoU drop | {r['mean_iou_drop']:.4f} |",
        f"| worst shift: IoU drop | {r['worst']} ({r['worst_iou_drop']:.4f}) |",
        f"| file | `{card['file']}`, {card['bytes'] / 1e6:.1f} MB, {card['parameters'] / 1e6:.2f} M parameters in "
        "float16 |",
        f"| sha256 | `{card['sha256']}` |",
        f"| trained from | `{card['source']}`, commit {card['commit']} |",
        NUMBERS_END])


def write_card(card, readme):
    """card.json beside the model, and the numbers block of the card's README replaced (the prose is kept)."""
    runfiles.write_json(Path(readme).with_name("card.json"), card)
    text = Path(readme).read_text()
    if NUMBERS_START not in text or NUMBERS_END not in text:
        raise ModelFileError(f"{readme} has no numbers block ({NUMBERS_START} ... {NUMBERS_END}) to fill in")
    before, rest = text.split(NUMBERS_START, 1)
    runfiles.write_text(readme, before + card_numbers(card) + rest.split(NUMBERS_END, 1)[1])


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("--checkpoint", default="runs/best/seed0/best.pt",
                        help="the train.py checkpoint to release (default: runs/best/seed0/best.pt)")
    parser.add_argument("--data-dir", default="data", help="the ISIC 2016 folder it is scored on (default: data)")
    parser.add_argument("--out", default="models", help="folder of the released model and its card (default: models)")
    parser.add_argument("--cache-dir", default="cache", help="where decoded images are cached (default: cache)")
    add_device_flag(parser)
    args = parser.parse_args(argv)

    device, out = pick_device(args.device), Path(args.out)
    released = out / "lesion_segmenter.pt"
    _, config = load_checkpoint(args.checkpoint)
    split = split_to_score(args.data_dir, "test", [config], args.cache_dir)[0]
    out.mkdir(parents=True, exist_ok=True)
    runfiles.atomic_save(half_precision(args.checkpoint), released)
    reference, _ = test_scores(args.checkpoint, split, device)
    summary, per_image = test_scores(released, split, device)
    loss = reference[KEY + "iou"] - summary[KEY + "iou"]
    if abs(loss) >= MAX_HALF_PRECISION_LOSS:
        released.unlink()
        raise ModelFileError(f"float16 moves the test IoU by {loss:.4f} (limit {MAX_HALF_PRECISION_LOSS}); "
                             "not released")
    model, _ = load_checkpoint(released, device)
    rows = score_perturbations(model, split, config["image_size"], list(PERTURBATIONS), 0, device,
                               not config["no_amp"])
    worst_images(released, split, per_image, device, out / "worst_test_images.png")
    card = {"file": released.name, "bytes": released.stat().st_size, "sha256": sha256(released),
            "parameters": sum(p.numel() for p in model.parameters()),
            "image_size": config["image_size"], "source": args.checkpoint, "commit": runfiles.commit(),
            "test_images": summary["n_images"],
            "test": {"iou": summary[KEY + "iou"], "dice": summary[KEY + "dice"],
                     "sensitivity": summary[KEY + "sensitivity"], "specificity": summary[KEY + "specificity"],
                     "iou_model_size": summary["iou"], "dice_model_size": summary["dice"]},
            "test_float32": {"iou": reference[KEY + "iou"], "dice": reference[KEY + "dice"]},
            "robustness": {**summarize(rows), "shifts": len(rows) - 1, "rows": rows}}
    write_card(card, out / "README.md")
    print(card_numbers(card).split("\n", 1)[1].rsplit("\n", 1)[0])
    print(f"wrote {released}, {out}/card.json, {out}/README.md's numbers and {out}/worst_test_images.png")


if __name__ == "__main__":
    cli.run(main)

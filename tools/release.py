"""Release a trained checkpoint as the model shipped in the repository: the weights alone in half precision
(models/lesion_segmenter.pt) and the same model as ONNX (models/lesion_segmenter.onnx, what make predict and the
page run), each scored once on the test split, and the numbers of their card (models/README.md, models/card.json:
test scores, robustness suite, sizes, sha256) and its worst test images.

    python tools/release.py --checkpoint runs/two-source/best.pt --data-dir ../shared/isic2016     # make release
    python tools/release.py --onnx-only --data-dir ../shared/isic2016     # make release-onnx: the .onnx of models/'s .pt

Refuses to release when half precision moves the test IoU by MAX_HALF_PRECISION_LOSS or more, or when ONNX
Runtime's masks score more than MAX_ONNX_DIFFERENCE away from PyTorch's.
"""
import datetime
from pathlib import Path

import torch

import project_root  # noqa: F401 (first: lib/ and the top-level modules import from the project's root)

from data import split_to_score
from lib import cli, model_files, onnx_model, revision, saving
from lib.checkpoints import decision_threshold, half_precision, load_checkpoint, read_checkpoint, sealed
from lib.device import pick_device
from lib.errors import ModelFileError
from lib.model_files import sha256
from lib.perturbations import PERTURBATIONS, score_perturbations, summarize
from lib.plots import save_panel
from lib.scoring import onnx_split_iou, predict_probs, score_model
from losses import LOSSES

MAX_HALF_PRECISION_LOSS = 0.001  # test IoU (full resolution, flip TTA, largest region) that float16 may cost
MAX_ONNX_DIFFERENCE = 1e-4  # test IoU between ONNX Runtime and PyTorch on the same weights
KEY = "fullres_lcc_tta_"  # the card's protocol: each mask's own size, flip TTA, largest region
NUMBERS_START, NUMBERS_END = "<!-- numbers: written by tools/release.py -->", "<!-- end of numbers -->"


def test_scores(path, split, device):
    """(summary, per-image metrics) of one checkpoint on the test split, every variant."""
    model, config = load_checkpoint(path, device)
    return score_model(model, split, LOSSES[config["loss"]], 64, device, not config["no_amp"])


def worst_images(path, split, per_image, device, out, n=6):
    """A panel of the n test images the model segments worst (IoU at full resolution, TTA, largest region)."""
    model, config = load_checkpoint(path, device)
    pick = per_image[KEY + "iou"].argsort()[:n]
    probs = predict_probs(model, split["images"][pick], 64, device, not config["no_amp"], tta=True)
    save_panel(split["images"][pick], split["masks"][pick], torch.logit(probs, eps=1e-6), out,
               f"The {n} worst test images", cell=1.8, row_names=[split["ids"][i] for i in pick])


def card_numbers(card):
    """The Markdown block of the card's numbers."""
    t, r, ref, onnx = card["test"], card["robustness"], card["test_float32"], card["onnx"]
    return "\n".join([
        NUMBERS_START,
        "| | |", "|---|---|",
        f"| test IoU / Dice ({card['test_images']} images, full resolution, flip TTA, largest region) | "
        f"{t['iou']:.4f} / {t['dice']:.4f} |",
        f"| the same in float32, at release (commit {card['commit']}) | {ref['iou']:.4f} / {ref['dice']:.4f} |",
        f"| test IoU / Dice at {card['image_size']}x{card['image_size']}, no TTA | {t['iou_model_size']:.4f} / "
        f"{t['dice_model_size']:.4f} |",
        f"| sensitivity / specificity (full resolution, TTA, largest region) | {t['sensitivity']:.4f} / "
        f"{t['specificity']:.4f} |",
        f"| robustness suite ({r['shifts']} shifts): mean IoU drop | {r['mean_iou_drop']:.4f} |",
        f"| worst shift: IoU drop | {r['worst']} ({r['worst_iou_drop']:.4f}) |",
        f"| file | `{card['file']}`, {card['bytes'] / 1e6:.1f} MB, {card['parameters'] / 1e6:.2f} M parameters in "
        "float16 |",
        f"| sha256 | `{card['sha256']}` |",
        f"| ONNX file (make predict, the page) | `{onnx['file']}`, {onnx['bytes'] / 1e6:.1f} MB, weights in float16, "
        "computed in float32 |",
        f"| ONNX sha256 | `{onnx['sha256']}` |",
        f"| test IoU on ONNX Runtime (same protocol) | {onnx['test_iou']:.4f} |",
        f"| trained from | `{card['source']}`, commit {card['commit']} |"]
        + ([f"| test numbers scored again | {card['rescored']['date']}, commit {card['rescored']['commit']} "
            "(`make release-rescore`: test images read as make predict reads them) |"] if "rescored" in card else [])
        + [NUMBERS_END])


def write_card(card, readme):
    """card.json beside the model, and the numbers block of the card's README replaced (the prose is kept)."""
    saving.write_json(Path(readme).with_name("card.json"), card)
    text = Path(readme).read_text()
    if NUMBERS_START not in text or NUMBERS_END not in text:
        raise ModelFileError(f"{readme} has no numbers block ({NUMBERS_START} ... {NUMBERS_END}) to fill in")
    before, rest = text.split(NUMBERS_START, 1)
    saving.write_text(readme, before + card_numbers(card) + rest.split(NUMBERS_END, 1)[1])


def record_in_card(out, **entries):
    """Merge entries into out/card.json at once: a file just written is then the one its card records, and loads
    (which check the sha256 of models/'s files) accept it."""
    path = Path(out) / "card.json"
    saving.write_json(path, {**(saving.read_json(path) if path.is_file() else {}), **entries})


def release_pt(checkpoint, split, out, device):
    """models/lesion_segmenter.pt (float16) of a train.py checkpoint, scored; returns its card's entries."""
    released = out / "lesion_segmenter.pt"
    _, config = load_checkpoint(checkpoint)
    saving.atomic_save(sealed(half_precision(checkpoint)), released)
    record_in_card(out, file=released.name, sha256=sha256(released))
    reference, _ = test_scores(checkpoint, split, device)
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
    return {"file": released.name, "bytes": released.stat().st_size, "sha256": sha256(released),
            "parameters": sum(p.numel() for p in model.parameters()),
            "image_size": config["image_size"], "source": str(checkpoint), "commit": revision.code_revision(),
            "test_images": summary["n_images"], "test": test_entry(summary),
            "test_float32": {"iou": reference[KEY + "iou"], "dice": reference[KEY + "dice"]},
            "robustness": {**summarize(rows), "shifts": len(rows) - 1, "rows": rows}}


def test_entry(summary):
    """The card's 'test' numbers of a score_model() summary."""
    return {"iou": summary[KEY + "iou"], "dice": summary[KEY + "dice"], "sensitivity": summary[KEY + "sensitivity"],
            "specificity": summary[KEY + "specificity"], "iou_model_size": summary["iou"],
            "dice_model_size": summary["dice"]}


def rescore_released(out, split, device):
    """The card of --out's released files scored again on the test split by its protocol, their bytes untouched
    (after a change to how the scoring reads images); the float32 numbers stay those of the release."""
    card = saving.read_json(out / "card.json")
    summary, _ = test_scores(out / card["file"], split, device)
    card["test"], card["test_images"] = test_entry(summary), summary["n_images"]
    card["onnx"]["test_iou"] = onnx_split_iou(out / card["onnx"]["file"], split)
    card["rescored"] = {"date": datetime.date.today().isoformat(), "commit": revision.code_revision()}
    return card


def release_onnx(released_pt, split, out, card):
    """models/lesion_segmenter.onnx of the released .pt, checked against PyTorch and scored on ONNX Runtime by
    the card's protocol; returns the card's 'onnx' entry."""
    path = out / "lesion_segmenter.onnx"
    model, config = load_checkpoint(released_pt)
    onnx_model.export(model, config["image_size"], path, decision_threshold([config]))
    record_in_card(out, onnx={"file": path.name, "sha256": sha256(path)})
    worst = onnx_model.check(model, config["image_size"], path)
    iou = onnx_split_iou(path, split)
    if abs(iou - card["test"]["iou"]) > MAX_ONNX_DIFFERENCE:
        raise ModelFileError(f"ONNX Runtime's test IoU {iou:.5f} is not PyTorch's {card['test']['iou']:.5f} (limit "
                             f"{MAX_ONNX_DIFFERENCE}); not released")
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256(path), "test_iou": iou,
            "largest_logit_difference": worst}


def seal_released(out):
    """Bring --out's released files up to the checks every load makes, their weights untouched: the .pt gets the
    seal of its weights and config, the .onnx file its seal over every byte but the seal's value; the card records their new sizes and sha256."""
    card = saving.read_json(out / "card.json")
    pt, onnx = out / card["file"], out / card["onnx"]["file"]
    checkpoint = read_checkpoint(pt)  # checked against the card first: never seal a damaged file
    model_files.verify(onnx)
    if "seal" not in checkpoint:
        saving.atomic_save(sealed(checkpoint), pt)
    model_files.seal(onnx)
    card.update(bytes=pt.stat().st_size, sha256=sha256(pt))
    card["onnx"].update(bytes=onnx.stat().st_size, sha256=sha256(onnx))
    return card


def main(argv=None):
    parser = cli.parser(__doc__)
    cli.add_checkpoint_flag(parser, "the model to release", default="runs/two-source/best.pt")
    parser.add_argument("--onnx-only", action="store_true",
                        help="keep --out's released .pt and its numbers; write its ONNX file and that file's numbers")
    cli.add_data_dir_flag(parser, "the ISIC 2016 folder it is scored on")
    parser.add_argument("--out", default="models", help="folder of the released model and its card")
    cli.add_cache_dir_flag(parser)
    cli.add_device_flag(parser)
    parser.add_argument("--rescore", action="store_true",
                        help="only score --out's released files again on the test split by the card's protocol, "
                        "their bytes untouched, and rewrite the card's test numbers")
    parser.add_argument("--seal", action="store_true",
                        help="only add the checks every load makes to --out's released files (a .pt checksum, an "
                        ".onnx seal), their weights and scores untouched, and record their new sha256")
    args = parser.parse_args(argv)

    device, out = pick_device(args.device), Path(args.out)
    if args.seal:
        card = seal_released(out)
        write_card(card, out / "README.md")
        return print(f"sealed {out}/{card['file']} ({card['sha256'][:12]}...) and {out}/{card['onnx']['file']} "
                     f"({card['onnx']['sha256'][:12]}...); card.json and README.md record them")
    _, config = load_checkpoint(out / "lesion_segmenter.pt" if args.onnx_only or args.rescore else args.checkpoint)
    split = split_to_score(args.data_dir, "test", [config], args.cache_dir)[0]
    out.mkdir(parents=True, exist_ok=True)
    if args.rescore:
        card = rescore_released(out, split, device)
        write_card(card, out / "README.md")
        return print(card_numbers(card).split("\n", 1)[1].rsplit("\n", 1)[0])
    card = saving.read_json(out / "card.json") if args.onnx_only else release_pt(args.checkpoint, split, out, device)
    card["onnx"] = release_onnx(out / card["file"], split, out, card)
    write_card(card, out / "README.md")
    print(card_numbers(card).split("\n", 1)[1].rsplit("\n", 1)[0])
    print(f"wrote {out}/{card['file']}, {out}/{card['onnx']['file']}, {out}/card.json, {out}/README.md's numbers"
          + ("" if args.onnx_only else f" and {out}/worst_test_images.png"))


if __name__ == "__main__":
    cli.run(main)

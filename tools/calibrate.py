"""Calibrate a model's edge to your own annotators, on the light install (ONNX Runtime, numpy, scipy; no PyTorch):
how far its masks' edge moves in or out to match your labelled images, scored on the images held out, written as a
calibrated .onnx file with its card. make adapt (which also fine-tunes) needs PyTorch; this does not.

    make calibrate DATA_DIR=my_labelled/      # the released model; CHECKPOINT=model.onnx for one of yours
    make predict INPUT=photos/ CHECKPOINT=runs/calibrate/model.onnx

DATA_DIR may be in any layout that --data-dir reads (README: Data), such as the page's export (images/ + masks/;
train/ + test/ when some are marked held out). Its training images calibrate the edge move (lib/calibration.py: the best
move when its gain clears its paired standard error, else none); its test images (test/, or a fifth of a plain
folder, the same ones make adapt holds out) are scored before and after. --out receives model.onnx (the move in
its metadata: make predict, make serve and the page use it), README.md (its card) and calibrate.json.
"""
import time
from pathlib import Path

import project_root  # noqa: F401 (first: lib/ and the top-level modules import from the project's root)

import numpy as np

from lib import cards, cli, model_files, readers, saving, splits
from lib.calibration import EDGE_MOVES, calibrate, edge_curves, refuse_disagreeing_masks, refuse_one_value_masks
from lib.compare import paired_difference
from lib.errors import DataError, UsageError
from lib.segmenter import Segmenter


def read_labelled(pairs, size):
    """(model inputs uint8 [N,S,S,3], boolean masks at their own size) of [(id, image, mask)]: each image decoded
    whole and resized, as make predict reads photos. DataError naming the masks not of their image's size."""
    read = [(readers.read_image(image, size, draft=False), readers.read_binary_mask(mask)) for _, image, mask in pairs]
    wrong = [f"{image} is {w}x{h} but {mask} is {m.shape[1]}x{m.shape[0]}"
             for ((_, (w, h)), m), (_, image, mask) in zip(read, pairs) if m.shape != (h, w)]
    if wrong:
        raise DataError(f"size mismatch in {len(wrong)} of {len(pairs)} pairs: {'; '.join(wrong[:3])}"
                        f"{' ...' if len(wrong) > 3 else ''} (a mask is drawn at its image's width and height)")
    return np.stack([r[0][0] for r in read]), [r[1] for r in read]


def held_out_rows(segmenter, pairs, move):
    """{row name: paired_difference() against the model before} on the held-out images: the model as given and
    with its edge move replaced by move, each as make predict makes masks (flip TTA, the largest region)."""
    inputs, masks = read_labelled(pairs, segmenter.image_size)
    curves = edge_curves(segmenter.probabilities(inputs, tta=True), masks, [segmenter.edge_move, move],
                         segmenter.threshold)
    return {"before": paired_difference(curves[:, 0], curves[:, 0]),
            f"calibrated (edge {move:+g})": paired_difference(curves[:, 0], curves[:, 1])}


def calibrated_model(checkpoint, move):
    """The ONNX file's bytes with its edge move set to move; its threshold stays (the move was fitted at it)."""
    return model_files.with_metadata(Path(checkpoint).read_bytes(), {"edge_move": f"{move:g}"})


def parse_args(argv=None):
    parser = cli.parser(__doc__)
    cli.add_data_dir_flag(parser, "your labelled images", required=True)
    cli.add_checkpoint_flag(parser, "the model to calibrate", default=model_files.ONNX, onnx="only")
    parser.add_argument("--split-seed", type=int, default=0, help="which fifth of a folder without a split is held "
                        "out: make adapt's (the seed its model was trained with)")
    parser.add_argument("--out", default="runs/calibrate", help="folder for model.onnx, README.md, calibrate.json")
    parser.add_argument("--overwrite", action="store_true", help="replace the model an earlier run left in --out")
    cli.add_device_flag(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args, start = parse_args(argv), time.perf_counter()
    out = Path(args.out)
    if Path(args.checkpoint).suffix.lower() == ".pt":
        raise UsageError(f"--checkpoint {args.checkpoint}: make calibrate reads ONNX files; export it first (make "
                         f"export CHECKPOINT={args.checkpoint} ONNX=model.onnx), or calibrate it with PyTorch: "
                         "python tools/adapt.py --checkpoint ...")
    if Path(args.checkpoint).suffix.lower() != ".onnx":
        raise UsageError(f"--checkpoint {args.checkpoint} is not a model: make calibrate reads an .onnx file (the "
                         f"released one: {model_files.ONNX.relative_to(model_files.FOLDER.parent)})")
    if (out / "model.onnx").exists() and not args.overwrite:
        raise UsageError(f"{out} already holds a model (model.onnx) from an earlier run: add --overwrite (make ... "
                         "OVERWRITE=1) to replace it, or choose another --out")
    segmenter = Segmenter.load([args.checkpoint], args.device)
    calibration_pairs, held_out = splits.labelled_pairs(args.data_dir, args.split_seed)
    if len(calibration_pairs) < 2:
        raise DataError(f"{len(calibration_pairs)} labelled training image(s) in {args.data_dir}: calibration needs "
                        "at least 2, and 10 or more to be worth it")
    inputs, masks = read_labelled(calibration_pairs, segmenter.image_size)
    refuse_one_value_masks(masks, [m for _, _, m in calibration_pairs], args.data_dir)
    print(f"calibrating on {len(masks)} labelled images, {len(held_out)} held out")
    # a model calibrated before is moved from where it stands: its own move is the neutral candidate
    own = segmenter.edge_move
    moves = np.union1d(EDGE_MOVES, [own])
    curves = edge_curves(segmenter.probabilities(inputs, tta=True), masks, moves, segmenter.threshold)
    refuse_disagreeing_masks(curves[:, np.flatnonzero(moves == own)[0]], args.data_dir)
    calib = {**calibrate(curves, moves, neutral=own), "neutral": own}
    move = calib["edge_move"]
    rows = held_out_rows(segmenter, held_out, move) if held_out else {}
    out.mkdir(parents=True, exist_ok=True)
    saving.write_bytes(out / "model.onnx", calibrated_model(args.checkpoint, move))
    report = {"data_dir": args.data_dir, "checkpoint": args.checkpoint, "adapted": None,
              "model": str(out / "model.onnx"), "threshold": segmenter.threshold, "edge_move": move, "calibration": calib,
              "held_out": len(held_out), "comparisons": rows, "recipe": None, "tool": "tools/calibrate.py",
              "seconds": round(time.perf_counter() - start, 1)}
    cards.write(out, report, rows, "calibrate.json")
    print(f"wrote {out}/model.onnx, {out}/README.md, {out}/calibrate.json in {report['seconds']:.0f} s")


if __name__ == "__main__":
    cli.run(main)

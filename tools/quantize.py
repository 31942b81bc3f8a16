"""An int8 copy of the released model for ONNX Runtime, measured against the float one on this machine (make
quantize): static quantization (onnxruntime.quantization: QOperator, int8 weights per channel, uint8 activations)
calibrated on training images, then the forward pass with flip TTA and the test IoU by the card's protocol of both
files. The released model trained on every training image (it held none out for validation), so the test split,
scored once, is the judge: the int8 file is worth using if it is faster and loses at most MAX_IOU_LOSS.

    python tools/quantize.py --data-dir ../shared/isic2016              # runs/quantize/lesion_segmenter_int8.onnx
    make predict INPUT=photos/ CHECKPOINT=runs/quantize/lesion_segmenter_int8.onnx
"""
import tempfile
from pathlib import Path

import torch

import project_root  # noqa: F401 (first: lib/ and the top-level modules import from the project's root)

from data import split_to_score
from lib import cli, model_files, onnx_model, saving
from lib.checkpoints import decision_edge_move, decision_threshold, load_checkpoint
from lib.errors import UsageError
from lib.scoring import onnx_split_iou
from lib.segmenter import Segmenter
from lib.timing import rate

MAX_IOU_LOSS = 0.002  # what the int8 file may cost against the float one to be worth using


def quantize(model, config, inputs, out, batch_size=16):
    """Write the int8 file of the released model (models/'s .pt, loaded: model, config) to out: float32 ONNX first
    (the released float16 weights, exactly), then quantized with activation ranges from `inputs` (float32
    [N,3,S,S]), its metadata kept and sealed."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    onnx = onnx_model.import_onnx()

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": inputs[i:i + batch_size]} for i in range(0, len(inputs), batch_size)])

        def get_next(self):
            return next(self.batches, None)
    with tempfile.TemporaryDirectory() as tmp:
        float32 = Path(tmp) / "float32.onnx"
        onnx_model.export(model, config["image_size"], float32, decision_threshold([config]),
                          decision_edge_move([config]), half_weights=False)
        quant_pre_process(str(float32), str(float32))  # shapes inferred, graph fused: int8 runs slower without it
        quantize_static(str(float32), str(Path(tmp) / "int8.onnx"), Batches(), quant_format=QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        quantized = onnx.load(str(Path(tmp) / "int8.onnx"))
    onnx.helper.set_model_props(quantized, {p.key: p.value for p in onnx.load(str(model_files.ONNX)).metadata_props
                                            if p.key != model_files.SEAL})
    saving.write_bytes(out, model_files.sealed(quantized.SerializeToString()))


def tta_rate(path, photos, seconds):
    """Photos per second of one file's forward pass with flip TTA on photos (uint8 [N,S,S,3]), as make predict
    runs it."""
    segmenter = Segmenter.load([path], "cpu")
    return rate(lambda: segmenter.probabilities(photos, tta=True), len(photos), torch.device("cpu"), seconds)


def measure(int8, args, config):
    """{test: {float, int8 IoU}, speed: {float, int8 photos/s}}, printed line by line."""
    test = split_to_score(args.data_dir, "test", [config], args.cache_dir)[0]
    paths = {"float": model_files.ONNX, "int8": int8}
    iou = {name: onnx_split_iou(path, test) for name, path in paths.items()}
    print(f"test IoU ({len(test['images'])} images): float {iou['float']:.4f}, int8 {iou['int8']:.4f} "
          f"({iou['int8'] - iou['float']:+.4f})", flush=True)
    speed, batch = {}, test["images"][:16].permute(0, 2, 3, 1).numpy()  # 16 photos per call
    for name, path in [*paths.items()] * 2:  # each twice, alternating: fair to both
        speed[name] = max(speed.get(name, 0), tta_rate(path, batch, args.seconds))
    print(f"forward pass with flip TTA, batch {len(batch)}: float {speed['float']:.1f} photos/s, int8 {speed['int8']:.1f} "
          f"photos/s ({speed['int8'] / speed['float']:.2f}x)")
    return {"test": iou, "speed": speed}


def main():
    parser = cli.parser(__doc__)
    cli.add_data_dir_flag(parser, "the ISIC 2016 folder: training images to calibrate on, test images to judge")
    cli.add_cache_dir_flag(parser)
    parser.add_argument("--out", default="runs/quantize", help="folder for the int8 file and quantize.json")
    parser.add_argument("--images", type=int, default=200, help="training images to calibrate the ranges on")
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time of each forward-pass rate")
    args = parser.parse_args()
    model, config = load_checkpoint(model_files.PT)
    train = split_to_score(args.data_dir, "train", [config], args.cache_dir)[0]
    if len(train["images"]) < 10:
        raise UsageError(f"{len(train['images'])} training images in {args.data_dir}: calibrating needs at least 10")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    int8 = out / "lesion_segmenter_int8.onnx"
    quantize(model, config, train["images"][:args.images].float().numpy(), int8)
    print(f"wrote {int8} ({int8.stat().st_size / 1e6:.1f} MB; the float file: "
          f"{model_files.ONNX.stat().st_size / 1e6:.1f} MB)", flush=True)
    found = measure(int8, args, config)
    loss, speedup = found["test"]["float"] - found["test"]["int8"], found["speed"]["int8"] / found["speed"]["float"]
    found["verdict"] = (f"worth using: {speedup:.2f}x the forward pass for {loss:.4f} test IoU"
                        if loss <= MAX_IOU_LOSS and speedup > 1 else
                        f"not worth using: it loses {loss:.4f} test IoU or is not faster here")
    saving.write_json(out / "quantize.json", found)
    print(found["verdict"])


if __name__ == "__main__":
    cli.run(main)

"""Export a trained checkpoint to ONNX (dynamic batch size) and check it against PyTorch.

    python export.py --checkpoint runs/exp2-finetune/best.pt --out model.onnx

The ONNX model takes float32 RGB images [N,3,S,S] with values 0..255 (S: the checkpoint's image size) and
returns logits [N,1,S,S]; a pixel is lesion where sigmoid(logit) > the model's threshold, stored in the file's
metadata ("threshold": adapt.py's calibration, else 0.5; "image_size": S). The export needs onnx and its check
onnxruntime (pip install -r requirements-export.txt).
"""
import warnings

import numpy as np
import torch

import cli
from errors import ModelFileError, UsageError
from model import decision_threshold, load_models


def export(model, size, path, threshold=0.5):
    """Write the model as ONNX to path, its input size and decision threshold as metadata; the exporter needs the
    onnx package (requirements-export.txt)."""
    try:
        import onnx  # imported here: only the export needs it
    except ImportError:
        raise UsageError("export needs the onnx package: pip install -r requirements-export.txt") from None
    example = torch.rand(2, 3, size, size) * 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(model, (example,), path, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    exported = onnx.load(path)
    onnx.helper.set_model_props(exported, {"image_size": str(size), "threshold": f"{threshold:g}"})
    onnx.save(exported, path)


def check(model, size, path, batch_sizes=(1, 3), tolerance=1e-3):
    """Largest absolute difference between ONNX Runtime's and PyTorch's logits over a few random inputs,
    or None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in batch_sizes:
        images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(n)) * 255
        with torch.no_grad():
            expected = model(images).numpy()
        got = session.run(None, {"images": images.numpy()})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > tolerance:
        raise ModelFileError(f"ONNX output differs from PyTorch's by {worst:.2e} (> {tolerance})")
    return worst


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("--checkpoint", required=True, nargs="+", action="extend",
                        help="best.pt or last.pt written by train.py; several: export their ensemble as one model")
    parser.add_argument("--out", default="model.onnx")
    args = parser.parse_args(argv)
    model, configs = load_models(args.checkpoint)
    size = configs[0]["image_size"]
    export(model, size, args.out, decision_threshold(configs))
    worst = check(model, size, args.out)
    if worst is None:
        print(f"wrote {args.out}; not checked: onnxruntime is not installed (pip install -r requirements-export.txt)")
    else:
        print(f"wrote {args.out}; ONNX Runtime matches PyTorch within {worst:.1e} for batch sizes 1 and 3")


if __name__ == "__main__":
    cli.run(main)

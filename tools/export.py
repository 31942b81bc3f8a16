"""Export trained checkpoints to ONNX (dynamic batch size; several: their ensemble as one model) and check the
file against PyTorch, so that make predict and the page run them on ONNX Runtime without PyTorch.

    python tools/export.py --checkpoint runs/adapt/model.pt --out model.onnx
    python predict.py my_images/ --checkpoint model.onnx -o masks

The ONNX model takes float32 RGB images [N,3,S,S] with values 0..255 (S: the checkpoint's image size) and
returns logits [N,1,S,S]; a pixel is lesion where sigmoid(logit) > the model's threshold, stored in the file's
metadata ("threshold" and "edge_move": adapt.py's calibration, else 0.5 and 0; "image_size": S); the mask's edge
is then moved by "edge_move" x its equivalent radius (masks.move_edge). Its weights are stored in float16
and computed in float32. The export needs onnx and its check onnxruntime (pip install -r
requirements-export.txt).
"""

import project_root  # noqa: F401 (first: lib/ and the top-level modules import from the project's root)

from lib import cli, model_files, onnx_model
from lib.checkpoints import decision_edge_move, decision_threshold, load_models


def main(argv=None):
    parser = cli.parser(__doc__)
    cli.add_checkpoint_flag(parser, "the model exported", default=model_files.PT, several=True)
    parser.add_argument("-o", "--out", default="model.onnx", help="the ONNX file to write")
    args = parser.parse_args(argv)
    model, configs = load_models(args.checkpoint or [str(model_files.PT)])
    size = configs[0]["image_size"]
    onnx_model.export(model, size, args.out, decision_threshold(configs), decision_edge_move(configs))
    worst = onnx_model.check(model, size, args.out)
    if worst is None:
        print(f"wrote {args.out}; not checked: onnxruntime is not installed (pip install -r requirements-export.txt)")
    else:
        print(f"wrote {args.out}; ONNX Runtime matches PyTorch within {worst:.1e} for batch sizes 1 and 3")


if __name__ == "__main__":
    cli.run(main)

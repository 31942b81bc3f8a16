"""A trained model as an ONNX file, the one format both light runtimes read (ONNX Runtime in Python, ONNX Runtime
Web in the page): export from PyTorch, its weights stored in float16 to halve the file, and a check of ONNX
Runtime's logits against PyTorch's. Needs torch and onnx (requirements-export.txt); reading the file needs only
onnxruntime (segmenter.py).

The file takes float32 RGB images [N,3,S,S] with values 0..255 and returns logits [N,1,S,S]; its metadata holds
"image_size" (S), "threshold" (a pixel is lesion where sigmoid(logit) > threshold), "edge_move" (the mask's edge
then moved by that share of its equivalent radius, masks.move_edge; absent in files older than it: 0) and, last,
the seal that every load checks (lib/model_files.py).
"""
import warnings

import numpy as np
import torch

from lib import model_files
from lib.errors import ModelFileError, UsageError


def import_onnx():
    try:
        import onnx
    except ImportError:
        raise UsageError("writing ONNX files needs the onnx package: pip install -r requirements-export.txt") from None
    return onnx


def export(model, size, path, threshold=0.5, edge_move=0.0, half_weights=True):
    """Write the model as ONNX to path (a dynamic batch size), its input size, decision threshold and edge move as
    metadata.
    half_weights: every float32 weight stored in float16 and cast back to float32 when the file is loaded, so the
    file is half the size and ONNX Runtime still computes in float32 (float16 arithmetic is slow on CPUs)."""
    onnx = import_onnx()
    example = torch.rand(2, 3, size, size) * 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(model.float().cpu().eval(), (example,), str(path), input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False, do_constant_folding=False)
    exported = onnx.load(str(path))
    if half_weights:
        store_weights_in_half(exported.graph, onnx)
    onnx.helper.set_model_props(exported, {"image_size": str(size), "threshold": f"{threshold:g}",
                                           "edge_move": f"{edge_move:g}"})
    onnx.save(exported, str(path))
    model_files.seal(path)  # every load checks the file against it, wherever it is copied


def store_weights_in_half(graph, onnx):
    """Replace each float32 initializer W of the graph by a float16 one and a Cast node that gives W back in
    float32 (ONNX Runtime folds the casts when it loads the file)."""
    from onnx import TensorProto, numpy_helper
    casts = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
    for node in reversed(casts):  # before every node that reads them: graphs are topologically sorted
        graph.node.insert(0, node)


def check(model, size, path, batch_sizes=(1, 3), tolerance=1e-3):
    """Largest absolute difference between ONNX Runtime's and PyTorch's logits over a few random inputs; raises
    ModelFileError above tolerance. None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    model = model.float().cpu().eval()
    for n in batch_sizes:
        images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(n)) * 255
        with torch.no_grad():
            expected = model(images).numpy()
        got = session.run(None, {"images": images.numpy()})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > tolerance:
        raise ModelFileError(f"ONNX output differs from PyTorch's by {worst:.2e} (> {tolerance})")
    return worst

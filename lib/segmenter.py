"""One loaded model for prediction, whatever runs it: a released or exported `.onnx` file on ONNX Runtime (no torch
imported), or train.py checkpoints (`.pt`; several: their ensemble) on PyTorch. It knows its input size and
decision threshold and turns photos into probabilities and masks at each photo's own size; everything after the
probabilities is masks.py's (numpy, PIL, scipy), the same for both runtimes.

    from lib.segmenter import Segmenter
    segmenter = Segmenter.load()                    # the released model (models/lesion_segmenter.onnx)
    mask = segmenter.segment("photo.jpg")           # boolean [H,W] at the photo's own size
"""
from pathlib import Path

import numpy as np

from lib import model_files, photos, readers
from lib.errors import ModelFileError, UsageError
from lib.masks import checked_edge_move, checked_threshold, mask_at_size, unsure

TORCH_MISSING = ("{path} is a PyTorch checkpoint, and PyTorch is not installed here (make predict installs only "
                 "ONNX Runtime). Install it with `.venv/bin/pip install -r requirements.txt` (or `make setup`), or "
                 "export the checkpoint once where PyTorch is: `make export CHECKPOINT={path} ONNX=model.onnx`")


class OnnxRuntime:
    """An ONNX file on ONNX Runtime: logits of float32 images [N,3,S,S]; its input size, threshold and edge move
    from the file's metadata (onnx_model.py writes them)."""

    def __init__(self, path, device="auto", threads=None):
        import onnxruntime  # here: only this runtime needs it
        data = model_files.verify(path)
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif device not in ("auto", "cpu"):
            raise UsageError(f"--device {device}: this ONNX Runtime has no {device} provider; use --device cpu")
        try:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's choice, one per core
            self.session = onnxruntime.InferenceSession(data, options, providers=providers)  # the bytes verified
            meta = self.session.get_modelmeta().custom_metadata_map
            self.image_size = int(meta["image_size"])
        except Exception as e:  # not ONNX at all, or a file without our metadata
            raise ModelFileError(f"{path} is not an ONNX file written by export.py or release.py ({e})"[:400]) from None
        self.threshold = checked_threshold(meta.get("threshold", 0.5), f"the threshold stored in {path}")
        self.edge_move = checked_edge_move(meta.get("edge_move", 0.0), f"the edge move stored in {path}")
        self.name, self.path = "ONNX Runtime", path
        self.check_shapes()

    def check_shapes(self):
        """ModelFileError unless the file takes images [N,3,S,S] and gives logits [N,1,S,S], S its metadata's
        image_size (dimensions the file leaves open are checked on each batch)."""
        inputs, outputs, s = self.session.get_inputs(), self.session.get_outputs(), self.image_size
        fits = [len(inputs) == 1 and inputs[0].name == "images" and len(inputs[0].shape) == 4, len(outputs) >= 1
                and len(outputs[0].shape) == 4]
        fits += [isinstance(d, str) or d == want for d, want in zip(
            inputs[0].shape[1:] + outputs[0].shape[1:], (3, s, s, 1, s, s))] if all(fits) else []
        if not all(fits):
            raise ModelFileError(f"{self.path} does not fit its metadata (image_size {s}): it takes "
                                 f"{[(i.name, i.shape) for i in inputs]} and gives {[o.shape for o in outputs][:1]}, "
                                 f"where images [N,3,{s},{s}] -> logits [N,1,{s},{s}] are expected; export it again "
                                 "with tools/export.py")

    def __call__(self, batch):
        logits = self.session.run(None, {"images": batch})[0]
        if logits.shape != (len(batch), 1, *batch.shape[2:]):
            raise ModelFileError(f"{self.path} gave logits of shape {logits.shape} for images of shape "
                                 f"{batch.shape}; a segmentation model gives [N,1,H,W]: export it again")
        return logits


class TorchRuntime:
    """train.py checkpoints (several: their ensemble) on PyTorch: logits of float32 images [N,3,S,S]."""

    def __init__(self, paths, device="auto"):
        try:
            import torch
        except ImportError:
            raise UsageError(TORCH_MISSING.format(path=paths[0])) from None
        from lib.checkpoints import decision_edge_move, decision_threshold, load_models
        from lib.device import autocast, pick_device
        # kept, not imported at each call: torch.hub may hand this object to a program with a `lib` of its own
        self.torch, self.device, self.autocast = torch, pick_device(device), autocast
        self.model, configs = load_models([str(p) for p in paths], self.device)
        self.image_size, self.amp = configs[0]["image_size"], not configs[0]["no_amp"]
        self.threshold, self.edge_move = decision_threshold(configs), decision_edge_move(configs)
        self.name = "PyTorch"

    def __call__(self, batch):
        with self.torch.no_grad(), self.autocast(self.device, self.amp):
            return self.model(self.torch.from_numpy(batch).to(self.device)).float().cpu().numpy()


class Segmenter:
    """A loaded model (runtime), its input size, its decision threshold and its edge move."""

    def __init__(self, runtime):
        self.runtime, self.image_size, self.threshold = runtime, runtime.image_size, runtime.threshold
        self.edge_move = runtime.edge_move

    @classmethod
    def load(cls, checkpoints=None, device="auto", threads=None):
        """From one `.onnx` file, or from train.py checkpoints (several: their ensemble); none: the released model.
        threads: the CPU threads ONNX Runtime may use (None: one per core)."""
        paths = [Path(c) for c in checkpoints or [model_files.ONNX]]
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"model file {path} does not exist (the released one is {model_files.ONNX})")
        if any(p.suffix.lower() == ".onnx" for p in paths):
            if len(paths) > 1:
                raise UsageError("an ensemble is made of train.py checkpoints (.pt); export it as one ONNX file with "
                                 "export.py to run it on ONNX Runtime")
            return cls(OnnxRuntime(paths[0], device, threads))
        return cls(TorchRuntime(paths, device))

    def probabilities(self, inputs, tta=False, batch_size=64):
        """Lesion probabilities [N,S,S] (float32) of uint8 model inputs [N,S,S,3], batch_size at a time. With tta the
        mean over the image and its horizontal and vertical flips, each prediction flipped back first (one forward
        pass of 3 x batch_size)."""
        return np.concatenate([self.batch_probabilities(inputs[i:i + batch_size], tta)
                               for i in range(0, len(inputs), batch_size)])

    def batch_probabilities(self, inputs, tta):
        x = np.ascontiguousarray(inputs.transpose(0, 3, 1, 2), dtype=np.float32)
        views = [x, x[..., ::-1], x[..., ::-1, :]] if tta else [x]
        logits = self.runtime(np.ascontiguousarray(np.concatenate(views)))[:, 0]
        probs = sigmoid(logits).reshape(len(views), len(x), *logits.shape[1:])
        if not tta:
            return probs[0]
        return (probs[0] + probs[1][..., ::-1] + probs[2][..., ::-1, :]) / 3

    def masks(self, photos, tta=False, largest_component=False, threshold=None):
        """Boolean masks [H,W] of photos (RGB uint8 [H,W,3] each), each at its photo's own size."""
        probs = self.probabilities(np.stack([readers.model_input(p, self.image_size) for p in photos]), tta)
        return [self.mask(prob, p.shape[1], p.shape[0], largest_component, threshold) for prob, p in zip(probs, photos)]

    def mask(self, prob, width, height, largest_component=False, threshold=None):
        """Boolean mask [height, width] of one probability map [S,S]: this model's threshold (or threshold) and edge
        move applied, with largest_component only its largest region."""
        threshold = self.threshold if threshold is None else checked_threshold(threshold)
        return mask_at_size(prob, width, height, threshold, largest_component, self.edge_move)

    def write(self, prob, photo, name, largest_component=False, threshold=None, overlay=False):
        """One photo's outputs from its probabilities: its mask at the photo's own size (and overlay) under name,
        written whole (photos.write_outputs)."""
        photos.write_outputs(photo, self.mask(prob, *photo.size, largest_component, threshold), name, overlay)

    def unsure(self, prob, threshold=None):
        """masks.unsure() of one probability map at this model's threshold (or threshold)."""
        return unsure(prob, self.threshold if threshold is None else threshold)

    def segment(self, image, tta=True, largest_component=True, threshold=None):
        """Boolean mask [H,W] of one image at its own size: a file's path, a PIL image or a numpy array (uint8
        [H,W,3] or [H,W] grey), EXIF orientation applied and the caller's image untouched; with tta the mean over
        flips, with largest_component only the largest region (as make predict)."""
        photo = readers.read_full_image(image) if isinstance(image, (str, Path)) else readers.as_photo(image)
        return self.masks([photo], tta, largest_component, threshold)[0]


def sigmoid(logits):
    """1 / (1 + exp(-logits)) without overflow, in numpy: scipy's expit would cost make predict a fifth of its
    start-up to import."""
    return 0.5 + 0.5 * np.tanh(0.5 * logits)

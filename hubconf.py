"""torch.hub entry points: the released lesion segmenter, from a local clone or the hosted repository.

    segmenter = torch.hub.load("path/to/this/repo", "lesion_segmenter", source="local")
    mask = segmenter.segment("photo.jpg")          # boolean numpy array [H,W] at the photo's own size
    probs = segmenter.probabilities(images)        # uint8 numpy [N,128,128,3] -> lesion probabilities [N,128,128]
    logits = segmenter.runtime.model(images)       # the torch.nn.Module: [N,3,128,128] 0..255 -> logits
"""
import contextlib
import sys
from pathlib import Path

dependencies = ["torch", "torchvision", "PIL", "numpy", "scipy"]
OWN = ("lib", "model")  # this repository's top-level names that the segmenter imports: a caller may have its own


@contextlib.contextmanager
def own_modules():
    """This repository's lib/ and model.py imported under their names while the segmenter loads, the caller's
    modules of the same names put back afterwards (torch.hub.load from a project with a `lib` package of its own)."""
    def ours(name):
        return name.split(".")[0] in OWN
    theirs = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in theirs:
        del sys.modules[name]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        yield
    finally:
        sys.path.remove(str(Path(__file__).resolve().parent))
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(theirs)


def lesion_segmenter(checkpoint=None, device="cpu"):
    """The released model (models/lesion_segmenter.pt, card: models/README.md) on PyTorch, ready for inference
    (segmenter.Segmenter); checkpoint: a train.py checkpoint, or a list of them for an ensemble, instead. Its
    segment(image, tta=True, largest_component=True) takes a path, a PIL image or a numpy array and returns the
    mask as make predict makes it."""
    with own_modules():
        from lib import model_files
        from lib.segmenter import Segmenter
        return Segmenter.load([checkpoint] if isinstance(checkpoint, str) else checkpoint or [model_files.PT], device)

"""torch.hub entry points: the released lesion segmenter, from a local clone or the hosted repository.

    segmenter = torch.hub.load("path/to/this/repo", "lesion_segmenter", source="local")
    mask = segmenter.segment("photo.jpg")          # boolean numpy array [H,W] at the photo's own size
    probs = segmenter.probabilities(images)        # uint8 numpy [N,128,128,3] -> lesion probabilities [N,128,128]
    logits = segmenter.runtime.model(images)       # the torch.nn.Module: [N,3,128,128] 0..255 -> logits
"""
dependencies = ["torch", "torchvision", "PIL", "numpy", "scipy"]


def lesion_segmenter(checkpoint=None, device="cpu"):
    """The released model (models/lesion_segmenter.pt, card: models/README.md) on PyTorch, ready for inference
    (segmenter.Segmenter); checkpoint: a train.py checkpoint, or a list of them for an ensemble, instead. Its
    segment(image, tta=True, largest_component=True) takes a path, a PIL image or a numpy array and returns the
    mask as make predict makes it."""
    from lib import model_files  # here: torch.hub puts this repository on the path first
    from lib.segmenter import Segmenter
    return Segmenter.load([checkpoint] if isinstance(checkpoint, str) else checkpoint or [model_files.PT], device)

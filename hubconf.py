"""torch.hub entry points: the released lesion segmenter, from a local clone or the hosted repository.

    model = torch.hub.load("path/to/this/repo", "lesion_segmenter", source="local")
    mask = model.segment("photo.jpg")             # boolean numpy array [H,W] at the photo's own size
    logits = model(images)                        # uint8 or float 0..255 [N,3,128,128] -> logits [N,1,128,128]
"""
dependencies = ["torch", "torchvision", "PIL", "numpy", "scipy"]


def lesion_segmenter(checkpoint=None, device="cpu"):
    """The released model (models/lesion_segmenter.pt, card: models/README.md) in eval mode, ready for inference;
    checkpoint: a train.py checkpoint, or a list of them for an ensemble, instead. Its segment(image, tta=True,
    largest_component=True) takes a path or a PIL image and returns the mask as make predict makes it."""
    from inference import LesionSegmenter  # here: torch.hub puts this repository on the path first
    return LesionSegmenter.load([checkpoint] if isinstance(checkpoint, str) else checkpoint, device)

"""Training losses on logits [N,1,H,W] against binary masks of the same shape."""
import torch.nn.functional as F


def soft_iou_loss(logits, masks, smooth=1.0):
    """1 - soft Jaccard of sigmoid probabilities, per image, averaged over the batch.
    `smooth` keeps an empty mask (and an empty prediction) finite: both empty gives loss 0."""
    probs = logits.float().sigmoid().flatten(1)
    masks = masks.float().flatten(1)
    intersection = (probs * masks).sum(1)
    union = probs.sum(1) + masks.sum(1) - intersection
    return (1 - (intersection + smooth) / (union + smooth)).mean()


def soft_dice_loss(logits, masks, smooth=1.0):
    """1 - soft Dice of sigmoid probabilities, per image, averaged over the batch."""
    probs = logits.float().sigmoid().flatten(1)
    masks = masks.float().flatten(1)
    intersection = (probs * masks).sum(1)
    return (1 - (2 * intersection + smooth) / (probs.sum(1) + masks.sum(1) + smooth)).mean()


def bce_loss(logits, masks):
    return F.binary_cross_entropy_with_logits(logits.float(), masks.float())


def bce_dice_loss(logits, masks):
    return bce_loss(logits, masks) + soft_dice_loss(logits, masks)


LOSSES = {"bce": bce_loss, "iou": soft_iou_loss, "bce+dice": bce_dice_loss}

"""Training losses on logits [N,1,H,W] against binary masks of the same shape."""
import torch
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


def lovasz_hinge_loss(logits, masks):
    """Lovasz hinge (Berman et al., CVPR 2018): a convex surrogate of 1 - Jaccard, per image, averaged.
    Hinge errors sorted from worst down, weighted by how much each one adds to the Jaccard loss."""
    logits, masks = logits.float().flatten(1), masks.float().flatten(1)
    errors, order = (1 - logits * (2 * masks - 1)).sort(1, descending=True)
    truth = masks.gather(1, order)
    total = truth.sum(1, keepdim=True)
    jaccard = 1 - (total - truth.cumsum(1)) / (total + (1 - truth).cumsum(1))  # union >= 1 from the first pixel
    weights = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], 1)
    return (F.relu(errors) * weights).sum(1).mean()


def bce_loss(logits, masks):
    return F.binary_cross_entropy_with_logits(logits.float(), masks.float())


def bce_dice_loss(logits, masks):
    return bce_loss(logits, masks) + soft_dice_loss(logits, masks)


def bce_lovasz_loss(logits, masks):
    return bce_loss(logits, masks) + lovasz_hinge_loss(logits, masks)


# train.py --loss NAME: a new loss is one more entry here
LOSSES = {"bce": bce_loss, "iou": soft_iou_loss, "bce+dice": bce_dice_loss, "bce+lovasz": bce_lovasz_loss}

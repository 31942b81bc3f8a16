"""Training-set augmentation on uint8 tensors: fixed flipped and rotated copies made once (augment), and random
rotation, zoom and colour jitter drawn for every batch (draw_distortions + random_distort, torch only, so they
run on the training device)."""
import math

import torch
import torch.nn.functional as F


def augment(images, masks, copies, seed):
    """The originals plus `copies` copies of each, every copy with a seeded random horizontal
    flip and rotation by a multiple of 90 degrees (exact on pixels, so masks stay binary)."""
    g = torch.Generator().manual_seed(seed)
    out_images, out_masks = [images], [masks]
    for _ in range(copies):
        flip = torch.randint(0, 2, (len(images),), generator=g)
        turns = torch.randint(0, 4, (len(images),), generator=g)
        new_images, new_masks = images.clone(), masks.clone()
        for f in (0, 1):
            for k in range(4):
                idx = ((flip == f) & (turns == k)).nonzero().flatten()
                if len(idx) == 0:
                    continue
                im, mk = images[idx], masks[idx]
                if f:
                    im, mk = im.flip(-1), mk.flip(-1)
                new_images[idx] = im.rot90(k, (-2, -1))
                new_masks[idx] = mk.rot90(k, (-2, -1))
        out_images.append(new_images)
        out_masks.append(new_masks)
    return torch.cat(out_images), torch.cat(out_masks)


def draw_distortions(n, generator):
    """Uniform draws [5, n] in 0..1 for random_distort() of n images, from a CPU generator so that runs repeat on
    any device: rotation, zoom, brightness, contrast, saturation."""
    return torch.stack([torch.rand(n, generator=generator) for _ in range(5)])


def random_distort(images, masks, draws, max_angle=180.0, max_zoom=1.25, jitter=0.2):
    """Per image: a random rotation (any angle), zoom (1/max_zoom..max_zoom) and brightness, contrast and
    saturation change (x 1 +- jitter), from draw_distortions(); image and mask share the geometry, corners are
    mirrored in. Images [N,3,S,S] 0..255 and masks [N,1,S,S] {0,1} in; float images 0..255 and float masks {0,1}
    out (masks resampled bilinearly, thresholded at 0.5)."""
    n = len(images)

    def uniform(low, high, u):
        return low + (high - low) * u

    angle = uniform(-max_angle, max_angle, draws[0]) * math.pi / 180
    zoom = uniform(-math.log(max_zoom), math.log(max_zoom), draws[1]).exp()
    cos, sin, zero = angle.cos() / zoom, angle.sin() / zoom, torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)

    def warp(x):
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    images, masks = warp(images), (warp(masks) > 0.5).float()
    brightness, contrast, saturation = (uniform(1 - jitter, 1 + jitter, u).view(n, 1, 1, 1) for u in draws[2:])
    images = images * brightness
    mean = images.mean((1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean
    gray = (images * images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    images = (images - gray) * saturation + gray
    return images.clamp(0, 255), masks

"""Training-set augmentation on uint8 tensors, two paths; a new augmentation goes into the one its runs take.

- fixed_copies(): every run, the report's experiments included. `--aug-copies` flipped and turned copies of each
  training image, made once before training (data.load_data calls it); a new flip goes into FLIPS.
- for_epoch(): only with `--random-aug` (make best, make adapt). Every batch drawn anew each epoch: random rotation,
  zoom and colour jitter (random_distort) and, for a `--shift-aug` share of the images, the kinds of shift the
  robustness suite measures (random_shift: zoom out, stretch, colour casts, gamma, blur, noise, hair). Torch only,
  so it runs on the training device.

applied() says in words which of these a run's flags apply: train.py prints it and writes it into config.json, so
an edit to a function the run never calls shows as such.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

# random_shift's ranges: each covers the matching shift of perturbations.py with some margin
SHIFT_ZOOM = (0.55, 1.4)  # scale of the content; below 1 the image shrinks inside a border of its edge colour
SHIFT_ASPECT = 1.35  # width:height stretched by up to this either way
SHIFT_JITTER = 0.3  # brightness, contrast and saturation x 1 +- this
SHIFT_GAMMA = (0.65, 1.5)
SHIFT_CAST = 0.25  # each colour channel x 1 +- this: white balance
SHIFT_BLUR = 0.012  # Gaussian sigma at full strength, of the image side (1.5 px at 128)
SHIFT_NOISE = 10.0  # standard deviation at full strength, 0..255 units
HAIR_SHADES = (10, 60)  # red channel of a hair; green and blue are 3/4 and 1/2 of it (dark brown)
# The rows of draw_distortions(), each one uniform draw per image: what it decides
DISTORT_ROWS = 5  # random_distort: rotation, zoom, brightness, contrast, saturation
GEOMETRY, HAIR_PICK, HAIR_ON, HAIR_SHADE = slice(0, 3), 3, 4, 5  # random_shift: rotation, zoom, stretch; hair
COLOUR, BLUR, NOISE_SEED, NOISE, SHIFTED = slice(6, 13), 13, 14, 15, 16  # random_mix: which image is shifted
SHIFT_ROWS = 17
HAIR_OVERLAYS = 64  # random_shift: hair pictures drawn anew each epoch, one picked per image
# fixed_copies: each copy of an image is one of these, then turned by 0-3 quarter turns (exact on pixels, so masks
# stay binary). A horizontal flip and the turns already give all eight symmetries of a square, a vertical flip
# among them (a horizontal flip turned twice). A new one goes here: config.json's augmentation line names these.
FLIPS = {"unflipped": lambda x: x, "flipped horizontally": lambda x: x.flip(-1)}
QUARTER_TURNS = 4


def fixed_copies(images, masks, copies, seed):
    """The originals plus `copies` copies of each, every copy one of FLIPS then QUARTER_TURNS, both drawn at
    random from `seed`."""
    if copies == 0:  # the originals as they are (memory-mapped ones stay on disk)
        return images, masks
    g = torch.Generator().manual_seed(seed)
    out_images, out_masks = [images], [masks]
    for _ in range(copies):
        flip = torch.randint(0, len(FLIPS), (len(images),), generator=g)
        turns = torch.randint(0, QUARTER_TURNS, (len(images),), generator=g)
        new_images, new_masks = images.clone(), masks.clone()
        for f, flipped in enumerate(FLIPS.values()):
            for k in range(QUARTER_TURNS):
                idx = ((flip == f) & (turns == k)).nonzero().flatten()
                if len(idx) > 0:
                    new_images[idx] = flipped(images[idx]).rot90(k, (-2, -1))
                    new_masks[idx] = flipped(masks[idx]).rot90(k, (-2, -1))
        out_images.append(new_images)
        out_masks.append(new_masks)
    return torch.cat(out_images), torch.cat(out_masks)


def applied(copies, random, shift_share):
    """The augmentations a run with these flags (--aug-copies, --random-aug, --shift-aug) applies, one line each;
    copies: --aug-copies for each --data-dir folder."""
    made = f"made once, each {' or '.join(FLIPS)}, then turned by 0-{QUARTER_TURNS - 1} quarter turns"
    n = copies[0]
    lines = [f"fixed_copies: {', '.join(map(str, copies))} copies of each training image of the --data-dir folders "
             f"in turn, {made}" if len(set(copies)) > 1
             else f"fixed_copies: {n} cop{'y' if n == 1 else 'ies'} of each training image, {made}" if n
             else "fixed_copies: none (--aug-copies 0)"]
    if not random:
        return lines + ["for_epoch: off (no --random-aug): random_distort and random_shift are not called"]
    drawn = (f"random_shift on {shift_share:.0%} of the images, random_distort on the others" if shift_share
             else "random_distort")
    return lines + [f"for_epoch: every batch augmented anew each epoch: {drawn}"]


def for_epoch(batch_sizes, generator, seed, image_size, device, random=True, shift_share=0.0):
    """augment_batch(images, masks, first, end): the batch at positions first..end of the epoch's order,
    augmented (random=False: as it is). Every random choice of the epoch is drawn here at once, from `generator` in
    batch order, and copied to the device once; the hair pictures (shift_share > 0) from `seed`. shift_share: the
    share of the images under random_shift, the others under random_distort."""
    if not random:
        return lambda images, masks, first, end: (images, masks)
    draws = torch.cat([draw_distortions(n, generator, shift_share > 0) for n in batch_sizes], 1).to(device)
    hairs = hair_overlays(HAIR_OVERLAYS, image_size, seed).to(device) if shift_share else None

    def augment_batch(images, masks, first, end):
        if shift_share:
            return random_mix(images, masks, draws[:, first:end], hairs, shift_share)
        return random_distort(images, masks, draws[:, first:end])
    return augment_batch


def draw_distortions(n, generator, shifts=False):
    """Uniform draws in 0..1 for n images, from a CPU generator so that runs repeat on any device: [5, n] for
    random_distort (rotation, zoom, brightness, contrast, saturation), [17, n] for random_mix (shifts=True)."""
    return torch.stack([torch.rand(n, generator=generator) for _ in range(SHIFT_ROWS if shifts else DISTORT_ROWS)])


def random_distort(images, masks, draws, max_angle=180.0, max_zoom=1.25, jitter=0.2):
    """Per image: a random rotation (any angle), zoom (1/max_zoom..max_zoom) and brightness, contrast and
    saturation change (x 1 +- jitter), from draw_distortions(); image and mask share the geometry, corners are
    mirrored in. Images [N,3,S,S] 0..255 and masks [N,1,S,S] {0,1} in; float images 0..255 and float masks {0,1}
    out (masks resampled bilinearly, thresholded at 0.5)."""
    n = len(images)
    angle = uniform(-max_angle, max_angle, draws[0]) * math.pi / 180
    zoom = uniform(-math.log(max_zoom), math.log(max_zoom), draws[1]).exp()
    cos, sin, zero = angle.cos() / zoom, angle.sin() / zoom, torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)

    def warp(x):
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    images, masks = warp(images), (warp(masks) > 0.5).float()
    factors = (uniform(1 - jitter, 1 + jitter, u).view(n, 1, 1, 1) for u in draws[2:])
    return scale_colour(images, *factors).clamp(0, 255), masks


def scale_colour(images, brightness, contrast, saturation):
    """Float images [N,3,S,S] with brightness, contrast (about each image's mean) and saturation (about its grey)
    scaled by per-image factors [N,1,1,1]."""
    images = images * brightness
    mean = images.mean((1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean
    gray = (images * images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return (images - gray) * saturation + gray


def hair_overlays(count, size, seed):
    """[count, 1, size, size] float opacity 0..1 of random hair: 1-12 dark curves (quadratic Bezier between random
    points) each, drawn at twice the size and averaged down, so thin hairs come out partly transparent."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 50)[:, None]
    overlays = []
    for _ in range(count):
        canvas = Image.new("L", (2 * size, 2 * size))
        draw = ImageDraw.Draw(canvas)
        for _ in range(rng.integers(1, 13)):
            p0, p1, p2 = rng.uniform(-0.1, 1.1, (3, 2)) * 2 * size
            curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
            draw.line([tuple(p) for p in curve], fill=255, width=int(rng.integers(1, 4)))
        overlays.append(np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32) / 255)
    return torch.from_numpy(np.stack(overlays))[:, None]


def random_shift(images, masks, draws, hairs):
    """Per image, at random strengths: rotation (any angle), zoom (SHIFT_ZOOM, the border filled with the image's
    edge colour as the suite does), stretch, hair from `hairs` (hair_overlays) on half the images, brightness,
    contrast, saturation, gamma and per-channel gains, and blur and noise on half the images each. Draws [17, N] from
    draw_distortions(N, g, shifts=True). Images [N,3,S,S] 0..255 and masks [N,1,S,S] {0,1} in; float images 0..255
    and float masks {0,1} out."""
    n, size = len(images), images.shape[-1]
    images, masks = warp_into_edge_colour(images.float(), masks.float(), *draws[GEOMETRY])
    masks = (masks > 0.5).float()
    picked = hairs[(draws[HAIR_PICK] * len(hairs)).long().clamp(max=len(hairs) - 1)]
    hair = picked * (draws[HAIR_ON] < 0.5).view(n, 1, 1, 1)
    brown = images.new_tensor([1, 0.75, 0.5]).view(1, 3, 1, 1)
    shade = uniform(*HAIR_SHADES, draws[HAIR_SHADE]).view(n, 1, 1, 1) * brown
    images = images * (1 - hair) + shade * hair
    images = jitter_colour(images, draws[COLOUR])
    blur = sometimes(draws[BLUR])
    chosen = blur.nonzero().flatten()  # blurring only those is several times faster on a CPU than blurring all
    blurred = gaussian_blur(images[chosen], SHIFT_BLUR * size)
    images = images.index_copy(0, chosen, torch.lerp(images[chosen], blurred, blur[chosen].view(-1, 1, 1, 1)))
    noise = sometimes(draws[NOISE])
    chosen = noise.nonzero().flatten()
    seeded = torch.Generator(images.device).manual_seed(int(draws[NOISE_SEED, 0] * 2 ** 31))
    field = torch.randn((len(chosen),) + images.shape[1:], generator=seeded, device=images.device)
    images = images.index_add(0, chosen, field * (SHIFT_NOISE * noise[chosen]).view(-1, 1, 1, 1))
    return images.clamp(0, 255), masks


def random_mix(images, masks, draws, hairs, share):
    """random_shift on a `share` of the images (those with draws[SHIFTED] < share), random_distort on the others:
    the wider shifts without losing sight of the clean images. Arguments and results as random_shift's."""
    wide = draws[SHIFTED] < share
    out_images, out_masks = images.float(), masks.float()
    for chosen, distort in ((wide, lambda i, m, d: random_shift(i, m, d, hairs)),
                            (~wide, lambda i, m, d: random_distort(i, m, d[:DISTORT_ROWS]))):
        index = chosen.nonzero().flatten()
        if len(index):
            out_images[index], out_masks[index] = distort(images[index], masks[index], draws[:, index])
    return out_images, out_masks


def uniform(low, high, u):
    return low + (high - low) * u


def log_uniform(low, high, u):
    return uniform(math.log(low), math.log(high), u).exp()


def sometimes(u):
    """Half of the draws u (0..1) give 0, the other half a strength uniform in 0..1."""
    return (2 * u - 1).clamp(min=0)


def warp_into_edge_colour(images, masks, angle_u, zoom_u, aspect_u):
    """Rotation, zoom and stretch (float images [N,3,S,S], masks [N,1,S,S]); what comes in from outside the image
    takes the mean colour of its outer 3-pixel frame, and no lesion."""
    angle = uniform(-math.pi, math.pi, angle_u)
    zoom, aspect = log_uniform(*SHIFT_ZOOM, zoom_u), log_uniform(1 / SHIFT_ASPECT, SHIFT_ASPECT, aspect_u).sqrt()
    sx, sy = 1 / (zoom * aspect), aspect / zoom
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos * sx, -sin * sy, zero], 1), torch.stack([sin * sx, cos * sy, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    frame = torch.ones_like(masks)
    frame[..., 3:-3, 3:-3] = 0
    edge = (images * frame).sum((2, 3), keepdim=True) / frame.sum((2, 3), keepdim=True)
    inside, images, masks = (F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
                             for x in (torch.ones_like(masks), images, masks))
    return images + (1 - inside) * edge, masks


def jitter_colour(images, draws):
    """Brightness, contrast, saturation, gamma and per-channel gains (a colour cast) from draws [7, N]."""
    n = len(images)
    factors = (uniform(1 - SHIFT_JITTER, 1 + SHIFT_JITTER, u).view(n, 1, 1, 1) for u in draws[:3])
    images = scale_colour(images, *factors).clamp(0, 255)
    images = 255 * (images / 255) ** log_uniform(*SHIFT_GAMMA, draws[3]).view(n, 1, 1, 1)
    gains = uniform(1 - SHIFT_CAST, 1 + SHIFT_CAST, draws[4:7].T)
    return images * gains.view(n, 3, 1, 1)


def gaussian_blur(images, sigma):
    """Images [N,C,S,S] blurred by a Gaussian of this sigma (pixels), edges replicated: B @ image @ B^T with a
    banded [S,S] matrix B (on a CPU twice as fast as a depthwise convolution)."""
    size, radius = images.shape[-1], max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=images.device)
    weights = (-offsets.to(images.dtype) ** 2 / (2 * sigma ** 2)).exp()
    columns = (torch.arange(size, device=images.device)[:, None] + offsets).clamp(0, size - 1)
    band = images.new_zeros(size, size).scatter_add_(1, columns, (weights / weights.sum()).expand(size, -1))
    return band @ images @ band.T

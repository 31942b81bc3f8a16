import math

import torch

import augment


def test_augment_keeps_image_and_mask_aligned_and_binary():
    torch.manual_seed(0)
    masks = (torch.rand(20, 1, 16, 16) > 0.6).to(torch.uint8)
    # channel 0 of each image encodes its mask; the other channels are noise
    images = torch.cat([masks * 200, torch.randint(0, 255, (20, 2, 16, 16), dtype=torch.uint8)], 1)
    aug_images, aug_masks = augment.fixed_copies(images, masks, copies=3, seed=0)
    assert aug_images.shape == (80, 3, 16, 16) and aug_masks.shape == (80, 1, 16, 16)
    assert torch.equal(aug_images[:20], images)  # originals first
    assert torch.equal((aug_images[:, :1] == 200).to(torch.uint8), aug_masks)
    assert set(aug_masks.unique().tolist()) <= {0, 1}
    assert not torch.equal(aug_masks[20:40], masks)  # copies are transformed
    again = augment.fixed_copies(images, masks, copies=3, seed=0)
    assert torch.equal(again[0], aug_images)  # seeded


def test_random_distort_moves_image_and_mask_together():
    torch.manual_seed(0)
    masks = (torch.rand(8, 1, 32, 32) > 0.5).to(torch.uint8)
    images = torch.cat([masks * 200, torch.randint(0, 255, (8, 2, 32, 32), dtype=torch.uint8)], 1)
    # geometry only: bilinear resampling is linear, so channel 0 (200 x mask) crosses 100 where the mask crosses 0.5
    def draws(seed):
        return augment.draw_distortions(8, torch.Generator().manual_seed(seed))
    out_images, out_masks = augment.random_distort(images, masks, draws(1), jitter=0)
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert torch.equal((out_images[:, :1] > 100).float(), out_masks)
    assert not torch.equal(out_masks, masks.float())
    # with colour jitter: values stay in range, masks binary, and the same generator seed repeats the result
    a = augment.random_distort(images, masks, draws(2))
    b = augment.random_distort(images, masks, draws(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert 0 <= a[0].min() and a[0].max() <= 255 and set(a[1].unique().tolist()) <= {0.0, 1.0}
    # no rotation, zoom or jitter: the identity
    same = augment.random_distort(images, masks, draws(3), max_angle=0, max_zoom=1, jitter=0)
    assert torch.allclose(same[0], images.float(), atol=1e-3) and torch.equal(same[1], masks.float())


def neutral_shift_draws(n, seed, zoom=1.0):
    """random_shift draws for n images that rotate, stretch and colour nothing, with no hair, blur or noise, and
    zoom by `zoom`; seeded random draws elsewhere."""
    d = augment.draw_distortions(n, torch.Generator().manual_seed(seed), shifts=True)
    low, high = (math.log(v) for v in augment.SHIFT_ZOOM)
    d[0], d[1], d[2] = 0.5, (math.log(zoom) - low) / (high - low), 0.5  # angle 0, zoom, aspect 1
    d[4], d[13], d[15] = 0.9, 0.0, 0.0  # hair only below 0.5; blur and noise only above 0.5
    d[6:13] = 0.5  # brightness, contrast, saturation, gains x1
    low, high = (math.log(v) for v in augment.SHIFT_GAMMA)
    d[9] = -low / (high - low)  # gamma 1
    return d


def lesions(n, size, seed):
    """uint8 images [n,3,S,S] whose channel 0 is 200 inside a random blob mask [n,1,S,S] and 0 outside; the blobs
    stay off the outer frame, so the edge colour of channel 0 is 0."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = size / 2 + (torch.rand(n, 2, generator=g) - 0.5) * size / 4
    radius = size * (0.15 + 0.15 * torch.rand(n, generator=g))
    masks = (((yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2).sqrt()
             < radius[:, None, None]).to(torch.uint8)[:, None]
    images = torch.cat([masks * 200, torch.randint(0, 255, (n, 2, size, size), generator=g, dtype=torch.uint8)], 1)
    return images, masks


def test_random_shift_moves_image_and_mask_together():
    images, masks = lesions(16, 64, seed=0)
    hairs = augment.hair_overlays(8, 64, seed=0)
    draws = neutral_shift_draws(16, 1)
    draws[:3] = torch.rand(3, 16, generator=torch.Generator().manual_seed(1))  # rotation, zoom, stretch at random
    out_images, out_masks = augment.random_shift(images, masks, draws, hairs)
    # bilinear resampling is linear and the border of channel 0 is 0, so it crosses 100 where the mask crosses 0.5
    assert torch.equal((out_images[:, :1] > 100).float(), out_masks)
    assert not torch.equal(out_masks, masks.float())


def test_random_shift_zooms_out_into_the_edge_colour():
    images, masks = lesions(4, 64, seed=2)
    images[:, 1:] = 90  # a uniform skin colour in channels 1 and 2 ...
    images[:, 1:, :3] = 30  # ... but a darker top frame: the edge colour is the frame's mean, not the corner's
    frame = torch.ones(64, 64)
    frame[3:-3, 3:-3] = 0
    edge = (images[:, 1:].float() * frame).sum((2, 3)) / frame.sum()
    out_images, out_masks = augment.random_shift(images, masks, neutral_shift_draws(4, 3, zoom=0.55),
                                                 augment.hair_overlays(2, 64, 0))
    assert torch.allclose(out_images[:, 1:, 0, 0], edge, atol=1e-3)  # the corner is new: the edge colour
    area = out_masks.sum((1, 2, 3)) / masks.sum((1, 2, 3))
    assert torch.allclose(area, torch.full_like(area, 0.55 ** 2), rtol=0.1)
    assert out_masks[:, :, :8].sum() == 0  # no lesion comes in from outside


def test_random_shift_changes_pixels_but_not_the_mask_and_repeats():
    images, masks = lesions(16, 64, seed=4)
    hairs = augment.hair_overlays(8, 64, seed=0)
    draws = augment.draw_distortions(16, torch.Generator().manual_seed(5), shifts=True)
    identity = neutral_shift_draws(16, 5)
    draws[:3] = identity[:3]  # no geometry; hair, colour, blur and noise at random
    a_images, a_masks = augment.random_shift(images, masks, draws, hairs)
    b_images, b_masks = augment.random_shift(images, masks, draws.clone(), hairs)
    assert torch.equal(a_masks, masks.float()) and torch.equal(a_images, b_images)
    assert 0 <= a_images.min() and a_images.max() <= 255
    assert (a_images - images.float()).abs().mean((1, 2, 3)).min() > 1  # every image changed
    plain, _ = augment.random_shift(images, masks, identity, hairs)
    assert torch.allclose(plain, images.float(), atol=1e-3)  # and neutral draws change nothing


def test_random_mix_shifts_a_share_and_distorts_the_rest():
    images, masks = lesions(32, 32, seed=6)
    hairs = augment.hair_overlays(4, 32, seed=0)
    draws = augment.draw_distortions(32, torch.Generator().manual_seed(7), shifts=True)
    wide = draws[16] < 0.5
    mixed_images, mixed_masks = augment.random_mix(images, masks, draws, hairs, share=0.5)
    shifted = augment.random_shift(images[wide], masks[wide], draws[:, wide], hairs)
    distorted = augment.random_distort(images[~wide], masks[~wide], draws[:5, ~wide])
    assert 0 < wide.sum() < 32
    assert torch.equal(mixed_images[wide], shifted[0]) and torch.equal(mixed_masks[wide], shifted[1])
    assert torch.equal(mixed_images[~wide], distorted[0]) and torch.equal(mixed_masks[~wide], distorted[1])
    assert torch.equal(augment.random_mix(images, masks, draws, hairs, share=0)[0],
                       augment.random_distort(images, masks, draws[:5])[0])


def test_gaussian_blur_matches_a_convolution_with_replicated_edges():
    images = torch.rand(2, 3, 20, 20) * 255
    sigma, radius = 1.5, 5
    x = torch.arange(-radius, radius + 1.0)
    k = (-x ** 2 / (2 * sigma ** 2)).exp()
    k = (k / k.sum())
    padded = torch.nn.functional.pad(images, (radius,) * 4, mode="replicate")
    reference = torch.nn.functional.conv2d(padded, (k[:, None] * k[None]).expand(3, 1, -1, -1), groups=3)
    assert torch.allclose(augment.gaussian_blur(images, sigma), reference, atol=1e-3)


def test_hair_overlays_are_thin_partly_transparent_and_seeded():
    hairs = augment.hair_overlays(16, 64, seed=0)
    assert hairs.shape == (16, 1, 64, 64) and 0 <= hairs.min() and hairs.max() <= 1
    assert ((hairs > 0) & (hairs < 1)).any()  # averaged down from twice the size
    assert 0 < hairs.mean() < 0.2  # curves, not fills
    assert torch.equal(hairs, augment.hair_overlays(16, 64, seed=0))
    assert not torch.equal(hairs, augment.hair_overlays(16, 64, seed=1))

"""The shifts of the robustness suite (robustness.py), each at one fixed strength: what another dermatoscope,
camera or clinic does to an image. Each takes an RGB uint8 image [H,W,3] at its own size, its boolean mask [H,W]
and a numpy Generator, and returns both; geometry moves the mask alike, colour and noise leave it as it is.
Strengths are relative to the image size, so a 256-pixel and a 4,000-pixel photo get the same look.
score_perturbations() scores a model under them (robustness.py, release.py)."""
import io

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from lib import readers
from lib.metrics import full_resolution_metrics
from lib.scoring import predict_probs

HUE_SHIFT = 0.05  # of the colour circle (18 degrees)
BLUR = 0.01  # Gaussian radius, of the shorter side (2.6 px at 256 px)
NOISE = 12.0  # sensor noise: standard deviation in 0..255 units
HAIRS, HAIR_WIDTH = 8, 0.005  # dark curves drawn across the image; width of the shorter side


def resized(image, mask, width, height):
    """Image (bilinear) and mask (nearest, so it stays binary) at a new size."""
    mask = Image.fromarray(mask).resize((width, height), Image.NEAREST)
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR)), np.asarray(mask)


def edge_colour(image):
    """The mean colour of the image's outer 2% frame: skin, as a wider field of view would show more of it."""
    h, w = image.shape[:2]
    k = max(1, round(0.02 * min(h, w)))
    frame = np.concatenate([image[:k].reshape(-1, 3), image[-k:].reshape(-1, 3),
                            image[:, :k].reshape(-1, 3), image[:, -k:].reshape(-1, 3)])
    return tuple(int(v) for v in frame.mean(0).round())


def stretch(aspect):
    """The image resized to width:height = aspect, its height kept (a 4:3 camera frame)."""
    def apply(image, mask, rng):
        return resized(image, mask, round(image.shape[0] * aspect), image.shape[0])
    return apply


def zoom_out(scale):
    """The image shrunk by scale into a frame of its own size, the new border filled with its edge colour (not
    mirrored: a mirror would copy lesions that touch the border)."""
    def apply(image, mask, rng):
        h, w = mask.shape
        small, small_mask = resized(image, mask, max(1, round(w * scale)), max(1, round(h * scale)))
        canvas, canvas_mask = np.empty_like(image), np.zeros_like(mask)
        canvas[:] = edge_colour(image)
        top, left = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
        canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
        canvas_mask[top:top + small.shape[0], left:left + small.shape[1]] = small_mask
        return canvas, canvas_mask
    return apply


def zoom_in(scale):
    """The central 1/scale of the image, enlarged back to the image's size."""
    def apply(image, mask, rng):
        h, w = mask.shape
        ch, cw = max(1, round(h / scale)), max(1, round(w / scale))
        top, left = (h - ch) // 2, (w - cw) // 2
        return resized(image[top:top + ch, left:left + cw], mask[top:top + ch, left:left + cw], w, h)
    return apply


def rotate(degrees):
    """Rotation about the centre; the corners it uncovers take the edge colour."""
    def apply(image, mask, rng):
        turned = Image.fromarray(image).rotate(degrees, Image.BILINEAR, fillcolor=edge_colour(image))
        return np.asarray(turned), np.asarray(Image.fromarray(mask).rotate(degrees, Image.NEAREST, fillcolor=0))
    return apply


def colour(fn):
    """A perturbation that maps the pixel values (float 0..255 [H,W,3]) and leaves the mask."""
    def apply(image, mask, rng):
        return fn(image.astype(np.float64), rng).clip(0, 255).round().astype(np.uint8), mask
    return apply


def contrast(factor):
    return colour(lambda x, rng: (x - x.mean()) * factor + x.mean())


def gamma(g):
    return colour(lambda x, rng: 255 * (x / 255) ** g)


def cast(r, g, b):
    """A colour cast: each channel scaled (a blue or a yellow white balance)."""
    return colour(lambda x, rng: x * np.array([r, g, b]))


def hue_shift(image, mask, rng):
    hsv = np.array(Image.fromarray(image).convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(int) + round(HUE_SHIFT * 256)) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB")), mask


def blur(image, mask, rng):
    radius = BLUR * min(mask.shape)
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius))), mask


def jpeg(quality):
    def apply(image, mask, rng):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        return np.asarray(Image.open(buffer).convert("RGB")), mask
    return apply


def hair(image, mask, rng):
    """HAIRS thin dark curves (quadratic Bezier), each from one random edge point to another, across the image."""
    h, w = mask.shape
    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    t = np.linspace(0, 1, 50)[:, None]
    for _ in range(HAIRS):
        p0, p1, p2 = rng.uniform(0, 1, (3, 2)) * [w, h]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        shade = int(rng.integers(10, 60))
        draw.line([tuple(p) for p in curve], fill=(shade, shade * 3 // 4, shade // 2),
                  width=max(1, round(HAIR_WIDTH * min(h, w))))
    return np.asarray(im), mask


PERTURBATIONS = {
    "clean": lambda image, mask, rng: (image, mask),
    "aspect 4:3": stretch(4 / 3),
    "aspect 3:4": stretch(3 / 4),
    "zoom out 0.6": zoom_out(0.6),
    "zoom in 1.4": zoom_in(1.4),
    "rotate 45": rotate(45),
    "brightness +30%": colour(lambda x, rng: x * 1.3),
    "brightness -30%": colour(lambda x, rng: x * 0.7),
    "contrast +30%": contrast(1.3),
    "contrast -30%": contrast(0.7),
    "gamma 0.7": gamma(0.7),
    "gamma 1.4": gamma(1.4),
    "hue +18 deg": hue_shift,
    "blue cast": cast(0.85, 0.95, 1.2),
    "yellow cast": cast(1.1, 1.05, 0.75),
    "blur": blur,
    "noise": colour(lambda x, rng: x + rng.normal(0, NOISE, x.shape)),
    "jpeg 20": jpeg(20),
    "hair": hair,
}


def shift(image_path, mask_path, name, seed, n):
    """(RGB uint8 [H,W,3], boolean mask [H,W]) of image n of a split under one perturbation, at its own size; the
    random draws come from (seed, n, the perturbation's position), so they repeat in any order."""
    rng = np.random.default_rng([seed, n, list(PERTURBATIONS).index(name)])
    return PERTURBATIONS[name](readers.read_full_image(image_path), readers.read_binary_mask(mask_path), rng)


def perturbed(image_paths, mask_paths, name, size, seed):
    """(uint8 images [N,3,size,size], boolean masks [H,W] at their shifted own size) of one perturbation."""
    images, masks = [], []
    for n, (image_path, mask_path) in enumerate(zip(image_paths, mask_paths)):
        image, mask = shift(image_path, mask_path, name, seed, n)
        images.append(np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)))
        masks.append(mask)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), masks


def score_perturbations(model, split, size, names, seed, device, amp=True, batch_size=64, tta=True,
                        largest_component=True):
    """[{'perturbation', 'iou', 'dice', 'iou_drop', 'dice_drop'}], one row per perturbation in `names` ('clean'
    first): a model's per-image means at each mask's own size on a load_split() result, every image shifted."""
    rows, key = [], "lcc_" if largest_component else ""
    for name in tqdm(names, desc="perturbations", disable=None):
        images, masks = perturbed(split["image_paths"], split["mask_paths"], name, size, seed)
        probs = predict_probs(model, images, batch_size, device, amp, tta)
        metrics = full_resolution_metrics({"": probs}, masks)[key][0]
        rows.append({"perturbation": name, "iou": metrics["iou"].mean().item(), "dice": metrics["dice"].mean().item()})
    clean = rows[0]
    for row in rows:
        row["iou_drop"], row["dice_drop"] = clean["iou"] - row["iou"], clean["dice"] - row["dice"]
    return rows


def summarize(rows):
    """The clean scores, the mean IoU drop over the shifts and the worst shift of score_perturbations() rows."""
    shifted = rows[1:]
    worst = max(shifted, key=lambda r: r["iou_drop"])
    return {"clean_iou": rows[0]["iou"], "clean_dice": rows[0]["dice"],
            "mean_iou_drop": float(np.mean([r["iou_drop"] for r in shifted])),
            "worst": worst["perturbation"], "worst_iou_drop": worst["iou_drop"]}

"""A small fake data set in the ISIC 2016 layout, for the demo and the tests."""
from pathlib import Path

import numpy as np
from PIL import Image

from lib.layouts import MASK_SUFFIX, SPLITS


def write_synthetic(data_dir, n_train=48, n_test=16, seed=0):
    """A fake ISIC data set in the official layout: skin-coloured JPEGs of varied sizes, each with one dark
    elliptical lesion, and {0,255} PNG masks. Lesion i covers a known area (returned: id -> area fraction)."""
    rng = np.random.default_rng(seed)
    areas = {}
    for split, n in (("train", n_train), ("test", n_test)):
        image_dir, mask_dir = (Path(data_dir) / f for f in SPLITS[split])
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image_id = f"ISIC_{len(areas):07d}"
            w, h = int(rng.integers(96, 200)), int(rng.integers(80, 160))
            yy, xx = np.mgrid[0:h, 0:w]
            cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
            rx, ry = rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.3) * h
            mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            skin = np.array([220, 170, 140]) + rng.normal(0, 10, 3)
            lesion = np.array([110, 70, 50]) + rng.normal(0, 10, 3)
            image = np.where(mask[..., None], lesion, skin) + rng.normal(0, 12, (h, w, 3))
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(image_dir / f"{image_id}.jpg", quality=90)
            Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / f"{image_id}{MASK_SUFFIX}")
            areas[image_id] = float(mask.mean())
    return areas

"""ISIC 2016 Part 1 data: find the files, decode them once into a uint8 cache,
split off validation images, and expand the training set with flips and rotations.

    python data.py --download --data-dir data     # fetch the four official archives
    python data.py --synthetic runs/demo-data      # write a small fake data set in the same layout
"""
import argparse
import hashlib
import math
import os
import urllib.request
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm import tqdm

import runfiles
from errors import DataError

URL = "https://isic-challenge-data.s3.amazonaws.com/2016/"
SPLITS = {
    "train": ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
    "test": ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
}
# The folder layouts --data-dir accepts, by name: {split: (image folder, mask folder)}, tried in this order.
LAYOUTS = {"ISIC 2016 Part 1": SPLITS,
           "plain folders": {"train": ("train/images", "train/masks"), "test": ("test/images", "test/masks")}}
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
MASK_EXTS = (".png", ".bmp", ".gif", ".tif", ".tiff")
MASK_NAME_SUFFIXES = ("_Segmentation", "_segmentation", "_mask")  # a mask's stem: the image's, with or without one
MASK_SUFFIX = "_Segmentation.png"  # what the ISIC 2016 archives and write_synthetic() use
CACHE_VERSION = 2  # bump when decoding changes, so old caches are rebuilt (2: 16-bit images, EXIF orientation)
ORIENTATION = 0x0112  # the EXIF tag


def expected_layout(data_dir):
    layouts = "\n".join(f"  {name}: " + ", ".join(f"{data_dir}/{f}/" for pair in splits.values() for f in pair)
                         for name, splits in LAYOUTS.items())
    return (f"Accepted layouts:\n{layouts}\nImages are .jpg or .png; a mask has its image's name, with or without "
            f"a {', '.join(MASK_NAME_SUFFIXES)} suffix, in {', '.join(MASK_EXTS)} (ISIC: ISIC_XXXXXXX.jpg and "
            "ISIC_XXXXXXX_Segmentation.png).\nRun `make data` to download ISIC 2016, or pass DATA_DIR=/path/to/data "
            "(--data-dir).")


def detect_layout(data_dir):
    """The name of the first layout in LAYOUTS that data_dir holds any folder of; DataError if none."""
    for name, splits in LAYOUTS.items():
        if any((Path(data_dir) / f).is_dir() for pair in splits.values() for f in pair):
            return name
    problem = "Missing folder(s): " + str(data_dir) if not Path(data_dir).is_dir() else (
        f"{data_dir} holds none of the accepted layouts")
    raise DataError(problem + "\n" + expected_layout(data_dir))


def mask_id(path):
    """The id of the image a mask file belongs to (its stem without a MASK_NAME_SUFFIXES suffix), or None for a
    file that is no mask."""
    path = Path(path)
    if path.suffix.lower() not in MASK_EXTS or is_hidden(path):
        return None
    return next((path.stem[:-len(s)] for s in MASK_NAME_SUFFIXES if path.stem.endswith(s)), path.stem)


def find_pairs(data_dir, split):
    """[(id, image_path, mask_path)] for one split, sorted by id; raises DataError listing every problem."""
    pairs, problems = pair_files(data_dir, split)
    raise_problems(data_dir, problems)
    return pairs


def pair_files(data_dir, split):
    """([(id, image_path, mask_path)] sorted by id, [problem sentences]) for one split: images without masks and
    masks without images are listed, not raised, so that load_split() reports them with the unreadable files in
    one message. A missing folder raises DataError at once. Hidden files (._name.jpg) are skipped."""
    data_dir = Path(data_dir)
    image_dir, mask_dir = (data_dir / f for f in LAYOUTS[detect_layout(data_dir)][split])
    missing = [str(d) for d in (image_dir, mask_dir) if not d.is_dir()]
    if missing:
        raise DataError("Missing folder(s): " + ", ".join(missing) + "\n" + expected_layout(data_dir))
    images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS and not is_hidden(p)}
    masks = {i: p for p in mask_dir.iterdir() if (i := mask_id(p))}
    problems = [f"image without a mask: {images[i]} (no mask named {i}, {i}_mask, {i}_segmentation or "
                f"{i}_Segmentation in {mask_dir})"
                for i in sorted(images.keys() - masks.keys())]
    problems += [f"mask without an image: {masks[i]}" for i in sorted(masks.keys() - images.keys())]
    if not images and not masks:
        problems.append(f"the {split} split is empty: no images in {image_dir}")
    return [(i, images[i], masks[i]) for i in sorted(images.keys() & masks.keys())], problems


def is_hidden(path):
    """Dot files, such as the ._name.jpg resource files macOS leaves beside every image."""
    return Path(path).name.startswith(".")


def raise_problems(data_dir, problems):
    if problems:
        raise DataError(f"{len(problems)} problem(s) in {data_dir}:\n  " + "\n  ".join(problems))


def to_8bit_rgb(im):
    """An RGB image from any PIL mode. 16-bit and 32-bit integer and float greyscale images are scaled to 0..255
    (PIL's own convert() clips them, which turns a 16-bit image white)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 1.0 if im.mode == "F" and arr.max() <= 1 else 255.0 if arr.max() <= 255 else 65535.0
        im = Image.fromarray((arr.clip(0, top) * (255 / top)).round().astype(np.uint8))
    return im.convert("RGB")


def read_image(path, size):
    """RGB uint8 array (size, size, 3) and the original (width, height) as displayed, from any image mode; a
    camera's EXIF orientation is applied, so masks line up with the image every viewer shows."""
    with Image.open(path) as im:
        turned = im.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)  # rotated by 90 degrees
        original_size = im.size[::-1] if turned else im.size
        im.draft("RGB", (size, size))  # JPEGs decode at 1/2..1/8 scale directly: far faster for big files
        im = ImageOps.exif_transpose(im)
        return np.asarray(to_8bit_rgb(im).resize((size, size), Image.BILINEAR)), original_size


def read_full_image(path):
    """RGB uint8 array (height, width, 3) at the image's own size, turned as its EXIF orientation says."""
    with Image.open(path) as im:
        return np.array(to_8bit_rgb(ImageOps.exif_transpose(im)))


def binarize_mask(arr):
    """Lesion = 1. Accepts {0,1}, {0,255}, 16-bit and lossy (JPEG-like) masks by thresholding at half the max."""
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)
    top = arr.max()
    return arr > 0 if top <= 1 else arr > top / 2


def read_binary_mask(path):
    """Boolean array (height, width) of a mask file at its own size."""
    with Image.open(path) as im:
        im = im.convert("L") if im.mode in ("P", "PA", "LA", "1", "CMYK") else im
        return binarize_mask(np.asarray(im))


def read_mask(path, size):
    """Binary uint8 array (size, size) of 0/1, resized so it stays aligned with its image, and the original (w, h)."""
    binary = read_binary_mask(path)
    small = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)
    return (np.asarray(small) > 127).astype(np.uint8), (binary.shape[1], binary.shape[0])


def decode_pair(args):
    """(image, mask, problem) for one pair; a problem is a sentence, never an exception across processes."""
    image_path, mask_path, size = args
    try:
        image, image_size = read_image(image_path, size)
    except Exception as e:  # PIL raises many types for corrupt or non-image files
        return None, None, f"cannot read image {image_path}: {e} (replace or remove the file)"
    try:
        mask, mask_size = read_mask(mask_path, size)
    except Exception as e:
        return None, None, f"cannot read mask {mask_path}: {e} (replace or remove the file)"
    if mask_size != image_size:
        return None, None, (f"size mismatch: {image_path} is {image_size[0]}x{image_size[1]} but "
                            f"{mask_path} is {mask_size[0]}x{mask_size[1]}")
    return image, mask, None


def cache_key(pairs, size):
    """Changes when any file is added, removed, replaced or resized, or when the size changes."""
    h = hashlib.sha1(f"v{CACHE_VERSION} {size}".encode())
    for _, image_path, mask_path in pairs:
        for p in (image_path, mask_path):
            st = os.stat(p)
            h.update(f"{p.name} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def load_split(data_dir, split, size, cache_dir="cache", workers=0):
    """{'images': uint8 [N,3,S,S], 'masks': uint8 [N,1,S,S] of 0/1, 'ids', 'mask_paths'}; decoded images come
    from the cache when it is current."""
    pairs, problems = pair_files(data_dir, split)
    cache_file = Path(cache_dir) / f"{split}_{size}px_{cache_key(pairs, size)}.pt"
    mask_paths = [str(p[2]) for p in pairs]  # not cached: the data folder may move
    if cache_file.exists() and not problems:
        return {**torch.load(cache_file, weights_only=True), "mask_paths": mask_paths}
    jobs = [(image_path, mask_path, size) for _, image_path, mask_path in pairs]
    desc = f"decoding {split} images to {size}x{size}"
    if workers > 0:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(decode_pair, jobs, chunksize=8), total=len(jobs), desc=desc, disable=None))
    else:
        results = [decode_pair(j) for j in tqdm(jobs, desc=desc, disable=None)]
    raise_problems(data_dir, problems + [p for _, _, p in results if p])  # every problem of the split at once
    for (image_id, _, mask_path), (_, mask, _) in zip(pairs, results):
        if mask.min() == mask.max():
            warnings.warn(f"mask {mask_path} is all {'lesion' if mask.max() else 'background'}")
    data = {"images": torch.from_numpy(np.stack([r[0] for r in results])).permute(0, 3, 1, 2).contiguous(),
            "masks": torch.from_numpy(np.stack([r[1] for r in results]))[:, None].contiguous(),
            "ids": [p[0] for p in pairs]}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    runfiles.atomic_save(data, cache_file)
    return {**data, "mask_paths": mask_paths}


def split_indices(n, val_fraction, seed):
    """(train, val) index tensors: a seeded random split, made before any augmentation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


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


def download(data_dir):
    """Fetch and unpack the four official ISIC 2016 Part 1 archives (about 1 GB); skips what is there."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for folder in (f for pair in SPLITS.values() for f in pair):
        if (data_dir / folder).is_dir():
            continue
        archive = data_dir / f"{folder}.zip"
        if not archive.exists():
            with tqdm(unit="B", unit_scale=True, desc=archive.name) as bar:
                def hook(blocks, block_size, total):
                    bar.total = total
                    bar.update(blocks * block_size - bar.n)
                try:
                    urllib.request.urlretrieve(URL + archive.name, archive.with_suffix(".part"), hook)
                except OSError as e:
                    raise DataError(f"could not download {URL + archive.name}: {e}\nDownload and unzip the four "
                                     f"ISIC 2016 Part 1 archives into {data_dir} by hand, or point DATA_DIR "
                                     "(--data-dir) at a copy that is already there.") from None
            archive.with_suffix(".part").rename(archive)
        with zipfile.ZipFile(archive) as z:
            z.extractall(data_dir)
        archive.unlink()
    print(f"ISIC 2016 Part 1 is in {data_dir}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="where the four ISIC folders go (default: data)")
    parser.add_argument("--download", action="store_true", help="download the official archives if missing")
    parser.add_argument("--synthetic", metavar="DIR", help="write a small synthetic data set to DIR and exit")
    args = parser.parse_args()
    if args.synthetic:
        write_synthetic(args.synthetic, n_train=160, n_test=32)
        args.data_dir = args.synthetic
    elif args.download:
        download(args.data_dir)
    for split in SPLITS:
        print(f"{split}: {len(find_pairs(args.data_dir, split))} image/mask pairs in {args.data_dir}")

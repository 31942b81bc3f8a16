"""Images and masks decoded once into uint8 tensors at the model's size and cached between runs (a checksum inside,
so a damaged cache file is rebuilt); decoding of single files for prediction and scoring at full size."""
import hashlib
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

import runfiles
from errors import DataError
from layouts import pair_files, raise_problems

CACHE_VERSION = 3  # bump when decoding changes, so old caches are rebuilt (2: 16-bit images, EXIF orientation;
#                   3: a checksum inside, palette masks read by index)
ORIENTATION = 0x0112  # the EXIF tag


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
        return prepare_image(im, size)


def prepare_image(im, size):
    """read_image() of an open PIL image."""
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
    """Boolean array (height, width) of a mask file at its own size. A palette image (PNG, GIF) is read by index,
    as segmentation data sets store classes: index 0 is background, any other index lesion, whatever the colours."""
    with Image.open(path) as im:
        if im.mode in ("P", "PA"):
            return np.asarray(im.getchannel(0) if im.mode == "PA" else im) > 0
        im = im.convert("L") if im.mode in ("LA", "1", "CMYK") else im
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
    """{'images': uint8 [N,3,S,S], 'masks': uint8 [N,1,S,S] of 0/1, 'ids', 'image_paths', 'mask_paths'}; decoded
    images come from the cache when it is current and intact. A split whose masks are all empty raises DataError."""
    pairs, problems = pair_files(data_dir, split)
    cache_file = Path(cache_dir) / f"{split}_{size}px_{cache_key(pairs, size)}.pt"
    cached = read_cache(cache_file) if cache_file.exists() and not problems else None
    if cached is None:
        cached = decode_split(data_dir, split, pairs, problems, size, workers)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        runfiles.atomic_save({**cached, "checksum": checksum(cached["images"], cached["masks"], cached["ids"])},
                             cache_file)
    refuse_all_empty(cached["masks"], data_dir, split)
    return {"images": cached["images"], "masks": cached["masks"], **files_of(pairs)}


def files_of(pairs):
    """{'ids', 'image_paths', 'mask_paths'} of a split's pairs: read from the folder, never cached (it may move)."""
    return {"ids": [p[0] for p in pairs], "image_paths": [str(p[1]) for p in pairs],
            "mask_paths": [str(p[2]) for p in pairs]}


def refuse_all_empty(masks, data_dir, split):
    """DataError when every mask of a split is empty: an IoU of 1.0 on empty masks would mean nothing."""
    if not masks.any():
        raise DataError(f"every mask of the {split} split in {data_dir} is empty (all background): nothing to learn "
                        "or score; check that the masks mark the lesion (white, or a palette index above 0)")


def decode_split(data_dir, split, pairs, problems, size, workers):
    """{'images', 'masks', 'ids'} of a split's pairs, decoded in `workers` processes (0: in this one); raises
    DataError with every problem of the split at once, and names masks that are one value in one line."""
    jobs = [(image_path, mask_path, size) for _, image_path, mask_path in pairs]
    desc = f"decoding {split} images to {size}x{size}"
    if workers > 0:
        with ProcessPoolExecutor(workers, initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            results = list(tqdm(pool.map(decode_pair, jobs, chunksize=8), total=len(jobs), desc=desc, disable=None))
    else:
        results = [decode_pair(j) for j in tqdm(jobs, desc=desc, disable=None)]
    raise_problems(data_dir, problems + [p for _, _, p in results if p])
    flat = [f"{image_id} (all {'lesion' if mask.max() else 'background'})"
            for (image_id, _, _), (_, mask, _) in zip(pairs, results) if mask.min() == mask.max()]
    if flat:
        print(f"{len(flat)} of the {len(pairs)} {split} masks are one value, kept as they are: {', '.join(flat)}")
    return {"images": torch.from_numpy(np.stack([r[0] for r in results])).permute(0, 3, 1, 2).contiguous(),
            "masks": torch.from_numpy(np.stack([r[1] for r in results]))[:, None].contiguous(),
            "ids": [p[0] for p in pairs]}


def exit_with_parent(parent):
    """Decoding workers' initializer: a thread that ends the worker once its parent is gone, which kill -9 gives
    no chance to stop its workers (they would otherwise wait for work forever, holding their memory)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def checksum(images, masks, ids, chunk=256):
    """sha256 of a cached split's pixels, masks and ids (tensors or memory-mapped arrays, read `chunk` rows at a
    time, so a split larger than memory is hashed without loading it)."""
    h = hashlib.sha256()
    for array in (images, masks):
        for start in range(0, len(array), chunk):
            h.update(np.ascontiguousarray(np.asarray(array[start:start + chunk])).tobytes())
    h.update("\n".join(ids).encode())
    return h.hexdigest()


def read_cache(path):
    """A cache file's {'images', 'masks', 'ids'}, or None (with a one-line notice) when it is damaged: unreadable,
    or its content no longer matches the checksum written with it."""
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.get("checksum") == checksum(cached["images"], cached["masks"], cached["ids"]):
            return cached
    except Exception:  # truncated, overwritten: torch.load raises many types
        pass
    print(f"cache file {path} is damaged; decoding the images again")
    return None

"""Images and masks decoded once into uint8 tensors at the model's size and cached between runs (a checksum inside,
so a damaged cache file is rebuilt); single files are read by readers.py."""
import hashlib
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lib import saving
from lib.errors import DataError
from lib.readers import read_image, read_mask
from lib.layouts import pair_files, raise_problems

CACHE_VERSION = 4  # bump when decoding changes, so old caches are rebuilt (2: 16-bit images, EXIF orientation;
#                   3: a checksum inside, palette masks read by index; 4: black-and-white palettes by colour)


def decode_pair(args):
    """(image, mask, problem) for one pair; a problem is a sentence, never an exception across processes."""
    image_path, mask_path, size, draft = args
    try:
        image, image_size = read_image(image_path, size, draft)
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


def cache_key(pairs, size, draft=True):
    """Changes when any file is added, removed, replaced or resized, or when the size changes. A file's status
    change time is in it: the system sets it on every write, and unlike the modification time no user or tool
    can set it back, so a file replaced in place by one of the same length is noticed too. (A hash of every
    file's content would notice the same at the cost of reading every byte: about 30 GB for 10,000 ISIC
    originals, against 10,000 stat calls.)"""
    h = hashlib.sha1(f"v{CACHE_VERSION} {size}{'' if draft else ' whole'}".encode())
    for _, image_path, mask_path in pairs:
        for p in (image_path, mask_path):
            st = os.stat(p)
            h.update(f"{p.name} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}".encode())
    return h.hexdigest()[:12]


def load_split(data_dir, split, size, cache_dir="cache", workers=0, draft=True):
    """{'images': uint8 [N,3,S,S], 'masks': uint8 [N,1,S,S] of 0/1, 'ids', 'image_paths', 'mask_paths'}; decoded
    images come from the cache when it is current and intact. draft: JPEGs decoded at a reduced scale (training's
    way, readers.read_image); else whole, as prediction decodes them. A split whose masks are all empty raises
    DataError."""
    pairs, problems = pair_files(data_dir, split)
    cache_file = Path(cache_dir) / f"{split}_{size}px_{cache_key(pairs, size, draft)}.pt"
    cached = read_cache(cache_file) if cache_file.exists() and not problems else None
    if cached is None:
        cached = decode_split(data_dir, split, pairs, problems, size, workers, draft)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        saving.atomic_save({**cached, "checksum": checksum(cached["images"], cached["masks"], cached["ids"])},
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


def decode_split(data_dir, split, pairs, problems, size, workers, draft=True):
    """{'images', 'masks', 'ids'} of a split's pairs, decoded in `workers` processes (0: in this one); raises
    DataError with every problem of the split at once, and names masks that are one value in one line."""
    jobs = [(image_path, mask_path, size, draft) for _, image_path, mask_path in pairs]
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

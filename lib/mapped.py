"""Decoded images in memory-mapped files (train.py --memory-map): a training set larger than memory (10^5 images
at 256 px are about 20 GB of uint8) is decoded once into --cache-dir, a chunk at a time, and read back from disk
as each batch needs it. The in-memory cache (decoding.py) stays the default: it is faster for sets that fit."""
import errno
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lib.decoding import cache_key, checksum, decode_pair, exit_with_parent, files_of, refuse_all_empty
from lib.errors import StorageError
from lib.layouts import pair_files, raise_problems

CHUNK = 256  # images decoded and written at a time: about what this module holds in memory


class MappedRows:
    """Rows of a memory-mapped array [N,...] seen through an index of row numbers. Indexing with a tensor of row
    numbers gives another view (nothing is read); a slice or a number, .to(device) and .cpu() read the rows."""

    def __init__(self, array, index=None):
        self.array, self.index = array, np.arange(len(array)) if index is None else index
        self.device = torch.device("cpu")  # where the rows are read to (train.py asks the masks')

    def __len__(self):
        return len(self.index)

    def __getitem__(self, key):
        if isinstance(key, (torch.Tensor, np.ndarray, list)):
            return MappedRows(self.array, self.index[np.asarray(key)])
        return torch.from_numpy(np.array(self.array[self.index[key]]))  # read: the rows in memory

    def to(self, device, non_blocking=False):
        return self.cpu().to(device, non_blocking=non_blocking)

    def cpu(self):
        return self[:]

    def any(self):
        return any(self.array[start:start + CHUNK].any() for start in range(0, len(self.array), CHUNK))


def load_mapped_split(data_dir, split, size, cache_dir="cache", workers=0, draft=True):
    """decoding.load_split() with memory-mapped images and masks (MappedRows): decoded once into a folder of
    --cache-dir, rebuilt when any file changes or the folder is damaged."""
    pairs, problems = pair_files(data_dir, split)
    folder = Path(cache_dir) / f"{split}_{size}px_{cache_key(pairs, size, draft)}.mapped"
    arrays = read_mapped(folder) if folder.exists() and not problems else None
    if arrays is None:
        build(folder, pairs, problems, data_dir, split, size, workers, draft)
        arrays = read_mapped(folder)
    images, masks = (MappedRows(a) for a in arrays)
    refuse_all_empty(masks, data_dir, split)
    return {"images": images, "masks": masks, **files_of(pairs)}


def read_mapped(folder):
    """(images, masks) memory-mapped from a finished cache folder, or None (with a one-line notice) when it is
    damaged: a file missing or cut short, or content that no longer matches the checksum written with it."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        images, masks = (np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("images", "masks"))
        if checksum(images, masks, meta["ids"]) == meta["checksum"]:
            return images, masks
    except (OSError, ValueError, KeyError):
        pass
    print(f"cache folder {folder} is damaged; decoding the images again")
    return None


def build(folder, pairs, problems, data_dir, split, size, workers, draft=True):
    """Decode the pairs CHUNK at a time into .npy files in a temporary folder, renamed when complete. The disk
    space is reserved first, so a full disk is one sentence, never a crash halfway (a memory map that cannot grow
    kills its process). Raises DataError with every problem of the split at once."""
    temporary = folder.with_suffix(".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        images = reserved(temporary / "images.npy", (len(pairs), 3, size, size))
        masks = reserved(temporary / "masks.npy", (len(pairs), 1, size, size))
        problems = problems + decode_into(images, masks, pairs, size, workers, draft,
                                          f"decoding {split} images to {size}px")
        raise_problems(data_dir, problems)
        images.flush()
        masks.flush()
        ids = [p[0] for p in pairs]
        (temporary / "meta.json").write_text(json.dumps({"ids": ids, "checksum": checksum(images, masks, ids)}))
        shutil.rmtree(folder, ignore_errors=True)
        temporary.rename(folder)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def reserved(path, shape):
    """A new uint8 .npy file of this shape, memory-mapped, its disk space allocated now (where the OS can)."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    if hasattr(os, "posix_fallocate"):
        try:
            with open(path, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise StorageError(f"no space left in {path.parent.parent} for the memory-mapped cache ("
                               f"{array.nbytes / 1e9:.1f} GB); free some space or choose another --cache-dir") from None
    return array


def decode_into(images, masks, pairs, size, workers, draft, desc):
    """Decode each pair into its row of images [N,3,S,S] and masks [N,1,S,S]; returns the problems found."""
    jobs = [(image_path, mask_path, size, draft) for _, image_path, mask_path in pairs]
    problems = []
    pool = ProcessPoolExecutor(workers, initializer=exit_with_parent, initargs=(os.getpid(),)) if workers else None
    try:
        with tqdm(total=len(jobs), desc=desc, disable=None) as bar:
            for start in range(0, len(jobs), CHUNK):
                chunk = jobs[start:start + CHUNK]
                results = list(pool.map(decode_pair, chunk, chunksize=8)) if pool else map(decode_pair, chunk)
                for row, (image, mask, problem) in enumerate(results, start):
                    if problem:
                        problems.append(problem)
                    else:
                        images[row], masks[row, 0] = image.transpose(2, 0, 1), mask
                bar.update(len(chunk))
    finally:
        if pool:
            pool.shutdown()
    return problems

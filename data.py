"""Lesion data in any accepted layout (LAYOUTS: ISIC 2016, 2017, 2018, PH2, plain folders): find the files,
decode them once into a uint8 cache, and split off validation and test images. Augmentation: augment.py;
downloads: download.py.

    python data.py --data-dir ../shared/isic2016          # which layout, and how many pairs in each split
    python data.py --synthetic demo/data                  # write a small fake data set in the ISIC 2016 layout
    python data.py --data-dir ../shared/isic2016 --to-plain runs/isic2016-plain   # re-lay as plain folders
"""
import argparse
import hashlib
import os
import shutil
import sys
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

SPLITS = {
    "train": ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
    "test": ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
}
# The folder layouts --data-dir accepts: {name: {group: (image folders, mask folders)}}, as glob patterns under
# --data-dir. A group is a split ("train", "val", "test"), or "all" for data without an official split.
LAYOUTS = {
    "ISIC 2016 Part 1": SPLITS,
    "ISIC 2017 Part 1": {
        "train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
        "val": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
        "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth")},
    "ISIC 2018 Task 1": {
        "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
        "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
        "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth")},
    "PH2": {"all": ("PH2 Dataset images/IMD*/IMD*_Dermoscopic_Image", "PH2 Dataset images/IMD*/IMD*_lesion")},
    "plain folders": {"train": ("train/images", "train/masks"), "val": ("val/images", "val/masks"),
                      "test": ("test/images", "test/masks"), "all": ("images", "masks")},
}
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
NOT_IMAGES = ("_superpixels",)  # ISIC 2017 keeps superpixel maps (PNG) beside its images
MASK_EXTS = (".png", ".bmp", ".gif", ".tif", ".tiff")
# A mask's stem: the image's, with or without one of these (ISIC 2016, 2017/2018, plain folders, PH2)
MASK_NAME_SUFFIXES = ("_Segmentation", "_segmentation", "_mask", "_lesion")
MASK_SUFFIX = "_Segmentation.png"  # what the ISIC 2016 archives and write_synthetic() use
LOSSY_EXTS = (".jpg", ".jpeg")  # refused as masks: JPEG blurs a mask's edge into grey levels
TEST_FRACTION = 0.2  # share of a folder without an official split (PH2) held out as its test split
CACHE_VERSION = 3  # bump when decoding changes, so old caches are rebuilt (2: 16-bit images, EXIF orientation;
#                   3: a checksum inside, palette masks read by index)
ORIENTATION = 0x0112  # the EXIF tag


def expected_layout(data_dir):
    layouts = "\n".join(f"  {name}: " + ", ".join(f"{f}/" for pair in groups.values() for f in pair)
                         for name, groups in LAYOUTS.items())
    return (f"Accepted layouts (folders inside {data_dir}):\n{layouts}\nImages are .jpg, .png, .bmp or .tif; a mask "
            f"has its image's name, with or without a {', '.join(MASK_NAME_SUFFIXES)} suffix, in "
            f"{', '.join(MASK_EXTS)} (ISIC: ISIC_XXXXXXX.jpg and ISIC_XXXXXXX_Segmentation.png).\nRun `make data` "
            "to download ISIC 2016 (DATASET=isic2017 or isic2018 for those), or pass DATA_DIR=/path/to/data "
            "(--data-dir).")


def as_list(data_dir):
    """A run's --data-dir as a list (none: []); configs of runs from before several folders were accepted hold one
    string."""
    return [] if data_dir is None else [data_dir] if isinstance(data_dir, str) else list(data_dir)


def matching_dirs(data_dir, pattern):
    """The folders under data_dir that a LAYOUTS pattern names, sorted."""
    return sorted(p for p in Path(data_dir).glob(pattern) if p.is_dir())


def detect_layout(data_dir):
    """The name of the one layout in LAYOUTS that data_dir holds any folder of; DataError if none or several."""
    found = [name for name, groups in LAYOUTS.items()
             if any(matching_dirs(data_dir, f) for pair in groups.values() for f in pair)]
    if len(found) > 1:
        raise DataError(f"{data_dir} holds folders of several layouts ({', '.join(found)}); give each data set a "
                        "folder of its own")
    if found:
        return found[0]
    problem = "Missing folder(s): " + str(data_dir) if not Path(data_dir).is_dir() else (
        f"{data_dir} holds none of the accepted layouts")
    raise DataError(problem + "\n" + expected_layout(data_dir))


def present_groups(data_dir):
    """The groups of LAYOUTS ("train", "val", "test", "all") that data_dir holds images of, in layout order;
    DataError if none."""
    layout = detect_layout(data_dir)
    groups = [g for g, (images, _) in LAYOUTS[layout].items() if matching_dirs(data_dir, images)]
    if not groups:
        raise DataError(f"{data_dir} looks like {layout} but holds none of its image folders: "
                        + ", ".join(f"{images}/" for images, _ in LAYOUTS[layout].values()))
    return groups


def mask_id(path):
    """The id of the image a mask file belongs to (its stem without a MASK_NAME_SUFFIXES suffix), or None for a
    file that is no mask."""
    path = Path(path)
    if path.suffix.lower() not in MASK_EXTS or is_hidden(path):
        return None
    return next((path.stem[:-len(s)] for s in MASK_NAME_SUFFIXES if path.stem.endswith(s)), path.stem)


def is_image(path):
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTS and not is_hidden(path) and not path.stem.endswith(NOT_IMAGES)


def find_pairs(data_dir, split):
    """[(id, image_path, mask_path)] for one split, sorted by id; raises DataError listing every problem."""
    pairs, problems = pair_files(data_dir, split)
    raise_problems(data_dir, problems)
    return pairs


def pair_files(data_dir, group):
    """([(id, image_path, mask_path)] sorted by id, [problem sentences]) for one group of LAYOUTS ("train", "val",
    "test" or "all"): images without masks and masks without images are listed, not raised, so that load_split()
    reports them with the unreadable files in one message. A missing folder raises DataError at once. Hidden files
    (._name.jpg) and files of other kinds (LICENSE.txt, metadata CSVs, superpixel maps) are skipped."""
    layout = detect_layout(data_dir)
    if group not in LAYOUTS[layout]:
        raise DataError(f"{data_dir} ({layout}) has no {group} split; it has: {', '.join(present_groups(data_dir))}")
    image_dirs, mask_dirs = (matching_dirs(data_dir, f) for f in LAYOUTS[layout][group])
    missing = [f"{data_dir}/{f}" for f, dirs in zip(LAYOUTS[layout][group], (image_dirs, mask_dirs)) if not dirs]
    if missing:
        raise DataError("Missing folder(s): " + ", ".join(missing) + "\n" + expected_layout(data_dir))
    images = {p.stem: p for d in image_dirs for p in d.iterdir() if is_image(p)}
    masks = {i: p for d in mask_dirs for p in d.iterdir() if (i := mask_id(p))}
    jpegs = {i: p for d in mask_dirs for p in d.iterdir() if (i := mask_id(p.with_suffix(".png")))
             and p.suffix.lower() in LOSSY_EXTS and d not in image_dirs}
    problems = [f"mask {jpegs[i]} is a JPEG: JPEG blurs the lesion's edge into grey levels, so its masks are not "
                "read; save masks as PNG" if i in jpegs else
                f"image without a mask: {images[i]} (no mask named {i}, " + ", ".join(
                    i + s for s in MASK_NAME_SUFFIXES) + f" in {', '.join(map(str, mask_dirs))})"
                for i in sorted(images.keys() - masks.keys())]
    problems += [f"mask without an image: {masks[i]}" for i in sorted(masks.keys() - images.keys())]
    if not images and not masks:
        problems.append(f"the {group} split is empty: no images in {', '.join(map(str, image_dirs))}")
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
    paths = {"image_paths": [str(p[1]) for p in pairs], "mask_paths": [str(p[2]) for p in pairs]}  # not cached:
    cached = read_cache(cache_file) if cache_file.exists() and not problems else None      # the folder may move
    if cached is None:
        cached = decode_split(data_dir, split, pairs, problems, size, workers)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        runfiles.atomic_save({**cached, "checksum": checksum(cached)}, cache_file)
    if not cached["masks"].any():
        raise DataError(f"every mask of the {split} split in {data_dir} is empty (all background): nothing to learn "
                        "or score; check that the masks mark the lesion (white, or a palette index above 0)")
    return {"images": cached["images"], "masks": cached["masks"], "ids": cached["ids"], **paths}


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


def checksum(cached):
    """sha256 of a cached split's pixels, masks and ids."""
    h = hashlib.sha256()
    for key in ("images", "masks"):
        h.update(cached[key].numpy().tobytes())
    h.update("\n".join(cached["ids"]).encode())
    return h.hexdigest()


def read_cache(path):
    """A cache file's {'images', 'masks', 'ids'}, or None (with a one-line notice) when it is damaged: unreadable,
    or its content no longer matches the checksum written with it."""
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.get("checksum") == checksum(cached):
            return cached
    except Exception:  # truncated, overwritten: torch.load raises many types
        pass
    print(f"cache file {path} is damaged; decoding the images again")
    return None


def split_indices(n, val_fraction, seed):
    """(train, val) index tensors: a seeded random split, made before any augmentation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def subset(split, idx):
    """The rows idx of a load_split() result."""
    return {"images": split["images"][idx], "masks": split["masks"][idx],
            **{key: [split[key][i] for i in idx] for key in ("ids", "image_paths", "mask_paths")}}


def load_splits(data_dir, size, val_fraction, split_seed, cache_dir="cache", workers=0):
    """{'train', 'val', 'test': load_split() results (test None where the folder holds no test images), 'note': a
    line that says where each came from} of one data folder in any layout. Validation is the layout's official
    split when it has one (and val_fraction > 0), else a seeded val_fraction of the training images; a folder
    without any split (PH2, plain images/ + masks/) first holds TEST_FRACTION of its images out as test."""
    groups = present_groups(data_dir)

    def load(group):
        return load_split(data_dir, group, size, cache_dir, workers)
    if "train" in groups:
        train, test, held_out = load("train"), load("test") if "test" in groups else None, ""
    elif "all" in groups:
        everything = load("all")
        rest, test_idx = split_indices(len(everything["ids"]), TEST_FRACTION, split_seed)
        train, test = subset(everything, rest), subset(everything, test_idx)
        held_out = f" (no official split: {TEST_FRACTION:.0%} held out by --split-seed {split_seed})"
    else:
        raise DataError(f"{data_dir} holds no training images: {detect_layout(data_dir)} folders "
                        f"{', '.join(groups)} only\n{expected_layout(data_dir)}")
    official = "val" in groups and val_fraction > 0
    if official:
        val = load("val")
    else:
        train_idx, val_idx = split_indices(len(train["ids"]), val_fraction, split_seed)
        train, val = subset(train, train_idx), subset(train, val_idx)
    note = (f"{detect_layout(data_dir)} in {data_dir}: {len(train['ids'])} training images, {len(val['ids'])} "
            f"validation{' (official split)' if official else ''}, "
            f"{len(test['ids']) if test else 'no'} test{held_out}")
    return {"train": train, "val": val, "test": test, "note": note}


def load_test(data_dir, size, split_seed, trained_on=True, cache_dir="cache", workers=0):
    """(load_split() result, a line saying what it is) of data_dir's test split. A folder without one (PH2, plain
    images/ + masks/) gives, for a model trained on it, the TEST_FRACTION it held out by split_seed; for a model
    that never saw it (trained_on=False), every image of every split."""
    groups = present_groups(data_dir)
    if "test" in groups:
        return load_split(data_dir, "test", size, cache_dir, workers), "test split"
    if trained_on and "all" in groups:
        return load_splits(data_dir, size, 0, split_seed, cache_dir, workers)["test"], (
            f"no official test split: the {TEST_FRACTION:.0%} held out from training by --split-seed {split_seed}")
    if trained_on:
        raise DataError(f"{data_dir} ({detect_layout(data_dir)}) has no test images, and the model trained on the "
                        f"others ({', '.join(groups)})")
    return join([load_split(data_dir, g, size, cache_dir, workers) for g in groups]), (
        f"no test split: every image ({', '.join(groups)})")


def join(splits):
    """One load_split()-like result of several, in order."""
    return {"images": torch.cat([s["images"] for s in splits]), "masks": torch.cat([s["masks"] for s in splits]),
            **{key: [x for s in splits for x in s[key]] for key in ("ids", "image_paths", "mask_paths")}}


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


def copy_as_plain_folders(data_dir, out):
    """Copy every group of data_dir into plain folders under out (<group>/images, <group>/masks; masks named by the
    image's id alone), so that any layout can be re-read as a user's own folders. Returns {group: pairs copied}."""
    counts = {}
    for group in present_groups(data_dir):
        pairs = find_pairs(data_dir, group)
        base = Path(out) / group if group != "all" else Path(out)
        for folder in ("images", "masks"):
            (base / folder).mkdir(parents=True, exist_ok=True)
        for image_id, image_path, mask_path in pairs:
            shutil.copyfile(image_path, base / "images" / image_path.name)
            shutil.copyfile(mask_path, base / "masks" / (image_id + mask_path.suffix))
        counts[group] = len(pairs)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="a data folder in any accepted layout (default: data)")
    parser.add_argument("--synthetic", metavar="DIR", help="write a small synthetic data set to DIR first")
    parser.add_argument("--to-plain", metavar="DIR", help="copy --data-dir into plain folders in DIR")
    args = parser.parse_args(argv)
    if args.synthetic:
        write_synthetic(args.synthetic, n_train=160, n_test=32)
        args.data_dir = args.synthetic
    if args.to_plain:
        copy_as_plain_folders(args.data_dir, args.to_plain)
        args.data_dir = args.to_plain
    counts = ", ".join(f"{group} {len(find_pairs(args.data_dir, group))}" for group in present_groups(args.data_dir))
    print(f"{detect_layout(args.data_dir)} in {args.data_dir}: image/mask pairs: {counts}")


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        sys.exit(f"error: {e}")

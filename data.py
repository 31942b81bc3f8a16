"""The data set a run trains and is scored on. load_data() is what train.py sees: each --data-dir's image/mask
pairs found in any layout (lib/layouts.py: ISIC 2016-2018, PH2, plain images/ + masks/), decoded once at the model's
size into uint8 tensors and cached (lib/decoding.py; on disk with --memory-map: lib/mapped.py), split into training,
validation and test images before any augmentation (here), and the training images joined by the fixed
flipped and turned copies the report describes (augment.fixed_copies). split_to_score() is the split evaluate.py and
the tools score a trained model on. Downloads: tools/download.py; a folder's layout and counts: tools/data_folder.py.
"""
from pathlib import Path

import torch

import augment
from lib import distributed
from lib.decoding import load_split
from lib.errors import DataError, ModelFileError, UsageError
from lib.layouts import detect_layout, expected_layout, present_groups
from lib.mapped import load_mapped_split
from lib.splits import TEST_FRACTION, split_indices


def subset(split, idx):
    """The rows idx of a load_split() result."""
    return {"images": split["images"][idx], "masks": split["masks"][idx],
            **{key: [split[key][i] for i in idx] for key in ("ids", "image_paths", "mask_paths")}}


def load_splits(data_dir, size, val_fraction, split_seed, cache_dir="cache", workers=0, memory_map=False,
                draft=True):
    """{'train', 'val', 'test': load_split() results (test None where the folder holds no test images), 'note': a
    line that says where each came from} of one data folder in any layout. Validation is the layout's official
    split when it has one (and val_fraction > 0), else a seeded val_fraction of the training images; a folder
    without any split (PH2, plain images/ + masks/) first holds TEST_FRACTION of its images out as test. With
    memory_map the images and masks stay on disk (mapped.py), read as batches need them. draft: the training and
    validation images decoded training's way (readers.read_image); the test images are always decoded as
    prediction decodes them, so that a test score is the score of what make predict gives."""
    groups = present_groups(data_dir)

    def load(group, draft=draft):
        return (load_mapped_split if memory_map else load_split)(data_dir, group, size, cache_dir, workers, draft)
    if "train" in groups:
        train, held_out = load("train"), ""
        test = load("test", False) if "test" in groups else None
    elif "all" in groups:
        everything = load("all")
        rest, test_idx = split_indices(len(everything["ids"]), TEST_FRACTION, split_seed)
        train, test = subset(everything, rest), subset(load("all", False) if draft else everything, test_idx)
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
        return load_split(data_dir, "test", size, cache_dir, workers, draft=False), "test split"
    if trained_on and "all" in groups:
        return load_splits(data_dir, size, 0, split_seed, cache_dir, workers, draft=False)["test"], (
            f"no official test split: the {TEST_FRACTION:.0%} held out from training by --split-seed {split_seed}")
    if trained_on:
        raise DataError(f"{data_dir} ({detect_layout(data_dir)}) has no test images, and the model trained on the "
                        f"others ({', '.join(groups)})")
    return join([load_split(data_dir, g, size, cache_dir, workers, draft=False) for g in groups]), (
        f"no test split: every image ({', '.join(groups)})")


def join(splits):
    """One load_split()-like result of several, in order (one: itself)."""
    if len(splits) == 1:
        return splits[0]
    return {"images": torch.cat([s["images"] for s in splits]), "masks": torch.cat([s["masks"] for s in splits]),
            **{key: [x for s in splits for x in s[key]] for key in ("ids", "image_paths", "mask_paths")}}


def validation_seed(configs):
    """The --split-seed that all these runs held their validation images out with (one run, or an ensemble's)."""
    if any(c["val_fraction"] == 0 for c in configs):
        raise UsageError("--split val: trained with --val-fraction 0, on every training image; none was held out")
    held_out = {(c["val_fraction"], c["split_seed"]) for c in configs}
    if len(held_out) > 1:
        raise UsageError("--split val: these runs held out different validation images (--val-fraction, --split-seed "
                         f"{sorted(held_out)}), so some were trained on the others' validation images")
    return held_out.pop()[1]


def split_to_score(data_dir, split, configs, cache_dir="cache", workers=2):
    """The split ("train", "val" or "test") of data_dir that these models are scored on, at their image size: the
    training images they held out for validation (the same seeded or official split as training), all training
    images, or the test split (load_test); decoded as prediction decodes them. Returns (load_split() result, a line
    that says what it is)."""
    size = configs[0]["image_size"]
    missing = sorted({key for c in configs for key in ("val_fraction", "split_seed", "data_dir") if key not in c})
    if missing and split != "train":
        raise ModelFileError(f"the model's config lacks {', '.join(missing)}, so the images it held out are unknown: "
                             "it was not written by train.py; score it with --split train")
    if split == "train":
        return load_split(data_dir, "train", size, cache_dir, workers, draft=False), "training split"
    if split == "val":
        return load_splits(data_dir, size, configs[0]["val_fraction"], validation_seed(configs), cache_dir,
                           workers, draft=False)["val"], "validation images held out by training"
    trained_on = any(Path(d).resolve() == Path(data_dir).resolve() for c in configs for d in c["data_dir"])
    return load_test(data_dir, size, configs[0]["split_seed"], trained_on, cache_dir, workers)


def copies_per_folder(args):
    """--aug-copies for each --data-dir: one number for all, or one each (a config.json before 2026-12: one int)."""
    copies = [args.aug_copies] if isinstance(args.aug_copies, int) else args.aug_copies
    return copies * len(args.data_dir) if len(copies) == 1 else copies


def originals_first(made, counts):
    """Several folders' fixed_copies() results as one: every folder's originals, then every folder's copies."""
    return tuple(torch.cat([x[:n] for x, n in zip(xs, counts)] + [x[n:] for x, n in zip(xs, counts)])
                 for xs in zip(*made))


def load_data(args, device):
    """{'train': (images, masks) augmented, 'val': (images, masks), 'tests': {results name: load_split() result},
    'panel_idx', 'sizes': lines that count them}. Decoded once into uint8 tensors, split before augmentation, each
    --data-dir's splits joined (load_splits); on a GPU the training set lives on the device."""
    with distributed.main_first():  # under torchrun one process fills the cache, the others then read it
        parts = [load_splits(d, args.image_size, args.val_fraction, args.split_seed, args.cache_dir, args.workers,
                             args.memory_map) for d in args.data_dir]

    train, val = join([p["train"] for p in parts]), join([p["val"] for p in parts])
    train_images, train_masks = train["images"], train["masks"]
    val = (val["images"], val["masks"])
    if len(train_images) < 2:
        raise DataError(f"{len(train_images)} training image(s) in {', '.join(args.data_dir)}: training needs at least "
                        "2 (fine-tuning with make adapt: 10 or more labelled images)")
    made = [augment.fixed_copies(p["train"]["images"], p["train"]["masks"], n, args.seed)
            for p, n in zip(parts, copies_per_folder(args))]
    train = made[0] if len(made) == 1 else originals_first(made, [len(p["train"]["ids"]) for p in parts])
    # the first folder's test split is the run's test_metrics.json; each further one's test_<folder>_metrics.json
    tests = {"test" if n == 0 else f"test_{Path(d).name}": p["test"]
             for n, (d, p) in enumerate(zip(args.data_dir, parts)) if p["test"] is not None}
    # Panels show validation images, or without them training images (fixed_copies() puts the originals first).
    panel_idx = torch.randperm(len(val[0]) or len(train_images),
                               generator=torch.Generator().manual_seed(args.split_seed))[:6]
    sizes = "\n".join([p["note"] for p in parts] + [
        f"training on {len(train[0])} images ({len(train_images)} originals); device {device}"])
    if device.type != "cpu" and not args.memory_map:  # the (small) training set on the GPU; test batches copy
                                                      # from pinned memory
        train, val = tuple(t.to(device) for t in train), tuple(t.to(device) for t in val)
        for test in tests.values():
            test["images"] = test["images"].pin_memory() if device.type == "cuda" else test["images"]
    return {"train": train, "val": val, "tests": tests, "panel_idx": panel_idx, "sizes": sizes}

"""The folder layouts --data-dir accepts (LAYOUTS: ISIC 2016, 2017, 2018, PH2, plain folders): which layout a folder
holds, which image goes with which mask, every problem found on the way, and re-laying any layout as plain folders."""
import shutil
from pathlib import Path

from lib.errors import DataError

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


def expected_layout(data_dir):
    """The layouts a data folder may hold, and what to do next: download a data set into a folder that is empty or
    absent; label the images of one that holds some (the page's export is such a folder)."""
    layouts = "\n".join(f"  {name}: " + ", ".join(f"{f}/" for pair in groups.values() for f in pair)
                         for name, groups in LAYOUTS.items())
    holds_files = Path(data_dir).is_dir() and any(Path(data_dir).iterdir())
    advice = ("Give each image its mask (make serve's page draws and exports them in this layout), or pass another "
              "DATA_DIR (--data-dir)." if holds_files else "Run `make data` to download ISIC 2016 (DATASET=isic2017 "
              "or isic2018 for those), or pass DATA_DIR=/path/to/data (--data-dir).")
    return (f"Accepted layouts (folders inside {data_dir}):\n{layouts}\nImages are .jpg, .png, .bmp or .tif; a mask "
            f"has its image's name, with or without a {', '.join(MASK_NAME_SUFFIXES)} suffix, in "
            f"{', '.join(MASK_EXTS)} (ISIC: ISIC_XXXXXXX.jpg and ISIC_XXXXXXX_Segmentation.png).\n{advice}")


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
    if path.suffix.lower() not in MASK_EXTS or is_hidden(path) or path.is_dir():
        return None
    return next((path.stem[:-len(s)] for s in MASK_NAME_SUFFIXES if path.stem.endswith(s)), path.stem)


def is_image(path):
    """An image file of a data folder (an entry named x.jpg that is a folder is not)."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTS and not is_hidden(path) and not path.stem.endswith(NOT_IMAGES) \
        and path.is_file()


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
